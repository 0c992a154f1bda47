"""The parking-lot behaviour suite, written once and run against RabbitMQ and Redis.

Messages are parked directly in the routers' format (parking_support), then the CLI is
driven in-process and the broker is checked independently of dlq-router's own reading.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.topology import Route, Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import (
    ParkDriver,
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    cli,
    json_lines,
    write_topology,
)

HOUR = 3_600_000


class Lot:
    """One test's parking lot: topology file, route, driver."""

    def __init__(self, topology: Topology, path: Path, driver: ParkDriver) -> None:
        self.topology = topology
        self.path = path
        self.driver = driver
        self.route: Route = topology.routes[0]
        self.now = int(time.time() * 1000)

    def park_sample(self) -> None:
        """a1..a3 ConnectionError/max_attempts, v1..v2 ValueError/non_retryable, old1 2h old."""
        t = self.now
        self.driver.park(
            self.route,
            [
                Parked("old1", parked_at=t - 2 * HOUR, error_type="TimeoutError"),
                Parked("a1", parked_at=t - 5000),
                Parked("v1", parked_at=t - 4000, error_type="ValueError", reason="non_retryable"),
                Parked("a2", parked_at=t - 3000),
                Parked("v2", parked_at=t - 2000, error_type="ValueError", reason="non_retryable"),
                Parked("a3", parked_at=t - 1000, attempts=7),
            ],
        )

    def run(self, *args: str) -> Any:
        return (
            cli(*args[:2], "-t", self.path, *args[2:])
            if args[0] == "parked"
            else cli(args[0], "-t", self.path, *args[1:])
        )

    def ids(self, *args: str) -> list[str]:
        result = self.run("parked", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json_lines(result.stdout)]


