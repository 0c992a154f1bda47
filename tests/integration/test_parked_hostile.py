"""Issue 10: a hostile message in a parking queue must not make the parking lot unreadable.

Header values pika's codec cannot decode (a ``T`` timestamp of 2**64-1 or holding
milliseconds, arrays nested 3,000 deep) are published as raw frames straight into a declared
route's parking queue next to ordinary parks; the real CLI then lists, shows, groups,
exports and replays them, and the replayed copy carries the foreign header bytes unchanged.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

from dlq_router import headers as h
from dlq_router.names import rabbit_names
from tests.conftest import TopologyFactory
from tests.integration.parking_support import Parked, RabbitParkDriver, write_topology
from tests.integration.rabbit_raw import RawClient, entry, nested_arrays, properties, table_of

HUGE_TS = entry("ts-huge", b"T" + (2**64 - 1).to_bytes(8, "big"))
MS_TS = entry("ts-ms", b"T" + (1795683600000).to_bytes(8, "big"))
DEEP = entry("deep", nested_arrays(3000))


def dlq(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dlq_router", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def hostile_table(route: str, msg_id: str, now: int, foreign: bytes) -> bytes:
    ours = table_of(
        {
            h.ID: msg_id,
            h.ROUTE: route,
            h.ATTEMPTS: 4,
            h.PARKED_AT: now,
            h.ERROR_TYPE: "HostileError",
            h.PARK_REASON: "max_attempts",
        }
    )
    return entry("task", b"S" + len(b"tasks.x").to_bytes(4, "big") + b"tasks.x") + foreign + ours


def test_hostile_parked_headers_are_readable_and_replay_byte_for_byte(
    make_topology: TopologyFactory, tmp_path: Path
) -> None:
    topology = make_topology()
    route = topology.routes[0]
    names = rabbit_names(topology, route)
    path = write_topology(topology, tmp_path / "t.yaml")
    driver = RabbitParkDriver(topology)  # declares the route
    raw = RawClient(topology.url)
    now = int(time.time() * 1000)
    try:
        driver.park(route, [Parked("plain1", parked_at=now - 2000)])
        raw.publish(
            "",
            names.parking,
            b"ts",
            properties(
                hostile_table(route.name, "hostile-ts", now - 1000, HUGE_TS + MS_TS),
                message_id="hostile-ts",
            ),
        )
        raw.publish(
            "",
            names.parking,
            b"deep",
            properties(
                hostile_table(route.name, "hostile-deep", now, DEEP), message_id="hostile-deep"
            ),
        )
        driver.park(route, [Parked("plain2", parked_at=now + 1000)])

        listed = dlq("parked", "list", "-t", path, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
        ids = {r["id"] for r in rows}
        assert {"plain1", "plain2", "hostile-ts", "hostile-deep"} <= ids, listed.stdout

        shown = dlq("parked", "show", "hostile-ts", "-t", path, "--json")
        assert shown.returncode == 0, shown.stderr
        shown_headers = json.loads(shown.stdout)["headers"]
        huge = {"$amqp": base64.b64encode(HUGE_TS[8:]).decode()}  # after the name "ts-huge"
        assert shown_headers["ts-huge"] == huge, shown.stdout
        assert "$amqp" in json.dumps(shown_headers["ts-ms"])
        human = dlq("parked", "show", "hostile-deep", "-t", path)
        assert human.returncode == 0 and "deep" in human.stdout, human.stderr
        assert "Traceback" not in human.stderr

        groups = dlq("parked", "groups", "-t", path)
        assert groups.returncode == 0 and "HostileError" in groups.stdout, groups.stderr
        status = dlq("status", "-t", path, "--json")
        assert status.returncode == 0, status.stderr
        assert '"HostileError"' in status.stdout and '"parked": 4' in status.stdout, status.stdout

        out = tmp_path / "export.jsonl"
        exported = dlq("parked", "export", "-t", path, "-o", out)
        assert exported.returncode == 0, exported.stderr
        assert {json.loads(x)["id"] for x in out.read_text().splitlines() if x.strip()} == {
            "plain1",
            "plain2",
            "hostile-ts",
            "hostile-deep",
        }

        replayed = dlq("replay", "-t", path, "--id", "hostile-ts", "--id", "hostile-deep")
        assert replayed.returncode == 0, replayed.stderr
        arrived = raw.drain(names.work_queue)
        assert len(arrived) == 2
        tables = {p.message_id: p.table or b"" for p, _t, _b, _at in arrived}
        assert HUGE_TS + MS_TS in tables["hostile-ts"]
        assert DEEP in tables["hostile-deep"]
        # the rest is still parked, in order, and still readable
        left = dlq("parked", "list", "-t", path, "--json")
        assert left.returncode == 0, left.stderr
        assert [json.loads(x)["id"] for x in left.stdout.splitlines() if x.strip()] == [
            "plain2",
            "plain1",
        ]

        # import puts the exported hostile parks back with the same bytes
        purged = dlq("parked", "purge", "-t", path, "--all", "--yes")
        assert purged.returncode == 0, purged.stderr
        imported = dlq("parked", "import", out, "-t", path)
        assert imported.returncode == 0, imported.stderr
        back = {p.message_id: p.table or b"" for p, _t, _b, _at in raw.drain(names.parking)}
        assert set(back) == {"task-plain1", "task-plain2", "hostile-ts", "hostile-deep"}
        assert HUGE_TS + MS_TS in back["hostile-ts"]
        assert DEEP in back["hostile-deep"]
    finally:
        raw.close()
        driver.close()
