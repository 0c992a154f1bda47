"""What ``bench_celery.py`` reads from outside: RabbitMQ queue counts and a worker's RSS.

Queue counts come from ``rabbitmqctl list_queues ... --formatter json``: AMQP's passive
declare reports only ready messages, and the figure that matters for a worker holding
countdown tasks is the *unacknowledged* count, which only the broker's own tooling shows.
Both parsers take text from another program, so they accept anything and keep only what
they can read.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

RABBITMQCTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class QueueCounts:
    ready: int
    unacked: int

    @property
    def total(self) -> int:
        return self.ready + self.unacked


def _count(value: object) -> int:
    """A message count as rabbitmqctl prints it; anything else (``""`` while a quorum queue
    elects its leader, ``null``, a string) counts as 0 rather than failing the whole read."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _json_list(text: str) -> list[object] | None:
    """The JSON list in ``text``: all of it, or from the first line starting with ``[`` to
    the last ``]`` (a busy node's rabbitmqctl may print warning lines around it)."""
    candidates = [text]
    start = next((i for i, line in enumerate(text.splitlines()) if line.startswith("[")), None)
    if start is not None:
        tail = "\n".join(text.splitlines()[start:])
        candidates.append(tail[: tail.rfind("]") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, list):
            return value
    return None


def parse_queue_listing(text: str) -> dict[str, QueueCounts] | None:
    """``rabbitmqctl list_queues name messages_ready messages_unacknowledged --formatter json``.

    ``None`` when ``text`` holds no JSON list (the caller must not read that as "no
    queues"); rows without a string ``name`` are skipped.
    """
    rows = _json_list(text)
    if rows is None:
        return None
    out: dict[str, QueueCounts] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        out[row["name"]] = QueueCounts(
            ready=_count(row.get("messages_ready")),
            unacked=_count(row.get("messages_unacknowledged")),
        )
    return out


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()[:300]}")
    return done.stdout


def queue_counts(vhost: str) -> dict[str, QueueCounts]:
    """Every queue of ``vhost`` with its counts; raises if rabbitmqctl's answer is unreadable."""
    text = ""
    for _ in range(3):
        text = rabbitmqctl(
            "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged",
            "--formatter", "json",
        )  # fmt: skip
        counts = parse_queue_listing(text)
        if counts is not None:
            return counts
    raise RuntimeError(f"rabbitmqctl list_queues: unreadable output: {text[:200]!r}")


def parse_vm_rss_kib(status: str) -> int | None:
    """The ``VmRSS:`` line of ``/proc/<pid>/status`` in KiB (``None`` for a zombie/kernel task)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isascii() and parts[1].isdecimal():
                return int(parts[1])
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` file)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        out.extend(int(c) for c in _read(f"{task}/children").split() if c.isdecimal())
    return out


def rss_kib(pid: int) -> int:
    return parse_vm_rss_kib(_read(f"/proc/{pid}/status")) or 0


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, RSS of ``pid`` plus its descendants), in KiB.

    The prefork pool's children share pages with the parent, so the total over-counts
    shared memory; the parent alone is where Celery keeps countdown tasks.
    """
    main = rss_kib(pid)
    total, todo = main, children(pid)
    while todo:
        child = todo.pop()
        total += rss_kib(child)
        todo.extend(children(child))
    return main, total
