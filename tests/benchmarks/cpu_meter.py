"""CPU seconds of the broker and of client processes over a timed window (Linux /proc).

The RabbitMQ figures compare a client (router, replay) with RabbitMQ's shovel, which runs
inside the broker. On a machine where the broker and the client share the cores, the
broker's own CPU per message bounds what any external client can reach, so the scripts
print it next to the rates: ``cores / (broker + client CPU per message)`` is the rate at
which both would saturate every core.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def broker_pid() -> int | None:
    """The RabbitMQ node's Erlang VM on this machine, if one runs here: the oldest one
    (tests may start nodes of their own beside it, for a short while)."""
    found = subprocess.run(
        ["pgrep", "-o", "-f", "beam.smp.*rabbit"], capture_output=True, text=True
    )
    pids = [int(p) for p in found.stdout.split()]
    return pids[0] if pids else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (every thread) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Meter:
    """CPU of several processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.used: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        return self.used


def per_message_us(seconds: float, n: int) -> float:
    return round(seconds / n * 1e6, 1)


def ceiling(broker_us: float, client_us: float, *, split: bool = False) -> float:
    """Messages/s at which broker and client use every core they may use: all of them
    together, or (``split``) core 0 for the broker and the rest for the client."""
    if split:
        return min(1e6 / broker_us, (CORES - 1) * 1e6 / client_us)
    return CORES * 1e6 / (broker_us + client_us)


def client_budget(broker_us: float, rate: float, *, split: bool = False) -> float:
    """Client CPU per message (us) that would still allow ``rate`` with every core busy."""
    if split:
        return (CORES - 1) * 1e6 / rate
    return CORES * 1e6 / rate - broker_us


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@contextlib.contextmanager
def broker_on_own_core() -> Iterator[bool]:
    """Run the block with the local RabbitMQ node confined to core 0 and this process (and
    the processes it starts meanwhile) to the other cores: the deployment the router is
    built for, where the broker has its own machine and the router runs beside the app.

    Yields False (and changes nothing) when there is no local node, a single core, or no
    permission. Affinities are restored on the way out, an exception or Ctrl-C included;
    should this process be killed first, ``taskset -a -p -c 0-N PID`` restores the node.
    """
    pid = broker_pid()
    if pid is None or CORES < 2:
        yield False
        return
    everything = set(range(CORES))
    mine = os.sched_getaffinity(0)
    saved: dict[int, set[int]] = {}
    try:
        for tid in _threads(pid):
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {0})
        os.sched_setaffinity(0, everything - {0})
    except (PermissionError, ProcessLookupError) as exc:
        print(f"cannot pin the broker ({exc}); split-core figures skipped", flush=True)
        _restore(saved, mine)
        yield False
        return
    print(
        f"broker pid {pid} pinned to core 0 (restore by hand if this script is killed: "
        f"taskset -a -p -c 0-{CORES - 1} {pid})",
        flush=True,
    )
    try:
        yield True
    finally:
        _restore(saved, mine)


def _restore(saved: dict[int, set[int]], mine: set[int]) -> None:
    for tid, cores in saved.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cores)
    os.sched_setaffinity(0, mine)


def erlang_pid(ctl_output: str) -> int:
    """The OS pid printed by ``rabbitmqctl eval 'os:getpid().'`` (an Erlang string: ``"123"``
    on the last line). Asking the node itself is exact where several ``beam.smp`` run."""
    lines = [line.strip() for line in ctl_output.splitlines() if line.strip()]
    text = lines[-1].strip('"') if lines else ""
    if not (text.isascii() and text.isdecimal()) or not 0 < int(text) < 2**22:
        raise ValueError(f"not an OS pid: {ctl_output!r}")
    return int(text)
