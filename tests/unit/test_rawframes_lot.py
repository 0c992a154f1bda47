"""``rawframes`` as the parking lot uses it: basic.deliver and body frames against pika's
decode_frame, ``Content``, and ``Inbound`` delivering a snapshot's messages as ``Content``."""

from __future__ import annotations

from typing import Any

import pika.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import exceptions, spec

from dlq_router.backends.rabbitmq import rawframes, replaywire, wire
from tests.unit.fake_connection import FakeConnection

SHORT = st.one_of(st.text(max_size=30), st.binary(max_size=30))


def same(ours: object, theirs: object) -> None:
    assert type(ours) is type(theirs)
    assert vars(ours) == vars(theirs)
    if isinstance(ours, pika.frame.Method):
        assert type(ours.method) is type(theirs.method)  # type: ignore[attr-defined]
        assert vars(ours.method) == vars(theirs.method)  # type: ignore[attr-defined]


@given(
    channel=st.integers(1, 65535),
    consumer_tag=SHORT,
    delivery_tag=st.integers(0, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=SHORT,
    routing_key=SHORT,
    rest=st.binary(max_size=20),
)
def test_deliver_frames_read_as_pika_reads_them(
    channel: int,
    consumer_tag: str | bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: str | bytes,
    routing_key: str | bytes,
    rest: bytes,
) -> None:
    method = spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    data = pika.frame.Method(channel, method).marshal()
    ours, theirs = rawframes.read_frame(data + rest), pika.frame.decode_frame(data + rest)
    assert ours[0] == theirs[0] == len(data)
    same(ours[1], theirs[1])
    for cut in (1, 7, 9, len(data) - 1):
        assert rawframes.read_frame(data[:cut]) == (0, None)


@given(channel=st.integers(1, 65535), body=st.binary(max_size=300), rest=st.binary(max_size=9))
def test_body_frames_read_as_pika_reads_them(channel: int, body: bytes, rest: bytes) -> None:
    data = pika.frame.Body(channel, body).marshal()
    ours, theirs = rawframes.read_frame(data + rest), pika.frame.decode_frame(data + rest)
    assert ours[0] == theirs[0] == len(data)
    same(ours[1], theirs[1])
    assert rawframes.read_frame(data[:-1]) == (0, None)


def test_bad_frames_raise_as_pika_does_and_other_frames_go_to_pika() -> None:
    body = pika.frame.Body(1, b"abc").marshal()
    with pytest.raises(exceptions.InvalidFrameError):
        rawframes.read_frame(body[:-1] + b"\x00")
    short = pika.frame.Method(1, spec.Basic.Deliver("t", 1, False, "e", "k")).marshal()
    cut = short[:3] + (len(short) - 8 - 2).to_bytes(4, "big") + short[7:-3] + b"\xce"
    with pytest.raises(exceptions.InvalidFrameError):
        rawframes.read_frame(cut)  # the routing key runs past the frame
    ack = pika.frame.Method(1, spec.Basic.Ack(delivery_tag=7, multiple=True)).marshal()
    consumed, value = rawframes.read_frame(ack)
    assert consumed == len(ack) and value.method.multiple and value.method.delivery_tag == 7
    assert rawframes.read_frame(b"") == (0, None)


SHORTSTR = st.binary(max_size=12).map(lambda b: bytes((len(b),)) + b)
FIELD = {
    "s": SHORTSTR,
    "o": st.binary(min_size=1, max_size=1),
    "q": st.binary(min_size=8, max_size=8),
}


@st.composite
def property_lists(draw: st.DrawFn) -> wire.Properties:
    fields: list[bytes | None] = [
        draw(st.none() | FIELD[kind]) if kind != "t" else None for _n, _b, kind in wire.FIELDS
    ]
    table = draw(st.none() | st.binary(max_size=40))
    return wire.Properties(fields, table)


def header_frame(props: wire.Properties, body_size: int = 3) -> bytes:
    return pika.frame.Header(9, body_size, props).marshal()


@given(props=property_lists(), table=st.binary(max_size=40))
def test_content_keeps_the_property_list_and_replaces_only_the_table(
    props: wire.Properties, table: bytes
) -> None:
    data = header_frame(props)
    consumed, value = rawframes.read_frame(data + b"\x08", content=True)
    assert consumed == len(data) and (value.channel_number, value.body_size) == (9, 3)
    got = value.properties
    assert isinstance(got, rawframes.Content)
    assert got.table == props.table
    split = got.properties()
    assert (split.fields, split.table) == (props.fields, props.table)
    assert got.with_table(table) == replaywire.content(props, table)
    assert rawframes.read_frame(data[:-1], content=True) == (0, None)


def test_content_headers_it_cannot_lay_out_are_split() -> None:
    props = wire.Properties([None] * len(wire.FIELDS), b"", flag_tail=b"\x00\x00")
    consumed, value = rawframes.read_frame(header_frame(props), content=True)
    assert isinstance(value.properties, wire.Properties)  # flag continuation: split
    plain = wire.Properties([None] * len(wire.FIELDS), b"abc")
    consumed, value = rawframes.read_frame(header_frame(plain), content=False)
    assert isinstance(value.properties, wire.Properties)  # not asked for
    overrun = bytearray(header_frame(plain))
    overrun[21:25] = (500).to_bytes(4, "big")  # the table's length runs past the frame
    consumed, value = rawframes.read_frame(bytes(overrun), content=True)
    assert consumed == len(overrun) and value.properties.unreadable is not None


def stream_of_frames() -> tuple[bytes, int]:
    out = []
    for i in range(30):
        method = spec.Basic.Deliver("ctag", i + 1, False, "", "k")
        out.append(pika.frame.Method(1, method).marshal())
        props = wire.Properties([None] * len(wire.FIELDS), b"\x01aS\x00\x00\x00\x01x" * (i % 3))
        body = bytes(range(i * 7 % 256)) * 3
        out.append(pika.frame.Header(1, len(body), props).marshal())
        if body:  # an empty body has no body frame
            out.append(pika.frame.Body(1, body).marshal())
        if i % 7 == 0:
            out.append(pika.frame.Method(1, spec.Basic.Ack(delivery_tag=i)).marshal())
    return b"".join(out), len(out)


def feed(reader: rawframes.Inbound, data: bytes, cuts: list[int]) -> None:
    """``data`` in reads of the sizes in ``cuts``, then the rest in one read."""
    pos = 0
    for cut in [*cuts, len(data)]:
        if pos < len(data):
            reader(data[pos : pos + cut])
            pos += cut


@given(cuts=st.lists(st.integers(1, 400), max_size=40))
def test_inbound_reads_any_split_of_the_stream_in_order(cuts: list[int]) -> None:
    data, count = stream_of_frames()
    conn = FakeConnection()
    reader = rawframes.Inbound(conn, content=True)
    feed(reader, data, cuts)
    assert conn._frame_buffer == b"" and conn.bytes_received == len(data)
    assert len(conn.frames) == count
    expected, at = [], 0
    while at < len(data):
        used, value = rawframes.read_frame(data[at:], content=True)
        expected.append(value)
        at += used
    assert [type(f) for f in conn.frames] == [type(f) for f in expected]
    assert [
        f.marshal() if not isinstance(f, pika.frame.Header) else f.body_size for f in conn.frames
    ] == [f.marshal() if not isinstance(f, pika.frame.Header) else f.body_size for f in expected]


def test_inbound_stops_when_the_connection_closed() -> None:
    data, _count = stream_of_frames()
    conn = FakeConnection()

    def close_after_one(value: Any) -> None:
        conn.frames.append(value)
        conn.is_closed = True

    conn._process_frame = close_after_one  # type: ignore[method-assign]
    rawframes.Inbound(conn, content=True)(data)
    assert len(conn.frames) == 1 and conn._frame_buffer == b""


@given(cuts=st.lists(st.integers(1, 400), max_size=40))
def test_registered_deliveries_reach_the_sink_whole_and_in_order(cuts: list[int]) -> None:
    data, count = stream_of_frames()
    conn = FakeConnection()
    reader = rawframes.Inbound(conn, content=True)
    got: list[tuple[int, Any, bytes]] = []
    reader.register(
        "ctag", lambda tag, _c, props, body: got.append((tag, props, body)), channel=1, content=True
    )
    feed(reader, data, cuts)
    assert conn._frame_buffer == b"" and conn.bytes_received == len(data)
    assert [tag for tag, _p, _b in got] == list(range(1, 31))
    assert [body for _t, _p, body in got] == [bytes(range(i * 7 % 256)) * 3 for i in range(30)]
    assert all(isinstance(p, rawframes.Content) for _t, p, _b in got)
    assert [p.table for _t, p, _b in got] == [
        b"\x01aS\x00\x00\x00\x01x" * (i % 3) for i in range(30)
    ]
    # only the acks went to pika
    assert len(conn.frames) == 5 and all(isinstance(f.method, spec.Basic.Ack) for f in conn.frames)
    assert conn.frames_received == count - 5


def test_registered_deliveries_let_other_channels_interleave_and_drop_broken_content() -> None:
    deliver = pika.frame.Method(1, spec.Basic.Deliver("c", 5, False, "", "k")).marshal()
    props = wire.Properties([None] * len(wire.FIELDS), None)
    header = pika.frame.Header(1, 6, props).marshal()
    other = pika.frame.Method(2, spec.Basic.Ack(delivery_tag=1)).marshal()
    conn = FakeConnection()
    reader = rawframes.Inbound(conn, content=True)
    got: list[tuple[int, Any, bytes]] = []
    reader.register(
        "c", lambda tag, _c, props, body: got.append((tag, props, body)), channel=1, content=True
    )
    body = [pika.frame.Body(1, b"abc").marshal(), pika.frame.Body(1, b"def").marshal()]
    reader(deliver + header + body[0] + other + body[1])
    assert [(t, b) for t, _p, b in got] == [(5, b"abcdef")] and len(conn.frames) == 1
    # a method frame on the channel in the middle of a delivery: that delivery is dropped
    close = pika.frame.Method(1, spec.Channel.Close(200, "bye", 0, 0)).marshal()
    reader(deliver + header + close + deliver + header + body[0] + body[1])
    assert [(t, b) for t, _p, b in got] == [(5, b"abcdef")] * 2 and len(conn.frames) == 2
    # unregistered: everything to pika
    reader.unregister("c")
    reader(deliver + header + body[0])
    assert len(got) == 2 and len(conn.frames) == 5
