"""A dead letter's AMQP side: where it came from (x-death) and what can be republished.

Properties are copied as they arrived (content type/encoding, ids, priority, timestamp,
type, app id, reply-to, delivery mode, every foreign header); the body is never touched.
Two properties cannot go out unchanged and are kept as headers instead:

- ``expiration``: a per-message TTL would fight the tier's fixed TTL, and in the parking
  queue (no DLX) an expiring message would simply vanish. Recorded in
  ``dlq-original-expiration`` and dropped.
- ``user_id``: RabbitMQ refuses a publish whose user_id is not the connection's user. Kept
  when it matches, otherwise recorded in ``dlq-original-user-id`` and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pika import spec

from dlq_router import headers as h
from dlq_router.policy import Failure

# Content header frame: 7-byte frame header + frame-end octet around a payload of
# class id (2) + weight (2) + body size (8) + the encoded properties.
HEADER_FRAME_OVERHEAD = 8 + 12

# Router text that may be dropped when the header table would not fit one frame.
OPTIONAL_TEXT = (h.ERROR_MESSAGE, h.PARK_DETAIL, "dlq-invalid-attempts", h.ORIGIN_QUEUE)


def failure(headers: Mapping[str, Any]) -> Failure:
    """Describe a dead letter for the policy; the newest x-death entry says where it died."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        newest = deaths[0]
        keys = newest.get("routing-keys")
        key = h.as_text(keys[0]) if isinstance(keys, list) and keys else None
        return Failure(
            headers=headers,
            origin_exchange=h.as_text(newest.get("exchange")),
            origin_routing_key=key,
            origin_queue=h.as_text(newest.get("queue")),
            death_reason=h.as_text(newest.get("reason")),
        )
    return Failure(headers=headers, death_reason=h.as_text(headers.get("x-first-death-reason")))


def original_expiration(props: spec.BasicProperties) -> str | None:
    """The message's own TTL: its property, or what RabbitMQ moved into x-death."""
    if props.expiration is not None:
        return str(props.expiration)
    deaths = (props.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return h.as_text(deaths[0].get("original-expiration"))
    return None


def carry_over(props: spec.BasicProperties, out: dict[str, Any], user: str) -> None:
    """Move what cannot be republished as is (expiration, foreign user_id) into ``out``.

    Mutates ``props`` (the router owns the delivered object) so publishing it again keeps
    every other property exactly as it arrived.
    """
    expiration = original_expiration(props)
    if expiration is not None:
        out[h.ORIGINAL_EXPIRATION] = expiration
        props.expiration = None
    if props.user_id is not None and props.user_id != user:
        out[h.ORIGINAL_USER_ID] = props.user_id
        props.user_id = None


class Encoded:
    """Properties encoded once, both to measure the header frame and to publish.

    pika's publish path only calls ``encode()`` (and reads ``INDEX``) on the properties
    it is given, so handing it this object saves encoding the header table twice, the
    most expensive step of routing a message.
    """

    INDEX = spec.BasicProperties.INDEX
    __slots__ = ("pieces", "size")

    def __init__(self, props: spec.BasicProperties) -> None:
        self.pieces: list[bytes] = props.encode()
        self.size = HEADER_FRAME_OVERHEAD + sum(map(len, self.pieces))

    def encode(self) -> list[bytes]:
        return list(self.pieces)  # pika inserts the frame prefix into the list it gets


def header_frame_size(props: spec.BasicProperties) -> int:
    """Bytes of the content header frame these properties produce."""
    return Encoded(props).size


def fits(props: spec.BasicProperties, frame_max: int) -> bool:
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
