"""Content headers reach the router as bytes: a hook below pika's frame decoding.

pika reads the socket into ``Connection._frame_buffer`` and, in ``_on_data_available``,
calls ``self._read_frame()`` (which calls ``pika.frame.decode_frame``) until the buffer
holds no whole frame. ``decode_frame`` decodes a content header with
``BasicProperties.decode``, header table and all; a value that codec cannot handle raises
inside the connection and drops it. ``install`` replaces ``_read_frame`` on one connection
object (the router's; nobody else's) with ``read_frame``: a basic content header becomes a
``pika.frame.Header`` whose properties are ``wire.Properties`` (raw fields, never the
decoded table); every other frame still goes through ``decode_frame``. pika's channel
hands those properties to the consumer and return callbacks unchanged, and publishes any
object with ``INDEX`` and ``encode()`` (``frame.Header.marshal``), so the router's
republish is built from bytes too.

The way out is bytes too: ``Publisher`` writes a republish's three frames (basic.publish,
content header, body) itself and hands them to the connection's frame output, the call
pika's own ``_send_message`` ends with. pika's per-publish work (a ``Basic.Publish``
object, three frame objects, their marshalling) was a fifth of the router's CPU; the
method frame is the same for every publish to one queue, so it is built once.

Relied on (pika 1.3 to 1.4; ``pyproject.toml`` pins ``pika>=1.3,<1.5`` and
``tests/unit/test_rawframes.py`` fails if any of it changes): ``Connection._read_frame``
with no arguments returning ``(bytes consumed, frame or None)`` over ``_frame_buffer``;
``frame.Header(channel_number, body_size, properties)``; ``Connection._process_frame(frame)``
called for each frame read, ``_channels`` by number, ``Channel._on_deliver(method frame,
header frame, body)``; ``Connection._send_message``
ending in ``_output_marshaled_frames(list of frames)`` with bodies cut at
``_body_max_length``; frame layout type octet, channel (2), size (4), payload, 0xCE.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pika import exceptions, frame, spec

from dlq_router.backends.rabbitmq.wire import BASIC_CLASS, Properties


def read_frame(buffer: bytes) -> tuple[int, Any]:
    """``pika.frame.decode_frame``, except that a basic content header is not decoded."""
    if len(buffer) >= 19 and buffer[0] == spec.FRAME_HEADER:
        end = 8 + int.from_bytes(buffer[3:7], "big")  # header 7 + payload + end octet
        if end > len(buffer):
            return 0, None  # not all of it yet
        if buffer[end - 1] != spec.FRAME_END:
            raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
        if int.from_bytes(buffer[7:9], "big") == BASIC_CLASS:
            channel = int.from_bytes(buffer[1:3], "big")
            body_size = int.from_bytes(buffer[11:19], "big")
            props = Properties.parse_or_keep(buffer, 19, end - 1)
            return end, frame.Header(channel, body_size, props)
    decoded: tuple[int, Any] = frame.decode_frame(buffer)
    return decoded


def install(connection: Any) -> Inbound:
    """Make ``connection`` (an asynchronous pika connection) read its input with ``Inbound``:
    content headers arrive as ``wire.Properties``, and deliveries to registered consumers and
    confirms on the registered channel skip pika's frame objects altogether."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer)

    connection._read_frame = _read_frame
    inbound = Inbound(connection)
    connection._on_data_available = inbound
    return inbound


READ_SIZE = 128 * 1024


def read_more(connection: Any) -> None:
    """Read up to ``READ_SIZE`` bytes per ``recv()`` (pika reads 4,096: a dozen calls and
    as many passes through the reader for what one read of a busy socket returns). pika
    still stops reading after about 100 KB per readable event, so other work is not
    starved. Needs the connection's transport (call it once the connection is open); a
    pika without the attribute keeps its own size."""
    transport = getattr(connection, "_transport", None)
    if transport is not None and hasattr(transport, "_MAX_RECV_BYTES"):
        transport._MAX_RECV_BYTES = READ_SIZE


