"""The parking lot's header reading (``decode_headers``) never raises on foreign bytes, and
what it cannot read goes back out byte for byte (``to_properties``)."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from dlq_router.backends.base import ParkedMessage
from dlq_router.backends.rabbitmq import wire
from dlq_router.backends.rabbitmq.parking import decode_headers, to_properties
from tests.integration.rabbit_raw import entry, longstr, nested_arrays


@given(st.binary(max_size=400))
def test_any_bytes_decode_without_raising(table: bytes) -> None:
    headers = decode_headers(table)
    assert all(isinstance(k, str) for k in headers)


@given(
    seconds=st.integers(0, 2**64 - 1),
    depth=st.integers(1, 3000),
    text=st.text(max_size=30),
)
def test_unreadable_values_go_back_byte_for_byte(seconds: int, depth: int, text: str) -> None:
    stamp = entry("stamp", b"T" + seconds.to_bytes(8, "big"))
    deep = entry("deep", nested_arrays(depth))
    table = entry("note", longstr(text)) + stamp + deep
    headers = decode_headers(table)
    assert headers["note"] == text
    msg = ParkedMessage("m1", "r", headers, {"message_id": "m1"}, b"")
    props = to_properties(msg, dict(headers))
    raws = [v for v in headers.values() if isinstance(v, wire.Raw)]
    if raws:
        assert isinstance(props, wire.Properties) and props.table is not None
        for name, value in headers.items():
            if isinstance(value, wire.Raw):
                assert wire.encode_entry(name, value) in props.table
        assert props.message_id == "m1"
    if depth > 32:  # deeper than the lot decodes (pika and the renderers recurse): bytes
        assert headers["deep"] == wire.Raw(nested_arrays(depth))
    if seconds > 2**40:  # past year 9999 (or milliseconds): kept as bytes
        assert isinstance(headers["stamp"], wire.Raw)


def test_an_unreadable_rabbitmq_value_can_be_imported_into_redis() -> None:
    """Export from RabbitMQ, import to Redis: a value kept as wire bytes is stored tagged."""
    from dlq_router.backends.redis.parking import _encode, envelope_for
    from dlq_router.topology import Route

    stamp = b"T" + (2**64 - 1).to_bytes(8, "big")
    msg = ParkedMessage("p1", "emails", {"stamp": wire.Raw(stamp)}, {}, b"body")
    route = Route.model_validate({"name": "emails", "retry": {"delays": ["1s"], "max_attempts": 2}})
    env = json.loads(_encode(envelope_for(msg, route)))
    assert env["headers"]["stamp"] == {"$amqp": base64.b64encode(stamp).decode("ascii")}