class ParkingBehaviour:
    kind: str

    @pytest.fixture
    def lot(self, make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Lot]:
        topology = make_topology(self.kind, routes=[route_dict(uid)])
        driver: ParkDriver = (
            RabbitParkDriver(topology) if self.kind == "rabbitmq" else RedisParkDriver(topology)
        )
        try:
            yield Lot(topology, write_topology(topology, tmp_path / "t.yaml"), driver)
        finally:
            driver.close()

    # ------------------------------------------------------------------ list / filters

    def test_list_newest_first_with_every_filter(self, lot: Lot) -> None:
        lot.park_sample()
        assert lot.ids() == ["a3", "v2", "a2", "v1", "a1", "old1"]
        assert lot.ids("--error-type", "ConnectionError") == ["a3", "a2", "a1"]
        assert lot.ids("--error-type", "builtins.ValueError") == []  # dotted must match fully
        assert lot.ids("--reason", "non_retryable") == ["v2", "v1"]
        assert lot.ids("--older-than", "1h") == ["old1"]
        assert lot.ids("--newer-than", "1h") == ["a3", "v2", "a2", "v1", "a1"]
        assert lot.ids("--limit", "2") == ["a3", "v2"]
        assert lot.ids("--error-type", "ConnectionError", "--limit", "2") == ["a3", "a2"]
        assert lot.ids("--id", "a1", "--id", "old1") == ["a1", "old1"]
        assert lot.ids("--route", lot.route.name, "--limit", "1") == ["a3"]

        row = json_lines(lot.run("parked", "list", "--json", "--id", "a3").stdout)[0]
        assert row["attempts"] == 7 and row["reason"] == "max_attempts"
        assert row["error_type"] == "ConnectionError" and row["size"] == 30
        assert row["parked_at"] == lot.now - 1000 and row["route"] == lot.route.name
        # The sample is a Celery task (``task`` header), so its group includes the task name.
        assert row["fingerprint"] == p.fingerprint(
            lot.route.name, "ConnectionError", "max_attempts", "tasks.send_email"
        )

        table = lot.run("parked", "list").stdout.splitlines()
        assert table[0].split()[:4] == ["ID", "ROUTE", "TASK", "TASK"]  # TASK, TASK ID
        assert [line.split()[0] for line in table[1:]] == ["a3", "v2", "a2", "v1", "a1", "old1"]

    def test_listing_changes_nothing(self, lot: Lot) -> None:
        lot.park_sample()
        before = lot.driver.parked_ids(lot.route)
        for _ in range(3):
            assert len(lot.ids()) == 6
        assert lot.driver.parked_ids(lot.route) == before
        assert lot.driver.work(lot.route) == []

    def test_empty_lot_and_nothing_matched_say_so(self, lot: Lot) -> None:
        result = lot.run("parked", "list")
        assert result.exit_code == 0 and "the parking lot is empty" in result.output
        result = lot.run("replay", "--all")
        assert result.exit_code == 0 and "nothing matched" in result.output
        lot.park_sample()
        result = lot.run("parked", "list", "--error-type", "KeyError")
        assert result.exit_code == 0 and "no parked messages match" in result.output
        result = lot.run("parked", "groups", "--reason", "unroutable")
        assert result.exit_code == 0 and "no parked messages match" in result.output

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--older-than", "soon"], "--older-than"),
            (["--reason", "bored"], "must be one of"),
            (["--group", "xyz"], "fingerprint"),
            (["--route", "nope"], "no such route"),
            (["--limit", "0"], "--limit"),
            (["--older-than", "2h", "--newer-than", "1h"], "nothing can match"),
        ],
    )
    def test_malformed_selector_is_one_line_exit_2(
        self, lot: Lot, args: list[str], message: str
    ) -> None:
        result = lot.run("parked", "list", *args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1

    def test_bulk_operations_need_a_selector(self, lot: Lot) -> None:
        lot.park_sample()
        for args in (["replay"], ["replay", "--limit", "3"], ["parked", "purge", "--yes"]):
            result = lot.run(*args)
            assert result.exit_code == 2 and "--all" in result.stderr
        result = lot.run("replay", "--all", "--reason", "max_attempts")
        assert result.exit_code == 2 and "do not combine" in result.stderr
        assert len(lot.driver.parked_ids(lot.route)) == 6

    # ------------------------------------------------------------------ show / groups

    def test_show_renders_each_kind_of_body(self, lot: Lot) -> None:
        pickle_body = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."
        lot.driver.park(
            lot.route,
            [
                Parked("js", body=b'{"to":"x@example.com","n":[1,2]}', parked_at=lot.now),
                Parked("txt", body=b"plain words", content_type="text/plain", parked_at=lot.now),
                Parked(
                    "pkl",
                    body=pickle_body,
                    content_type="application/x-python-serialize",
                    content_encoding="binary",
                    parked_at=lot.now,
                ),
                Parked(
                    "bin",
                    body=bytes(range(200)),
                    content_type="application/octet-stream",
                    parked_at=lot.now,
                ),
            ],
        )
        js = lot.run("parked", "show", "js")
        assert js.exit_code == 0, js.output
        assert '"to": "x@example.com"' in js.stdout and "body (json, 32 bytes)" in js.stdout
        assert "correlation_id: corr-1" in js.stdout and "task: tasks.send_email" in js.stdout
        assert "failure history:" in js.stdout and "dlq-first-failed-at-iso" in js.stdout
        assert "body (text, 11 bytes)" in lot.run("parked", "show", "txt").stdout
        pkl = lot.run("parked", "show", "pkl")
        assert "never unpickled" in pkl.stdout and "80 04 95 10" in pkl.stdout
        assert "body (binary, 200 bytes)" in lot.run("parked", "show", "bin").stdout

        record = json_lines(lot.run("parked", "show", "pkl", "--json").stdout)[0]
        assert record["body"]["kind"] == "pickle"
        assert record["headers"][h.ERROR_TYPE] == "ConnectionError"
        assert record["history"][h.PARK_REASON] == "max_attempts"

    def test_show_unknown_id_exit_4(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("parked", "show", "nope")
        assert result.exit_code == 4 and "nope" in result.stderr

    def test_groups_and_replay_by_group(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("parked", "groups", "--json")
        rows = {(r["error_type"], r["reason"]): r for r in json_lines(result.stdout)}
        assert rows[("ConnectionError", "max_attempts")]["count"] == 3
        value_errors = rows[("ValueError", "non_retryable")]
        assert value_errors["count"] == 2
        assert value_errors["first_seen"] == lot.now - 4000
        assert value_errors["last_seen"] == lot.now - 2000
        assert "ConnectionError" in lot.run("parked", "groups").stdout

        result = lot.run("replay", "--group", value_errors["fingerprint"])
        assert result.exit_code == 0 and "replayed 2" in result.stdout, result.output
        assert [w.headers["id"] for w in lot.driver.work(lot.route)] == ["task-v1", "task-v2"]
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2", "a3", "old1"]

    # ------------------------------------------------------------------ replay

    def test_replay_by_id_resets_attempts_and_keeps_the_message(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("replay", "--id", "a3", "--json")
        assert result.exit_code == 0, result.output
        summary = json_lines(result.stdout)[-1]
        assert summary == {
            "dry_run": False,
            "selected": 1,
            "replayed": 1,
            "skipped": 0,
            "failed": 0,
            "failures": [],
            "missing_ids": [],
        }
        (work,) = lot.driver.work(lot.route)
        assert work.body == b'{"args": [1, 2], "kwargs": {}}'
        assert work.properties["content_type"] == "application/json"
        assert work.properties["content_encoding"] == "utf-8"
        assert work.properties["correlation_id"] == "corr-1"
        assert work.headers["task"] == "tasks.send_email" and work.headers["id"] == "task-a3"
        assert h.ATTEMPTS not in work.headers
        for gone in (h.PARK_REASON, h.PARK_DETAIL, h.PARKED_AT):
            assert gone not in work.headers
        assert work.headers[h.ERROR_TYPE] == "ConnectionError"  # history stays readable
        assert "a3" not in lot.driver.parked_ids(lot.route)

        assert lot.run("replay", "--id", "a2", "--keep-attempts").exit_code == 0
        (work,) = lot.driver.work(lot.route)
        assert work.headers[h.ATTEMPTS] == 4

    def test_replay_unknown_id_exit_4_after_the_known_ones(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("replay", "--id", "a1", "--id", "ghost")
        assert result.exit_code == 4 and "ghost" in result.stderr
        assert [w.headers["id"] for w in lot.driver.work(lot.route)] == ["task-a1"]

    def test_replay_by_filter_with_limit_goes_oldest_first(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("replay", "--error-type", "ConnectionError", "--limit", "2")
        assert result.exit_code == 0 and "replayed 2" in result.stdout, result.output
        assert [w.headers["id"] for w in lot.driver.work(lot.route)] == ["task-a2", "task-a3"]
        result = lot.run("replay", "--older-than", "1h")
        assert [w.headers["id"] for w in lot.driver.work(lot.route)] == ["task-old1"]

    def test_dry_run_changes_nothing_then_all_moves_everything(self, lot: Lot) -> None:
        lot.park_sample()
        before = lot.driver.parked_ids(lot.route)
        result = lot.run("replay", "--all", "--dry-run")
        assert result.exit_code == 0 and "would replay a1" in result.stdout
        assert "6 message(s) would be replayed" in result.stderr
        dry = json_lines(lot.run("replay", "--all", "--dry-run", "--json").stdout)
        assert [r["id"] for r in dry[:-1]] == ["old1", "a1", "v1", "a2", "v2", "a3"]
        assert dry[-1]["dry_run"] is True and dry[-1]["replayed"] == 0
        assert lot.driver.parked_ids(lot.route) == before
        assert lot.driver.work(lot.route) == []

        result = lot.run("replay", "--all")
        assert result.exit_code == 0 and "replayed 6, skipped 0, failed 0" in result.stdout
        work = [w.headers["id"] for w in lot.driver.work(lot.route)]
        assert work == ["task-old1", "task-a1", "task-v1", "task-a2", "task-v2", "task-a3"]
        assert lot.driver.parked_ids(lot.route) == []

    def test_replay_to_another_route(
        self, lot: Lot, make_topology: TopologyFactory, uid: str, tmp_path: Path
    ) -> None:
        topology = make_topology(self.kind, routes=[route_dict(uid), route_dict(uid + "b")])
        path = write_topology(topology, tmp_path / "two.yaml")
        other = topology.routes[1]
        driver = (
            RabbitParkDriver(topology) if self.kind == "rabbitmq" else RedisParkDriver(topology)
        )
        try:
            driver.park(lot.route, [Parked("x1", parked_at=lot.now)])
            result = cli("replay", "-t", path, "--id", "x1", "--to-route", other.name)
            assert result.exit_code == 0, result.output
            assert [w.headers["id"] for w in driver.work(other)] == ["task-x1"]
            assert driver.work(lot.route) == []
            result = cli("replay", "-t", path, "--all", "--to-route", "nowhere")
            assert result.exit_code == 2 and "nowhere" in result.stderr
        finally:
            driver.close()

    def test_rate_limit_holds_within_10_percent(self, lot: Lot) -> None:
        lot.driver.park(lot.route, [Parked(f"r{i}", parked_at=lot.now + i) for i in range(120)])
        stamps: list[tuple[float, int]] = []
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            stamps.append((time.monotonic(), done))

        backend = open_backend(lot.topology)
        try:
            result = backend.parking.replay(
                p.Selector(all=True), p.ReplayOptions(rate=200), progress
            )
        finally:
            backend.close()
        assert result.replayed == 120
        (t0, n0), (t1, n1) = stamps[0], stamps[-1]
        rate = (n1 - n0) / (t1 - t0)
        assert 180 <= rate <= 220, rate

    # ------------------------------------------------------------------ purge / export / import

    def test_purge_needs_yes_without_terminal_and_respects_the_filter(self, lot: Lot) -> None:
        lot.park_sample()
        result = lot.run("parked", "purge", "--reason", "non_retryable")
        assert result.exit_code == 2 and "--yes" in result.stderr
        assert len(lot.driver.parked_ids(lot.route)) == 6
        result = lot.run("parked", "purge", "--reason", "non_retryable", "--yes")
        assert result.exit_code == 0 and "purged 2" in result.output, result.output
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2", "a3", "old1"]
        assert lot.driver.work(lot.route) == []

    def test_export_purge_import_round_trip(self, lot: Lot, tmp_path: Path) -> None:
        lot.park_sample()
        lot.driver.park(
            lot.route,
            [Parked("bin", body=bytes(range(256)), content_type="application/octet-stream")],
        )
        out = tmp_path / "lot.jsonl"
        assert lot.run("parked", "export", "-o", str(out)).exit_code == 0
        before = {r["id"]: r for r in (p.summary_row(m) for m in _messages(lot))}
        shown = json_lines(lot.run("parked", "show", "bin", "--json").stdout)[0]
        assert len(out.read_text().splitlines()) == 7

        assert lot.run("parked", "purge", "--all", "--yes").exit_code == 0
        assert lot.driver.parked_ids(lot.route) == []
        result = lot.run("parked", "import", str(out))
        assert result.exit_code == 0 and "imported 7, skipped 0" in result.output, result.output
        after = {r["id"]: r for r in (p.summary_row(m) for m in _messages(lot))}
        assert after == before
        again = json_lines(lot.run("parked", "show", "bin", "--json").stdout)[0]
        assert again["body_base64"] == shown["body_base64"]
        assert again["headers"] == shown["headers"]

        result = lot.run("parked", "import", str(out))
        assert result.exit_code == 0 and "imported 0, skipped 7" in result.output
        assert len(lot.driver.parked_ids(lot.route)) == 7

    def test_import_rejects_bad_files(self, lot: Lot, tmp_path: Path) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"format": "something else"}\n')
        result = lot.run("parked", "import", str(bad))
        assert result.exit_code == 2 and "bad.jsonl:1" in result.stderr
        lot.park_sample()
        good = tmp_path / "good.jsonl"
        lot.run("parked", "export", "-o", str(good), "--id", "a1")
        other = good.read_text().replace(f'"route":"{lot.route.name}"', '"route":"elsewhere"')
        good.write_text(other)
        result = lot.run("parked", "import", str(good))
        assert result.exit_code == 2 and "elsewhere" in result.stderr


def _messages(lot: Lot) -> list[Any]:
    backend = open_backend(lot.topology)
    try:
        return list(backend.parking.iter(p.Selector()))
    finally:
        backend.close()


class TestParkingRabbitMQ(ParkingBehaviour):
    kind = "rabbitmq"


class TestParkingRedis(ParkingBehaviour):
    kind = "redis"
