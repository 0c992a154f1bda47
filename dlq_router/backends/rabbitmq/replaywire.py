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

from typing import Any

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import wire
from dlq_router.policy import reset_for_replay

_PUBLISH_ID = bytes((len(h.PUBLISH_ID),)) + h.PUBLISH_ID.encode()  # name length, name
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
        stamp = _PUBLISH_ID + _int(publish_id)
        if not table:
            return stamp
        entries, readable = wire.scan(table, 0, len(table))
        drops = self._drops(tuple([e[0] for e in entries]))
        if not drops and readable == len(table):
            return table + stamp
        pieces: list[bytes] = []
        run = 0
        for i in drops:
            _name, start, _value, stop = entries[i]
            if start > run:
                pieces.append(table[run:start])
            run = stop
        pieces.append(table[run:readable])
        pieces.append(stamp)
        pieces.append(table[readable:])
        return b"".join(pieces)


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"I" + value.to_bytes(4, "big", signed=True)
    return b"l" + value.to_bytes(8, "big", signed=True)


def content(props: wire.Properties, table: bytes) -> bytes:
    """The encoded property list of ``props`` with ``table`` as its headers."""
    out = props.copy()
    out.table = table
    return out.encode()[0]


def republishable(props: Any) -> bool:
    """Whether a delivery's properties split into fields (else replay goes the slow way)."""
    return isinstance(props, wire.Properties) and props.unreadable is None
