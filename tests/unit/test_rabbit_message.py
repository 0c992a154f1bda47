"""The AMQP side of a dead letter: origin from x-death, carried-over properties, frames."""

from __future__ import annotations

import pika

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import message, wire

X_DEATH = [
    {
        "count": 1,
        "reason": "rejected",
        "queue": "emails",
        "exchange": "emails",
        "routing-keys": ["emails.high"],
        "original-expiration": "5000",
    },
    {"count": 3, "reason": "expired", "queue": "emails.retry.1s", "exchange": "emails.retry"},
]


def raw(props: pika.BasicProperties) -> wire.Properties:
    """Properties as the router receives them: raw, from the bytes pika would send."""
    data = b"".join(props.encode())
    return wire.Properties.parse(data, 0, len(data))


def table(headers: dict[str, object]) -> wire.Table:
    return wire.Table(raw(pika.BasicProperties(headers=headers)).table)


def test_failure_reads_the_newest_x_death_entry() -> None:
    f = message.failure(table({"x-death": X_DEATH}))
    assert (f.origin_exchange, f.origin_routing_key, f.origin_queue, f.death_reason) == (
        "emails",
        "emails.high",
        "emails",
        "rejected",
    )


def test_failure_without_x_death_has_no_origin() -> None:
    f = message.failure(table({"x-death": "garbage", "x-first-death-reason": "maxlen"}))
    assert f.origin_exchange is None and f.death_reason == "maxlen"
    assert message.failure(table({})).origin_exchange is None


def test_failure_gives_the_policy_only_router_headers() -> None:
    f = message.failure(table({"task": "t", h.ATTEMPTS: 2, "x-death": X_DEATH}))
    assert dict(f.headers) == {h.ATTEMPTS: 2}


def carried(props: pika.BasicProperties) -> tuple[pika.BasicProperties, dict[str, object]]:
    """carry_over on raw properties; what pika decodes from the result, and ``out``."""
    w = raw(props)
    out: dict[str, object] = {}
    message.carry_over(w, wire.Table(w.table), out, "guest")
    decoded = pika.BasicProperties()
    decoded.decode(b"".join(w.encode()))
    return decoded, out


def test_expiration_moves_into_a_header() -> None:
    props, out = carried(pika.BasicProperties(expiration="60000", headers={}))
    assert props.expiration is None and out[h.ORIGINAL_EXPIRATION] == "60000"
    _, out = carried(pika.BasicProperties(headers={"x-death": X_DEATH}))
    assert out[h.ORIGINAL_EXPIRATION] == "5000"


def test_foreign_user_id_moves_into_a_header_own_is_kept() -> None:
    props, out = carried(pika.BasicProperties(user_id="alice", message_id="m"))
    assert props.user_id is None and out[h.ORIGINAL_USER_ID] == "alice"
    assert props.message_id == "m"
    props, out = carried(pika.BasicProperties(user_id="guest"))
    assert props.user_id == "guest" and out == {}


def test_frame_size_and_fit() -> None:
    small = pika.BasicProperties(headers={"a": "b"})
    assert message.fits(small, 4096)
    big = pika.BasicProperties(headers={"a": "b" * 5000})
    assert message.header_frame_size(big) > 5000
    assert not message.fits(big, 4096)


def test_slim_drops_only_router_text() -> None:
    headers = {h.ERROR_MESSAGE: "x", h.PARK_DETAIL: "y", h.ATTEMPTS: 2, "task": "t"}
    assert message.slim(headers) == {h.ATTEMPTS: 2, "task": "t"}


def test_minimal_park_keeps_foreign_headers_and_the_reason() -> None:
    incoming = {"task": "t", "x-death": X_DEATH, h.ERROR_MESSAGE: "long", h.ATTEMPTS: 2}
    out = message.minimal_park(incoming, "emails", 3, 1000, "id-9")
    assert out == {
        "task": "t",
        h.ROUTE: "emails",
        h.ATTEMPTS: 3,
        h.PARK_REASON: "oversized",
        h.PARKED_AT: 1000,
        h.ID: "id-9",
    }


def test_drop_to_fit_cuts_the_largest_foreign_headers_and_names_them() -> None:
    w = raw(pika.BasicProperties(headers={"small": "s", "big": "b" * 3000, "mid": "m" * 900}))
    t = wire.Table(w.table)
    headers: dict[str, object] = {h.PARK_REASON: "oversized"}
    assert message.drop_to_fit(w, t, headers, 1500)
    decoded = pika.BasicProperties()
    decoded.decode(b"".join(w.encode()))
    assert decoded.headers["small"] == "s" and decoded.headers["mid"] == "m" * 900
    assert "big" not in decoded.headers
    assert decoded.headers[message.DROPPED_HEADERS] == "big (3009 bytes)"
