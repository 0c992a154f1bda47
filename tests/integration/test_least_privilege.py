"""Each command works with exactly the permissions the README gives it, and a missing one
gives its own clear line.

A throwaway RabbitMQ user on a vhost of its own (rabbitmqctl); its permissions are set per
step to the README's regexes, or to them with one permission taken away. Queue depths are
read with passive declares, which need no permission.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from typer.testing import CliRunner

from dlq_router.cli import app
from dlq_router.names import rabbit_names
from dlq_router.topology import Topology, parse_topology
from tests.conftest import route_dict
from tests.integration.router_process import RouterProcess, write_topology

PASSWORD = "lp-secret-9"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def permissions(route: str) -> dict[str, tuple[str, str, str]]:
    """The README's regexes (configure, write, read) for a route named ``route``."""
    r = re.escape(route)
    return {
        "declare": (rf"^{r}(\..*)?$", rf"^{r}(\..*)?$", rf"^{r}(\..*)?$"),
        "run": ("^$", rf"^{r}\.(retry|parked)$", rf"^{r}\.dlq$"),
        "parked": ("^$", rf"^{r}\.parked$", rf"^{r}\.parked$"),
        "replay": ("^$", rf"^{r}$", rf"^{r}\.parked$"),
    }


@pytest.fixture
def lp(uid: str) -> Iterator[tuple[str, str]]:
    user, vhost = f"{uid}-lp", f"{uid}-lpv"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("add_user", user, PASSWORD)
        try:
            yield user, vhost
        finally:
            rabbitmqctl("delete_user", user)
    finally:
        rabbitmqctl("delete_vhost", vhost)  # every queue and exchange with it


def grant(user: str, vhost: str, perms: tuple[str, str, str]) -> None:
    rabbitmqctl("set_permissions", "-p", vhost, user, *perms)


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def refused(code: int, out: str, expected: str) -> None:
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1, out
    assert expected in lines[0], out


def depth(topology: Topology, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(topology.url))
    try:
        count: int = conn.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_each_command_with_just_its_permissions(
    lp: tuple[str, str], uid: str, tmp_path: Path
) -> None:
    user, vhost = lp
    url = f"amqp://{user}:{PASSWORD}@127.0.0.1:5672/{vhost}"
    topology = parse_topology({"url": url, "routes": [route_dict(uid)]}, source="<test>")
    names = rabbit_names(topology, topology.routes[0])
    path = write_topology(topology, tmp_path / "t.yaml")
    perms = permissions(uid)
    c, w, r = perms["declare"]

    # declare: configure, write and read on the route's objects.
    grant(user, vhost, ("^$", w, r))
    code, out = cli("declare", "-t", path, "--dry-run")
    assert code == 0 and "permissions were not checked" in out, out
    refused(*cli("declare", "-t", path), f"user {user} may not configure exchange '{uid}'")
    grant(user, vhost, perms["declare"])
    code, out = cli("declare", "-t", path)
    assert code == 0, out

    # Two dead letters straight into the DLQ (no origin: the router parks them).
    conn = pika.BlockingConnection(pika.URLParameters(topology.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(2):
            ch.basic_publish(names.dlx, "", f"dead {i}".encode())
    finally:
        conn.close()
    assert depth(topology, names.dlq) == 2

    # run: read on the DLQ, write on the retry and parking exchanges, nothing else.
    c, w, r = perms["run"]
    grant(user, vhost, (c, rf"^{re.escape(uid)}\.retry$", r))
    done = subprocess.run(
        [sys.executable, "-m", "dlq_router", "run", "-t", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"dlq-router: error: user {user} may not write to exchange '{names.parking_exchange}' "
        f"in vhost '{vhost}' (see the README, \"Least privilege\")"
    ], done.stderr
    grant(user, vhost, perms["run"])
    router = RouterProcess(topology, tmp_path)
    try:
        router.start(timeout=30)
        deadline = time.monotonic() + 30
        while depth(topology, names.parking) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert depth(topology, names.parking) == 2, router.output
        assert depth(topology, names.dlq) == 0
        assert router.terminate() == 0
    finally:
        router.close()

    # parked: read on the parking queue (write on its exchange for import).
    c, w, r = perms["parked"]
    grant(user, vhost, (c, w, "^$"))
    refused(*cli("parked", "list", "-t", path), f"may not read from queue '{names.parking}'")
    grant(user, vhost, perms["parked"])
    code, out = cli("parked", "list", "-t", path, "--json")
    assert code == 0 and out.count('"id"') == 2, out
    export = tmp_path / "export.jsonl"
    code, out = cli("parked", "export", "-t", path, "-o", export)
    assert code == 0, out

    # replay: read on the parking queue, write on the work exchange.
    c, w, r = perms["replay"]
    grant(user, vhost, (c, "^$", r))
    code, out = cli("replay", "-t", path, "--all")
    assert code == 5 and out.count(f"may not write to exchange '{uid}'") == 2, out
    assert depth(topology, names.parking) == 2  # nothing left the parking lot
    grant(user, vhost, perms["replay"])
    code, out = cli("replay", "-t", path, "--all")
    assert code == 0 and "replayed 2" in out, out
    assert depth(topology, names.work_queue) == 2 and depth(topology, names.parking) == 0

    # import puts them back through the parking exchange (parked's write permission).
    grant(user, vhost, perms["parked"])
    code, out = cli("parked", "import", "-t", path, export)
    assert code == 0, out
    assert depth(topology, names.parking) == 2
