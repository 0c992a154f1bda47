"""No command prints any piece of a broker password, on either broker, in any URL form.

Each test creates a throwaway user whose password holds ``@ / : %`` (a RabbitMQ user on a
vhost of its own via rabbitmqctl, a Redis ACL user), runs every command through the CLI
(``run`` as a real subprocess, the one-shot commands in-process) with the password
unencoded (the easy mistake), percent-encoded, and in query parameters, and checks that
no captured output holds a fragment of it of 4 characters or more. The users (and the
vhost) are deleted afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import yaml
from typer.testing import CliRunner

from dlq_router.cli import app
from dlq_router.topology import Topology, parse_topology
from tests.conftest import REDIS_URL, delete_redis_topology, route_dict
from tests.integration.parking_support import Parked, RabbitParkDriver, RedisParkDriver
from tests.integration.router_process import free_port

# Every character an operator forgets to encode, and no 4-gram found in ordinary output.
PASSWORD = "Qz@Kx/Jv:%Wq@Ym/Rk"
ENCODED = quote(PASSWORD, safe="")


def fragments(secret: str, shortest: int = 4) -> set[str]:
    n = len(secret)
    return {secret[i:j] for i in range(n) for j in range(i + shortest, n + 1)}


def assert_no_secret(output: str) -> None:
    leaked = sorted(f for f in fragments(PASSWORD) | fragments(ENCODED) if f in output)
    assert not leaked, f"password fragments {leaked[:5]} in output:\n{output}"


def dlq(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The CLI, in-process (a subprocess per command costs seconds on a loaded machine):
    exit code and stdout + stderr together, log records included."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def write(topology_url: str, routes: list[dict[str, object]], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"url": topology_url, "routes": routes}), encoding="utf-8")
    return path


def run_router(path: Path, url: str, *extra: str, timeout: float = 30) -> tuple[int, str]:
    """Start ``run``, wait until /readyz says ready, SIGTERM it; exit code and output."""
    port = free_port()
    cmd = [sys.executable, "-m", "dlq_router", "run", "-t", str(path), "--url", url]
    cmd += ["--metrics-port", str(port), *extra]
    log = path.with_suffix(f".run-{port}.log")
    with log.open("wb") as sink:  # a file, not a pipe: debug logging would fill a pipe
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    ready = False
    try:
        deadline = time.monotonic() + timeout
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = r.status == 200
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    assert ready, f"router never ready:\n{output}"
    return proc.returncode, output


def every_command(
    path: Path, url: str, tmp: Path, driver_park: object, *, short: bool = False
) -> list[tuple[str, int, str]]:
    """Run each operator command once; (what, exit code, output) for each. ``short``: only
    declare, parked list and run (another spelling of a URL already tried in full)."""
    out: list[tuple[str, int, str]] = []

    def go(what: str, *args: str | Path) -> None:
        code, text = dlq(*args)
        out.append((what, code, text))

    go("declare --dry-run", "declare", "-t", path, "--url", url, "--dry-run")
    go("declare", "declare", "-t", path, "--url", url)
    go("declare --json", "declare", "-t", path, "--url", url, "--json")
    if short:
        go("parked list", "parked", "list", "-t", path, "--url", url)
        out.append(("run", *run_router(path, url, "--log-level", "debug", "--log-format", "json")))
        return out
    assert callable(driver_park)
    parked_id = driver_park()
    go("parked list", "parked", "list", "-t", path, "--url", url)
    go("parked list --json", "parked", "list", "-t", path, "--url", url, "--json")
    go("parked show", "parked", "show", "-t", path, "--url", url, parked_id)
    go("parked groups", "parked", "groups", "-t", path, "--url", url)
    export = tmp / "export.jsonl"
    go("parked export", "parked", "export", "-t", path, "--url", url, "-o", export)
    go("parked purge", "parked", "purge", "-t", path, "--url", url, "--all", "--yes")
    go("parked import", "parked", "import", "-t", path, "--url", url, export)
    go("replay --dry-run", "replay", "-t", path, "--url", url, "--all", "--dry-run")
    go("replay", "replay", "-t", path, "--url", url, "--all")
    go("status", "status", "-t", path, "--url", url, "--json")
    code, text = run_router(path, url, "--log-level", "debug", "--log-format", "json")
    out.append(("run", code, text))
    return out


def check(results: list[tuple[str, int, str]], redacted: str, client: str) -> None:
    for what, code, text in results:
        assert code == 0, f"{what} exited {code}:\n{text}"
        assert_no_secret(text)
    declared = dict((w, t) for w, _, t in results)["declare"]
    assert redacted in declared, declared  # scheme, user and host kept as written
    run_out = dict((w, t) for w, _, t in results)["run"]
    records = [json.loads(line) for line in run_out.splitlines() if line.startswith("{")]
    assert records and len(records) == len(run_out.splitlines()), run_out
    # pika's / redis-py's own records go through the same formatter (and redaction).
    assert {r["logger"].split(".")[0] for r in records} >= {"dlq_router", client}


def failures(path: Path, bad_urls: dict[str, str]) -> list[tuple[str, int, str]]:
    out = []
    for what, url in bad_urls.items():
        for cmd in (("declare",), ("parked", "list"), ("replay", "--all")):
            code, text = dlq(*cmd, "-t", path, "--url", url)
            out.append((f"{' '.join(cmd)} {what}", code, text))
    return out


# --- RabbitMQ ----------------------------------------------------------------------------


@pytest.fixture
def rabbit_user(uid: str) -> Iterator[tuple[str, str]]:
    user, vhost = f"{uid}-user", f"{uid}-vhost"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("add_user", user, PASSWORD)
        try:
            rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            yield user, vhost
        finally:
            rabbitmqctl("delete_user", user)
    finally:
        rabbitmqctl("delete_vhost", vhost)  # takes every queue and exchange with it


@pytest.mark.timeout(600)
def test_rabbitmq_commands_never_print_the_password(
    rabbit_user: tuple[str, str], uid: str, tmp_path: Path
) -> None:
    user, vhost = rabbit_user
    raw = f"amqp://{user}:{PASSWORD}@127.0.0.1:5672/{vhost}"
    encoded = f"amqp://{user}:{ENCODED}@127.0.0.1:5672/{vhost}"
    routes = [route_dict(uid)]
    path = write(raw, routes, tmp_path / "topology.yaml")
    topology = parse_topology({"url": raw, "routes": routes})

    def park() -> str:
        driver = RabbitParkDriver(topology)
        try:
            driver.park(topology.routes[0], [Parked(id=f"{uid}p1", parked_at=1_700_000_000_000)])
        finally:
            driver.close()
        return f"{uid}p1"

    results = every_command(path, raw, tmp_path, park)
    results += [
        (f"{w} (encoded url)", c, t)
        for w, c, t in every_command(path, encoded, tmp_path, park, short=True)
    ]
    code, text = dlq("demo", "--url", raw)
    results.append(("demo", code, text))
    check(results, f"amqp://{user}:***@127.0.0.1:5672/{vhost}", "pika")

    bad = failures(
        path,
        {
            "wrong password": f"amqp://{user}:{PASSWORD}x@127.0.0.1:5672/{vhost}",
            "nothing listening": f"amqp://{user}:{PASSWORD}@127.0.0.1:{free_port()}/{vhost}",
            "bad port": f"amqp://{user}:{PASSWORD}@127.0.0.1:56x72/{vhost}",
            "missing vhost": f"amqp://{user}:{PASSWORD}@127.0.0.1:5672/{uid}-none",
        },
    )
    for what, code, text in bad:
        assert code == 2, f"{what} exited {code}:\n{text}"
        assert len(text.strip().splitlines()) == 1, f"{what}:\n{text}"
        assert "unexpected" not in text
        assert_no_secret(text)
    assert "port '56x72' is not a number" in bad[6][2]


# --- Redis -------------------------------------------------------------------------------


@pytest.fixture
def redis_user(uid: str) -> Iterator[str]:
    user = f"{uid}-user"
    admin = redis.Redis.from_url(REDIS_URL)
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{PASSWORD}"], keys=[f"*{uid}*"], commands=["+@all"]
    )
    try:
        yield user
    finally:
        admin.acl_deluser(user)
        admin.close()


@pytest.mark.timeout(600)
def test_redis_commands_never_print_the_password(redis_user: str, uid: str, tmp_path: Path) -> None:
    user = redis_user
    raw = f"redis://{user}:{PASSWORD}@127.0.0.1:6379/0"
    encoded = f"redis://{user}:{ENCODED}@127.0.0.1:6379/0"
    in_query = f"redis://127.0.0.1:6379/0?username={user}&password={ENCODED}"
    routes = [route_dict(uid)]
    path = write(raw, routes, tmp_path / "topology.yaml")
    topology: Topology = parse_topology({"url": raw, "routes": routes})

    def park() -> str:
        driver = RedisParkDriver(topology)
        try:
            driver.park(topology.routes[0], [Parked(id=f"{uid}p1", parked_at=1_700_000_000_000)])
        finally:
            driver.close()
        return f"{uid}p1"

    try:
        results = every_command(path, raw, tmp_path, park)
        delete_redis_topology(topology)
        results += [
            (f"{w} (encoded)", c, t)
            for w, c, t in every_command(path, encoded, tmp_path, park, short=True)
        ]
        delete_redis_topology(topology)
        results += [
            (f"{w} (query)", c, t)
            for w, c, t in every_command(path, in_query, tmp_path, park, short=True)
        ]
        check(results, f"redis://{user}:***@127.0.0.1:6379/0", "dlq_router")
        assert (
            "?username=" + user + "&password=***"
            in dict((w, t) for w, _, t in results)["declare (query)"]
        )
        bad = failures(
            path,
            {
                "wrong password": f"redis://{user}:{PASSWORD}x@127.0.0.1:6379/0",
                "nothing listening": f"redis://{user}:{PASSWORD}@127.0.0.1:{free_port()}/0",
                "bad port": f"redis://{user}:{PASSWORD}@127.0.0.1:63z9/0",
            },
        )
        for what, code, text in bad:
            assert code == 2, f"{what} exited {code}:\n{text}"
            assert len(text.strip().splitlines()) == 1, f"{what}:\n{text}"
            assert "unexpected" not in text
            assert_no_secret(text)
    finally:
        delete_redis_topology(topology)