def install_reader(connection: Any) -> None:
    """Only the reading half of ``install``: content headers arrive as ``wire.Properties``
    and pika's own frame processing stays (the parking lot's blocking connection, whose
    consumers are pika's). Installing twice is harmless."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer)

    connection._read_frame = _read_frame


class Deliveries:
    """A connection's ``_process_frame`` that assembles basic.deliver content itself.

    pika routes each of a delivery's three frames through ``_process_frame``, its callback
    lookup, ``_deliver_frame_to_channel`` and the channel's content assembler before
    ``Channel._on_deliver`` runs the consumer; that was about a fifth of the router's CPU.
    Here a basic.deliver method frame and the header and body frames that follow it on its
    channel go straight to that channel's ``_on_deliver`` (pika's own: cancelled and
    unknown consumer tags are handled as pika does). Every other frame (confirms,
    basic.return content, heartbeats, RPC replies) goes to pika's ``_process_frame``.
    """

    __slots__ = ("connection", "header", "method", "parts", "pika_process", "seen")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.pika_process = connection._process_frame
        self.method: Any = None
        self.header: Any = None
        self.parts: list[bytes] = []
        self.seen = 0

    def __call__(self, value: Any) -> None:
        method = self.method
        if method is None:
            if (
                type(value) is frame.Method
                and type(value.method) is spec.Basic.Deliver
                and value.channel_number in self.connection._channels
            ):
                self.connection.frames_received += 1
                self.method = value
                return
            self.pika_process(value)
            return
        if value.channel_number != method.channel_number:
            self.pika_process(value)  # another channel's frame: AMQP allows interleaving
            return
        kind = type(value)
        if kind is frame.Header and self.header is None:
            self.connection.frames_received += 1
            self.header = value
            if value.body_size == 0:
                self._finish()
        elif kind is frame.Body and self.header is not None:
            self.connection.frames_received += 1
            self.parts.append(value.fragment)
            self.seen += len(value.fragment)
            if self.seen >= self.header.body_size:
                self._finish()
        else:  # not content: what pika does with an unexpected frame, it does here too
            self._reset()
            self.pika_process(value)

    def _reset(self) -> None:
        self.method = self.header = None
        self.parts = []
        self.seen = 0

    def _finish(self) -> None:
        method, header, parts = self.method, self.header, self.parts
        self._reset()
        channel = self.connection._channels.get(method.channel_number)
        if channel is not None:
            channel._on_deliver(method, header, parts[0] if len(parts) == 1 else b"".join(parts))


_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_DELIVER = b"\x00\x3c\x00\x3c"  # basic (60), deliver (60)
_ACK = b"\x00\x3c\x00\x50"  # basic.ack (80)
_NACK = b"\x00\x3c\x00\x78"  # basic.nack (120)

# (delivery tag, consumer tag, properties, body)
OnDelivery = Callable[[int, str, Properties, bytes], None]
# (ack, delivery tag, multiple)
OnConfirm = Callable[[bool, int, bool], None]


class Inbound:
    """A connection's ``_on_data_available``: the router's input without pika's frame objects.

    pika turns every frame into objects (``decode_frame``: a ``frame.Method`` around a
    ``spec.Basic.Deliver``, a ``frame.Header``, a ``frame.Body``), trims its buffer after each
    one, and routes each through its callback manager to the channel's content assembler; for
    a dead letter (three frames) and a confirm (one more, per lane run) that was about a
    third of the router's CPU. Here one pass over the bytes read handles, on ``channel``:

    - ``basic.deliver`` to a registered consumer tag, its content header (raw properties,
      ``wire.Properties``) and its body frames: ``consumers[tag](delivery tag, consumer tag,
      properties, body)``;
    and, on every channel registered in ``confirms``:

    - ``basic.ack``/``basic.nack`` (publisher confirms): ``confirms[channel](ack, tag,
      multiple)``.

    Every other frame (RPC replies, heartbeats, ``basic.return`` and its content, deliveries
    to a tag that is not registered, such as one just cancelled, which pika rejects back to
    the queue) is decoded by ``read_frame`` and processed by pika, in the order it came. A
    frame's type, channel and size are read as pika reads them, and a frame without its end
    octet raises ``InvalidFrameError``, as in pika. ``connection._frame_buffer`` keeps what
    is left of an incomplete frame, as pika's own loop does, so either reader can take over.
    """

    __slots__ = (
        "after",
        "channel",
        "confirms",
        "connection",
        "consumers",
        "parts",
        "pending",
        "process",
        "props",
        "seen",
        "size",
    )

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.process = connection._process_frame  # pika's, for every other frame
        self.channel = -1  # the channel whose deliveries and confirms are read here
        self.consumers: dict[bytes, tuple[OnDelivery, str]] = {}
        self.confirms: dict[int, OnConfirm] = {}  # channel number -> its confirm callback
        self.after: Callable[[], None] | None = None  # called after each read's frames
        # The delivery being assembled (a registered consumer's): tag, consumer, callback.
        self.pending: tuple[int, str, OnDelivery] | None = None
        self.props: Properties | None = None
        self.size = 0
        self.seen = 0
        self.parts: list[bytes] = []

    def register(self, consumer_tag: str, callback: OnDelivery) -> None:
        self.consumers[consumer_tag.encode()] = (callback, consumer_tag)

    def unregister(self, consumer_tag: str) -> None:
        """Later deliveries to it go to pika (which rejects them once it is cancelled)."""
        self.consumers.pop(consumer_tag.encode(), None)

    def __call__(self, data: bytes) -> None:
        conn = self.connection
        buf = conn._frame_buffer + data if conn._frame_buffer else data
        length = len(buf)
        pos = 0
        head, u64 = _HEAD.unpack_from, _U64.unpack_from
        ours, confirms = self.channel, self.confirms
        try:
            while length - pos >= 8:
                kind, channel, size = head(buf, pos)
                if kind > 3:  # heartbeat, or the protocol header of a refused handshake
                    consumed, value = read_frame(buf[pos:])
                    if value is None:
                        break
                    pos += consumed
                    self.process(value)
                    continue
                end = pos + 8 + size
                if end > length:
                    break
                if buf[end - 1] != 0xCE:
                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                start = pos
                pos = end
                if channel == ours:
                    pending = self.pending
                    if kind == 3 and pending is not None and self.props is not None:  # body
                        self.parts.append(buf[start + 7 : end - 1])
                        self.seen += size
                        if self.seen >= self.size:
                            self._finish(pending)
                        continue
                    if kind == 2 and pending is not None and self.props is None:  # header
                        self.size = u64(buf, start + 11)[0]
                        self.props = Properties.parse_or_keep(buf, start + 19, end - 1)
                        if self.size == 0:
                            self._finish(pending)
                        continue
                    if pending is not None:  # not how content comes: pika's, as it came
                        self._reset()
                    elif kind == 1 and buf[start + 7 : start + 11] == _DELIVER:
                        at = start + 11
                        tag_end = at + 1 + buf[at]
                        found = self.consumers.get(buf[at + 1 : tag_end])
                        if found is not None:
                            tag = u64(buf, tag_end)[0]
                            # Usually its header and one body frame follow in this read:
                            # take all three here (else frame by frame, below).
                            header = end
                            if length - header >= 27:
                                h_kind, h_channel, h_size = head(buf, header)
                                body = header + 8 + h_size
                                if (
                                    h_kind == 2
                                    and h_channel == channel
                                    and length - body >= 8
                                    and buf[body - 1] == 0xCE
                                ):
                                    b_kind, b_channel, b_size = head(buf, body)
                                    stop = body + 8 + b_size
                                    if (
                                        b_kind == 3
                                        and b_channel == channel
                                        and stop <= length
                                        and buf[stop - 1] == 0xCE
                                        and b_size == u64(buf, header + 11)[0]
                                        and b_size > 0
                                    ):
                                        props = Properties.parse_or_keep(buf, header + 19, body - 1)
                                        pos = stop
                                        conn.frames_received += 3
                                        found[0](tag, found[1], props, buf[body + 7 : stop - 1])
                                        continue
                            self.pending = (tag, found[1], found[0])
                            conn.frames_received += 1
                            continue
                if kind == 1 and channel in confirms:
                    method = buf[start + 7 : start + 11]
                    if method in (_ACK, _NACK):
                        conn.frames_received += 1
                        tag, bits = u64(buf, start + 11)[0], buf[start + 19]
                        confirms[channel](method == _ACK, tag, bool(bits & 1))
                        continue
                _consumed, value = read_frame(buf[start:end])
                self.process(value)
        finally:
            conn._frame_buffer = buf[pos:] if pos < length else b""
            conn.bytes_received += pos
            if self.after is not None:
                self.after()

    def _reset(self) -> None:
        self.pending = self.props = None
        self.parts = []
        self.size = self.seen = 0

    def _finish(self, pending: tuple[int, str, OnDelivery]) -> None:
        props, parts = self.props, self.parts
        self.connection.frames_received += 1 + len(parts)
        self._reset()
        assert props is not None
        tag, consumer, callback = pending
        callback(tag, consumer, props, parts[0] if len(parts) == 1 else b"".join(parts))


_FRAME = struct.Struct(">BHI")
_HEADER_FRAME = struct.Struct(">BHIHHQ")  # frame head, then class, weight, body size
_END = b"\xce"


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _END


class Publisher:
    """basic.publish on one open channel, written as frames (see the module docstring)."""

    def __init__(self, connection: Any, channel: Any) -> None:
        self.connection = connection
        self.channel = channel
        self.number: int = channel.channel_number
        self.methods: dict[tuple[str, str, bool], bytes] = {}

    def method(self, exchange: str, key: str, mandatory: bool) -> bytes:
        """The basic.publish frame (class 60, method 40, ticket 0, exchange, routing key,
        mandatory bit), built once per destination."""
        cached = self.methods.get((exchange, key, mandatory))
        if cached is None:
            ex, rk = exchange.encode(), key.encode()
            payload = (
                struct.pack(">HHH", 60, 40, 0)
                + bytes((len(ex),))
                + ex
                + bytes((len(rk),))
                + rk
                + (b"\x01" if mandatory else b"\x00")
            )
            cached = self.methods[exchange, key, mandatory] = _frame(
                spec.FRAME_METHOD, self.number, payload
            )
        return cached

    def publish(
        self, exchange: str, key: str, body: bytes, properties: bytes, *, mandatory: bool
    ) -> None:
        """Publish ``body`` with the encoded property list ``properties``."""
        if not self.channel.is_open:
            raise exceptions.ChannelWrongStateError("Channel is closed.")
        n, length, size = self.number, len(body), self.connection._body_max_length
        method = self.methods.get((exchange, key, mandatory)) or self.method(
            exchange, key, mandatory
        )
        header = _HEADER_FRAME.pack(spec.FRAME_HEADER, n, 12 + len(properties), 60, 0, length)
        if 0 < length <= size:  # the common case: the three frames as one piece of bytes
            body_frame = _FRAME.pack(spec.FRAME_BODY, n, length)
            data = b"".join((method, header, properties, _END, body_frame, body, _END))
            self.connection._output_marshaled_frames([data])
            return
        frames = [method, header + properties + _END]
        for start in range(0, length, size):
            frames.append(_frame(spec.FRAME_BODY, n, body[start : start + size]))
        self.connection._output_marshaled_frames(frames)
