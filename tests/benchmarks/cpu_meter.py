"""CPU seconds of the broker and of client processes over a timed window (Linux /proc).

The RabbitMQ figures compare a client (router, replay) with RabbitMQ's shovel, which runs
inside the broker. On a machine where the broker and the client share the cores, the
broker's own CPU per message bounds what any external client can reach, so the scripts
print it next to the rates: ``cores / (broker + client CPU per message)`` is the rate at
which both would saturate every core.
"""

from __future__ import annotations

import os
import subprocess

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def broker_pid() -> int | None:
    """The RabbitMQ node's Erlang VM on this machine, if one runs here."""
    found = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True)
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


def ceiling(broker_us: float, client_us: float) -> float:
    """Messages/s at which broker and client together use every core of this machine."""
    return CORES * 1e6 / (broker_us + client_us)
