"""Redis: each command works with the README's ACL (key patterns of its route only), and
without its key pattern it says so in one line.

Throwaway ACL users (``ACL SETUSER``), deleted afterwards; the shared Redis' other keys and
users are untouched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from dlq_router.cli import app
from dlq_router.topology import parse_topology
from tests.conftest import REDIS_URL, delete_redis_topology, route_dict
from tests.integration.parking_support import Parked, RedisParkDriver
from tests.integration.router_process import RouterProcess, write_topology

PASSWORD = "acl-secret-7"
COMMANDS = ["+@read", "+@write", "+@scripting", "+@connection", "-@dangerous"]


def acls(queue: str) -> dict[str, list[str]]:
    """The README's key patterns per command, for a route whose work queue is ``queue``."""
    tag = "{" + queue + "}"
    return {
        "declare": [f"~{tag}:topology", "+@connection", "+get", "+set", "+config|get"],
        "run": [f"~{queue}*", f"~{tag}:*", *COMMANDS],
        "parked": [f"~{tag}:parked", f"~{tag}:parked:index", *COMMANDS],
        "replay": [f"~{tag}:parked", f"~{tag}:parked:index", f"~{queue}*", *COMMANDS],
    }


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.timeout(300)
def test_each_command_with_just_its_acl(admin: redis.Redis, uid: str, tmp_path: Path) -> None:
    rules = acls(uid)
    users = {cmd: f"{uid}-{cmd}" for cmd in rules}
    for cmd, user in users.items():
        admin.execute_command("ACL", "SETUSER", user, "on", f">{PASSWORD}", *rules[cmd])
    url = {cmd: f"redis://{u}:{PASSWORD}@127.0.0.1:6379/0" for cmd, u in users.items()}
    topology = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<t>")
    path = write_topology(topology, tmp_path / "t.yaml")
    try:
        # run without the route's keys: one line, exit 2 (it reads the declared route first)
        code, out = cli("run", "-t", path, "--url", url["parked"])
        assert code == 2 and out.count("dlq-router: error:") == 1, out
        assert "no permissions" in out and users["parked"] in out, out
        code, out = cli("declare", "-t", path, "--url", url["declare"])
        assert code == 0, out
        # A dead letter the router parks (no headers, not an envelope: malformed).
        admin.lpush("{" + uid + "}:dlq", b"not json")
        router = RouterProcess(topology, tmp_path, args=("--url", url["run"]))
        try:
            router.start(timeout=30)
            deadline = time.monotonic() + 30
            while admin.hlen("{" + uid + "}:parked") < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert admin.hlen("{" + uid + "}:parked") == 1, router.output
            assert router.terminate() == 0
        finally:
            router.close()
        driver = RedisParkDriver(topology)
        try:
            driver.park(topology.routes[0], [Parked(id=f"{uid}p", parked_at=1_700_000_000_000)])
        finally:
            driver.close()
        code, out = cli("parked", "list", "-t", path, "--url", url["parked"], "--json")
        assert code == 0 and out.count('"id"') == 2, out
        code, out = cli("parked", "list", "-t", path, "--url", url["declare"])
        assert code == 2 and "no permissions" in out and out.count("\n") == 1, out
        code, out = cli("replay", "-t", path, "--url", url["replay"], "--id", f"{uid}p")
        assert code == 0 and "replayed 1" in out, out
        assert admin.llen(uid) == 1
        code, out = cli("replay", "-t", path, "--url", url["parked"], "--all")
        assert code == 2 and "no permissions" in out, out
        assert admin.hlen("{" + uid + "}:parked") == 1  # nothing moved
    finally:
        for user in users.values():
            admin.execute_command("ACL", "DELUSER", user)
        delete_redis_topology(topology)
