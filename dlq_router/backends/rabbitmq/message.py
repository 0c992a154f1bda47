"""A dead letter's AMQP side: where it came from (x-death) and what can be republished.

The router sees a delivery's properties as raw fields (``wire.Properties``, see
rawframes.py): every property and every foreign header goes out byte for byte as it
arrived; the body is never touched. Two properties cannot go out unchanged and are kept as
headers instead:

- ``expiration``: a per-message TTL would fight the tier's fixed TTL, and in the parking
  queue (no DLX) an expiring message would simply vanish. Recorded in
  ``dlq-original-expiration`` and dropped.
- ``user_id``: RabbitMQ refuses a publish whose user_id is not the connection's user. Kept
  when it matches, otherwise recorded in ``dlq-original-user-id`` and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import wire
from dlq_router.policy import Failure

# Content header frame: 7-byte frame header + frame-end octet around a payload of
# class id (2) + weight (2) + body size (8) + the encoded properties.
HEADER_FRAME_OVERHEAD = 8 + 12

# Router text that may be dropped when the header table would not fit one frame.
OPTIONAL_TEXT = (h.ERROR_MESSAGE, h.PARK_DETAIL, "dlq-invalid-attempts", h.ORIGIN_QUEUE)
DROPPED_HEADERS = "dlq-dropped-headers"  # foreign headers cut so that a park fits a frame


def failure(table: wire.Table) -> Failure:
    """Describe a dead letter for the policy (its ``dlq-*`` headers only); the newest
    x-death entry says where it died."""
    death = table.death
    if death:
        return Failure(
            headers=table.ours,
            origin_exchange=death.get("exchange"),
            origin_routing_key=death.get("routing-keys"),
            origin_queue=death.get("queue"),
            death_reason=death.get("reason"),
        )
    return Failure(headers=table.ours, death_reason=table.first_death_reason)


def carry_over(props: wire.Properties, table: wire.Table, out: dict[str, Any], user: str) -> None:
    """Move what cannot be republished as is (expiration, foreign user_id) into ``out``.

    Mutates ``props`` (the router owns the delivered object) so publishing it again keeps
    every other property exactly as it arrived; the field list is replaced, not changed in
    place, so a reference to the old one still holds the properties as they came.
    """
    expiration = props.short(wire.EXPIRATION)
    if expiration is None:
        expiration = table.death.get("original-expiration")
    if expiration is not None:
        out[h.ORIGINAL_EXPIRATION] = expiration
        props.fields = list(props.fields)
        props.fields[wire.EXPIRATION] = None
    user_id = props.fields[wire.USER_ID]
    if user_id is not None and user_id[1:] != user.encode():
        out[h.ORIGINAL_USER_ID] = props.short(wire.USER_ID)
        props.fields = list(props.fields)
        props.fields[wire.USER_ID] = None


class Encoded:
    """Properties encoded once, both to measure the header frame and to publish.

    pika's publish path only calls ``encode()`` (and reads ``INDEX``) on the properties
    it is given (``frame.Header.marshal``), so either pika's ``BasicProperties`` or the
    router's raw ``wire.Properties`` can be measured and published through this.
    """

    INDEX: ClassVar[int] = wire.BASIC_CLASS
    __slots__ = ("pieces", "size")

    def __init__(self, props: Any) -> None:
        self.pieces: list[bytes] = props.encode()
        self.size = HEADER_FRAME_OVERHEAD + sum(map(len, self.pieces))

    def encode(self) -> list[bytes]:
        return list(self.pieces)  # pika inserts the frame prefix into the list it gets


def header_frame_size(props: Any) -> int:
    """Bytes of the content header frame these properties produce."""
    return Encoded(props).size


def fits(props: Any, frame_max: int) -> bool:
    return header_frame_size(props) <= frame_max


def slim(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The same headers without the router's optional text (first thing to go if too big)."""
    return {k: v for k, v in headers.items() if k not in OPTIONAL_TEXT}


def minimal_park(
    incoming: Mapping[str, Any], route: str, attempts: int, now_ms: int, message_id: str
) -> dict[str, Any]:
    """Headers for a message that only fits with the fewest router headers: the foreign
    ones as they came, the attempt count, and why it was parked."""
    out = {
        k: v
        for k, v in incoming.items()
        if k not in h.BROKER_DEATH_HEADERS and not k.startswith("dlq-")
    }
    out[h.ROUTE] = route
    out[h.ATTEMPTS] = attempts
    out[h.PARK_REASON] = "oversized"
    out[h.PARKED_AT] = now_ms
    out[h.ID] = h.as_text(incoming.get(h.ID)) or message_id
    return out


def drop_to_fit(
    props: wire.Properties, table: wire.Table, headers: dict[str, Any], frame_max: int
) -> bool:
    """Last resort for a park that does not fit even with the fewest router headers (a
    producer's own table at the frame limit): cut the largest foreign headers until it
    fits, naming each with its size in ``dlq-dropped-headers``. True if it then fits."""
    sizes = sorted(table.foreign_entries(), key=lambda e: e[1], reverse=True)
    dropped: set[bytes] = set()
    notes: list[str] = []
    for name, size in sizes:
        dropped.add(name)
        notes.append(f"{name.decode('utf-8', 'replace')} ({size} bytes)")
        headers[DROPPED_HEADERS] = h.truncate(", ".join(notes), 1024)
        props.table = table.splice(headers, table.without(dropped))
        if fits(props, frame_max):
            return True
    return False
