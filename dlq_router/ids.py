"""Cheap unique ids for parked messages and kombu delivery tags.

``uuid4()`` costs a ``getrandom()`` call per id, a measurable share of the router's hot
path. An id only has to be unique, not unpredictable: 64 random bits drawn once per process
(again in a forked child) followed by a counter keeps ids apart across processes, hosts and
restarts.
"""

from __future__ import annotations

import itertools
import os
import uuid

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = uuid.uuid4().hex[:16]
    _counter = itertools.count()


def new_id() -> str:
    """A fresh id: 16 hex digits of process prefix, then at least 8 of counter."""
    return f"{_prefix}{next(_counter):08x}"  # next() on a count is atomic under the GIL


_reseed()
os.register_at_fork(after_in_child=_reseed)
