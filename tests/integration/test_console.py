"""The console's HTTP side against the real brokers, in-process (Starlette's TestClient):
token, session, CSRF and Origin checks, --read-only, purge confirmation, bad input. The
browser suite (tests/browser) drives the same pages in Chromium; this one covers what a
browser would not send."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dlq_router.backends import open_backend
from dlq_router.console import create_app
from dlq_router.topology import Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.console_process import TOKEN
from tests.integration.parking_support import (
    ParkDriver,
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    write_topology,
)


class Lot:
    def __init__(self, topology: Topology, driver: ParkDriver) -> None:
        self.topology, self.driver = topology, driver
        self.route = topology.routes[0]
        self.name = self.route.name

    def client(self, *, read_only: bool = False, token: str | None = TOKEN) -> TestClient:
        app = create_app(self.topology, token=token, read_only=read_only)
        return TestClient(app, base_url="http://127.0.0.1:8088")

    def signed_in(self) -> tuple[TestClient, str]:
        client = self.client()
        done = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert done.status_code == 303
        page = client.get(f"/routes/{self.name}/parked").text
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page
        return client, found.group(1)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


class ConsoleHttp:
    kind: str

    @pytest.fixture
    def lot(self, make_topology: TopologyFactory, uid: str) -> Iterator[Lot]:
        topology = make_topology(self.kind, routes=[route_dict(uid)])
        if self.kind == "rabbitmq":
            driver: ParkDriver = RabbitParkDriver(topology)
        else:
            backend = open_backend(topology)
            backend.declare(dry_run=False)
            backend.close()
            driver = RedisParkDriver(topology)
        t = int(time.time() * 1000)
        driver.park(
            topology.routes[0],
            [
                Parked("a1", parked_at=t - 3000),
                Parked(
                    "v1",
                    parked_at=t - 2000,
                    error_type="ValueError",
                    reason="non_retryable",
                    extra={"task": "tasks.charge_card"},
                ),
                Parked("a2", parked_at=t - 1000),
            ],
        )
        try:
            yield Lot(topology, driver)
        finally:
            driver.close()

    def test_actions_need_token_session_and_csrf(self, lot: Lot) -> None:
        url = f"/routes/{lot.name}/replay"
        anonymous = lot.client()
        refused = anonymous.post(url, data={"scope": "all"})
        assert refused.status_code == 403 and "sign in" in refused.text
        wrong = anonymous.post("/login", data={"token": "not-the-token"}, follow_redirects=False)
        assert wrong.status_code == 403 and "set-cookie" not in wrong.headers

        client, csrf = lot.signed_in()
        no_csrf = client.post(url, data={"scope": "selection", "id": "v1"})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        foreign = client.post(
            url,
            data={"scope": "selection", "id": "v1", "csrf": csrf},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403 and "cross-site" in foreign.text
        assert client.cookies.get("dlq_console_session")
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2", "v1"]

        done = client.post(url, data={"scope": "selection", "id": "v1", "csrf": csrf})
        assert done.status_code == 200 and "replayed 1 of 1" in done.text
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2"]

        # a script may act with the token as a bearer header instead of a session
        bearer = lot.client().post(
            url,
            data={"scope": "selection", "id": "a1", "rate": "50"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert bearer.status_code == 200 and "replayed 1 of 1" in bearer.text
        assert lot.driver.parked_ids(lot.route) == ["a2"]
        assert lot.driver.work_depth(lot.route) == 2

    def test_purge_asks_for_confirmation(self, lot: Lot) -> None:
        client, csrf = lot.signed_in()
        url = f"/routes/{lot.name}/purge"
        form = {"scope": "selection", "error_type": "ValueError"}
        ask = client.post(url, data={**form, "csrf": csrf})
        assert ask.status_code == 200 and "<strong>1</strong>" in ask.text
        assert len(lot.driver.parked_ids(lot.route)) == 3  # nothing deleted yet
        done = client.post(url, data={**form, "confirm": "yes", "csrf": csrf_of(ask.text)})
        assert done.status_code == 200 and "purged 1 of 1" in done.text
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2"]

    def test_read_only_hides_and_refuses_actions(self, lot: Lot) -> None:
        client = lot.client(read_only=True, token=None)
        page = client.get(f"/routes/{lot.name}/parked")
        assert page.status_code == 200 and "a2" in page.text
        assert "/replay" not in page.text and "/purge" not in page.text
        groups = client.get(f"/routes/{lot.name}/groups").text
        assert "Replay group" not in groups and "ValueError" in groups
        refused = client.post(
            f"/routes/{lot.name}/replay",
            data={"scope": "all"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert refused.status_code == 403 and "read-only" in refused.text
        assert len(lot.driver.parked_ids(lot.route)) == 3

    def test_bad_input_is_one_message(self, lot: Lot) -> None:
        client = lot.client()
        base = f"/routes/{lot.name}"
        for path, status, text in (
            (f"{base}/parked?older_than=soon", 400, "--older-than"),
            (f"{base}/parked?page=0", 400, "page 0"),
            (f"{base}/parked?reason=bogus", 400, "--reason"),
            (f"{base}/parked?group=xyz", 400, "--group"),
            ("/routes/nope/parked", 404, "no route named"),
            (f"{base}/messages/not-parked", 404, "no parked message"),
        ):
            got = client.get(path)
            assert got.status_code == status and text in got.text, (path, got.text)
            assert "Traceback" not in got.text
        signed, csrf = lot.signed_in()
        bad_rate = signed.post(f"{base}/replay", data={"scope": "all", "rate": "-1", "csrf": csrf})
        assert bad_rate.status_code == 400 and "rate" in bad_rate.text
        assert len(lot.driver.parked_ids(lot.route)) == 3

    def test_pages_and_security_headers(self, lot: Lot) -> None:
        client = lot.client()
        page = client.get(f"/routes/{lot.name}/parked?error_type=ValueError")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script" not in page.text
        assert ">v1<" in page.text and ">a1<" not in page.text
        by_task = client.get(f"/routes/{lot.name}/parked?task=tasks.charge_card")
        assert ">v1<" in by_task.text and ">a1<" not in by_task.text and ">a2<" not in by_task.text
        assert "tasks.charge_card" in by_task.text
        overview = client.get("/")
        assert overview.status_code == 200 and lot.name in overview.text
        shown = client.get(f"/routes/{lot.name}/messages/a1")
        assert shown.status_code == 200 and "dlq-park-reason" in shown.text


class TestRabbitConsoleHttp(ConsoleHttp):
    kind = "rabbitmq"


class TestRedisConsoleHttp(ConsoleHttp):
    kind = "redis"


def test_cli_refuses_to_start_without_token_or_on_taken_port(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    path = write_topology(topology, tmp_path / "t.yaml")
    cmd = [sys.executable, "-m", "dlq_router", "console", "-t", str(path)]
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "needs a token" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = subprocess.run(
            [*cmd, "--read-only", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert taken.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in taken.stderr
