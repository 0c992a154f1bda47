"""``dlq-router run`` keeps the cyclic collector off the routing path, and undoes it on return
(``run`` is also called in-process: by tests, by anyone embedding the CLI)."""

from __future__ import annotations

import gc

import pytest

from dlq_router.cli.run import quiet_gc


def test_the_collector_is_quiet_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with quiet_gc():
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > frozen  # what was loaded is out of its sight
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_restored_when_the_router_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc():
        raise RuntimeError("router failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
