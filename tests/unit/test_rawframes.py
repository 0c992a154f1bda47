"""The hook below pika's frame decoding (rawframes.py) and what it relies on in pika.

If pika changes any of this, these fail before the router silently decodes header tables
with pika's codec again (or stops receiving content headers at all).
"""

from __future__ import annotations

import inspect
import struct
from typing import Any

import pika
import pika.adapters.base_connection
import pika.connection
import pika.frame
import pytest
from pika import spec

from dlq_router.backends.rabbitmq import rawframes, wire


def content_header(channel: int, body_size: int, props: bytes) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + props
    return struct.pack(">BHI", spec.FRAME_HEADER, channel, len(payload)) + payload + b"\xce"


def test_pika_version_is_in_the_pinned_range() -> None:
    major, minor = (int(p) for p in pika.__version__.split(".")[:2])
    assert (1, 3) <= (major, minor) < (1, 5), pika.__version__


def test_pika_reads_frames_through_read_frame_over_the_frame_buffer() -> None:
    read = inspect.getsource(pika.connection.Connection._read_frame)
    assert "frame.decode_frame(self._frame_buffer)" in read
    assert list(inspect.signature(pika.connection.Connection._read_frame).parameters) == ["self"]
    loop = inspect.getsource(pika.connection.Connection._on_data_available)
    assert "self._read_frame()" in loop and "self._trim_frame_buffer(consumed_count)" in loop
    params = list(inspect.signature(pika.frame.Header.__init__).parameters)
    assert params[1:3] == ["channel_number", "body_size"]
    marshal = inspect.getsource(pika.frame.Header.marshal)
    assert "self.properties.encode()" in marshal and "self.properties.INDEX" in marshal


def test_a_content_header_the_pika_codec_cannot_decode_arrives_raw() -> None:
    # A T timestamp of 2**64-1 in a header: pika's own decode raises.
    hostile = b"\x04timeT" + struct.pack(">Q", 2**64 - 1)
    props = struct.pack(">H", 1 << 13) + struct.pack(">I", len(hostile)) + hostile
    data = content_header(5, 3, props) + b"rest"
    with pytest.raises((ValueError, OverflowError, OSError)):
        pika.frame.decode_frame(data)
    consumed, frame = rawframes.read_frame(data)
    assert consumed == len(data) - 4
    assert isinstance(frame, pika.frame.Header)
    assert (frame.channel_number, frame.body_size) == (5, 3)
    assert isinstance(frame.properties, wire.Properties)
    assert frame.properties.table == hostile
    assert b"".join(frame.properties.encode()) == props
    # republished through pika's own marshal: the same bytes again
    assert pika.frame.Header(5, 3, frame.properties).marshal() == data[:-4]


def test_other_frames_and_partial_frames_go_to_pika() -> None:
    method = pika.frame.Method(1, spec.Basic.Ack(delivery_tag=7)).marshal()
    consumed, frame = rawframes.read_frame(method)
    assert consumed == len(method) and isinstance(frame, pika.frame.Method)
    whole = content_header(1, 0, struct.pack(">H", 0))
    assert rawframes.read_frame(whole[:-1]) == (0, None)
    with pytest.raises(pika.exceptions.InvalidFrameError):
        rawframes.read_frame(whole[:-1] + b"\x00")


def test_install_replaces_read_frame_on_that_connection_only() -> None:
    class Fake:
        _frame_buffer = content_header(2, 0, struct.pack(">H", 0))

        def _process_frame(self, value: Any) -> None:
            pass

    conn = Fake()
    rawframes.install(conn)
    consumed, frame = conn._read_frame()  # type: ignore[attr-defined]
    assert consumed == len(Fake._frame_buffer) and isinstance(frame.properties, wire.Properties)
    assert pika.connection.Connection._read_frame is not conn._read_frame  # type: ignore[attr-defined]


def test_pika_sends_a_message_as_frames_cut_at_body_max_length() -> None:
    send = inspect.getsource(pika.connection.Connection._send_message)
    assert "self._body_max_length" in send
    assert "self._output_marshaled_frames(marshaled_body_frames)" in send


@pytest.mark.parametrize("body", [b"", b"short", bytes(range(256)) * 3])
@pytest.mark.parametrize("mandatory", [True, False])
def test_publisher_writes_the_frames_pika_would(body: bytes, mandatory: bool) -> None:
    class Conn:
        _body_max_length = 100

        def __init__(self) -> None:
            self.sent: list[list[bytes]] = []

        def _output_marshaled_frames(self, frames: list[bytes]) -> None:
            self.sent.append(frames)

    class Chan:
        channel_number = 3
        is_open = True

    props = pika.BasicProperties(message_id="m", headers={"a": 1, "é": "ü"}, delivery_mode=2)
    conn, chan = Conn(), Chan()
    publisher = rawframes.Publisher(conn, chan)
    publisher.publish("ex", "key.é", body, b"".join(props.encode()), mandatory=mandatory)
    publisher.publish("ex", "key.é", body, b"".join(props.encode()), mandatory=mandatory)
    method = spec.Basic.Publish(exchange="ex", routing_key="key.é", mandatory=mandatory)
    expected = [
        pika.frame.Method(3, method).marshal(),
        pika.frame.Header(3, len(body), props).marshal(),
        *(pika.frame.Body(3, body[i : i + 100]).marshal() for i in range(0, len(body), 100)),
    ]
    # The same bytes, in one piece or frame by frame (what reaches the socket is joined).
    assert [b"".join(sent) for sent in conn.sent] == [b"".join(expected)] * 2
    chan.is_open = False
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        publisher.publish("ex", "k", body, b"", mandatory=True)


def test_pika_reads_through_on_data_available_and_processes_each_frame() -> None:
    loop = inspect.getsource(pika.connection.Connection._on_data_available)
    assert "self._frame_buffer += data_in" in loop
    assert "self._process_frame(frame_value)" in loop
    base = inspect.getsource(pika.adapters.base_connection.BaseConnection._proto_data_received)
    assert "self._on_data_available(data)" in base
