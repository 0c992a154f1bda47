"""A parked message's republish built from its bytes: replay's header reset without decoding.

Replay republishes a parked message with ``policy.reset_for_replay`` applied to its headers
(RabbitMQ's death headers and the park's own ``dlq-*`` entries removed) plus a fresh
``dlq-publish-id``. That reset depends only on which names a table holds, never on their
values, so ``Reset`` asks the policy once per distinct list of names (parked messages of one
route nearly all have the same) which entries to drop, and then cuts those entries out of
the table's bytes. Every other entry, foreign or ``dlq-*``, goes out byte for byte; nothing
is decoded, so no value can fail to decode or come back changed (pika's codec turned a
``d`` into an int and dropped bytes it could not size). The content header around the table
is the parked one's, every other property as it came.
"""

from __future__ import annotations

import struct
from typing import Any

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import wire
from dlq_router.policy import reset_for_replay

_PUBLISH_ID = bytes((len(h.PUBLISH_ID),)) + h.PUBLISH_ID.encode()  # name length, name
_U32 = struct.Struct(">I").unpack_from
# Distinct name lists remembered per Reset; cleared when full (a hostile lot may vary them).
CACHE_MAX = 1024


class Reset:
    """``reset_for_replay`` on header tables as bytes, for one replay's ``keep_attempts``."""

    __slots__ = ("drops", "keep_attempts")

    def __init__(self, *, keep_attempts: bool) -> None:
        self.keep_attempts = keep_attempts
        # names of a table's readable entries, in order -> indexes of the entries to drop
        self.drops: dict[tuple[bytes, ...], tuple[int, ...]] = {}

    def _drops(self, names: tuple[bytes, ...]) -> tuple[int, ...]:
        found = self.drops.get(names)
        if found is None:
            text = [n.decode("utf-8", "replace") for n in names]
            kept = reset_for_replay(dict.fromkeys(text), keep_attempts=self.keep_attempts)
            found = tuple(i for i, name in enumerate(text) if name not in kept)
            if len(self.drops) >= CACHE_MAX:
                self.drops.clear()
            self.drops[names] = found
        return found

    def table(self, table: bytes | None, publish_id: int) -> bytes:
        """``table`` without the entries the reset removes, and ``dlq-publish-id`` after the
        last readable entry (bytes past it that cannot be sized stay last, as they came)."""
        stamp = _PUBLISH_ID + wire.encode_value(publish_id)
        if not table:
            return stamp
        names, stops = walk(table)
        drops = self._drops(tuple(names))
        readable = stops[-1] if stops else 0
        if not drops and readable == len(table):
            return table + stamp
        pieces: list[bytes] = []
        run = 0
        for i in drops:
            start = stops[i - 1] if i else 0
            if start > run:
                pieces.append(table[run:start])
            run = stops[i]
        pieces.append(table[run:readable])
        pieces.append(stamp)
        pieces.append(table[readable:])
        return b"".join(pieces)


def walk(table: bytes) -> tuple[list[bytes], list[int]]:
    """``wire.scan`` reduced to what the reset needs: each readable entry's name and where
    it ends (entries are back to back: one starts where the previous one stopped)."""
    names: list[bytes] = []
    stops: list[int] = []
    name, stopped = names.append, stops.append
    step_of, u32 = wire.STEP, _U32
    pos, end = 0, len(table)
    while pos < end:
        value = pos + 1 + table[pos]
        if value >= end:
            break
        step = step_of[table[value]]
        if step > 0:
            stop = value + step
        elif step < 0 and value + 5 <= end:
            stop = value + 5 + u32(table, value + 1)[0]
        else:
            break
        if stop > end:
            break
        name(table[pos + 1 : value])
        stopped(stop)
        pos = stop
    return names, stops


def content(props: wire.Properties, table: bytes) -> bytes:
    """The encoded property list of ``props`` with ``table`` as its headers."""
    out = props.copy()
    out.table = table
    return out.encode()[0]


def republishable(props: Any) -> bool:
    """Whether a delivery's properties split into fields (else replay goes the slow way)."""
    return isinstance(props, wire.Properties) and props.unreadable is None
