"""Cheap ids: unique within a process, across processes, and after a fork."""

from __future__ import annotations

import os
import subprocess
import sys

from dlq_router.ids import new_id


def test_ids_are_unique_hex_with_a_per_process_prefix() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1


def test_another_process_draws_another_prefix() -> None:
    code = "from dlq_router.ids import new_id; print(new_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 0
    mine = new_id()
    assert other.stdout.strip()[:16] != mine[:16]


def test_a_forked_child_does_not_repeat_the_parent_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child[:16] != new_id()[:16]
