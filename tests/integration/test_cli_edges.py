"""Operator mistakes the CLI must answer with one line and a documented exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import TopologyFactory
from tests.integration.parking_support import Parked, RabbitParkDriver, write_topology


def dlq(*args: str | Path, stdout: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dlq_router", *map(str, args)]
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)


def test_a_non_numeric_port_exits_2_with_one_line(
    make_topology: TopologyFactory, tmp_path: Path
) -> None:
    path = write_topology(make_topology(), tmp_path / "t.yaml")
    amqp, redis, zero = "amqp://guest:guest@127.0.0.1:56x2/%2F", "redis://h:six/0", "amqp://h:0/"
    cases = [
        *(
            (args, amqp)
            for args in (("declare",), ("run",), ("parked", "list"), ("replay", "--all"))
        ),
        (("declare",), redis),
        (("parked", "groups"), zero),
    ]
    procs = [dlq(*args, "-t", path, "--url", url) for args, url in cases]
    procs.append(dlq("demo", "--url", "amqp://guest:guest@127.0.0.1:5x/%2F"))
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 2, err
        assert len(lines) == 1 and "is not a number from 1 to 65535" in lines[0], err
        assert "unexpected" not in lines[0] and not out


def test_parked_show_into_a_closed_pipe_exits_quietly(
    make_topology: TopologyFactory, tmp_path: Path, uid: str
) -> None:
    """``parked show ID | head``: the reader is gone before the first line is written."""
    topology = make_topology()
    driver = RabbitParkDriver(topology)
    try:
        driver.park(topology.routes[0], [Parked(id=f"{uid}p", parked_at=1_700_000_000_000)])
    finally:
        driver.close()
    path = write_topology(topology, tmp_path / "t.yaml")
    # One after the other: a running snapshot hides the messages it holds from a concurrent
    # reader (README, "non-destructive inspection"), so `show` could miss the message.
    for args in (("parked", "show", f"{uid}p"), ("parked", "list")):
        proc = dlq(*args, "-t", path)
        assert proc.stdout is not None
        proc.stdout.close()  # like `head` that has already exited
        _, err = proc.communicate(timeout=60)
        assert err == b"", err.decode()
        assert proc.returncode == 141  # 128 + SIGPIPE, as `cat` would
