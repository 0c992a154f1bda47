"""A connection's input read from its bytes, below pika: one reader for the router and the
parking lot.

pika reads the socket into ``Connection._frame_buffer`` and, in ``_on_data_available``,
calls ``self._read_frame()`` (which calls ``pika.frame.decode_frame``) until the buffer
holds no whole frame. ``decode_frame`` decodes a content header with
``BasicProperties.decode``, header table and all; a value that codec cannot handle raises
inside the connection and drops it. ``install`` replaces both on one connection object (the
router's, the parking lot's; nobody else's): ``Inbound`` reads each read's frames by offset,
assembles deliveries to registered consumers and publisher confirms itself, and hands every
other frame to pika decoded by ``read_frame``: a basic content header becomes a
``pika.frame.Header`` whose properties are ``wire.Properties`` (raw fields, never the
decoded table), or ``Content`` (the property list as one piece of bytes, for replay) on a
connection installed with ``content``; basic.deliver and body frames are built directly as
the objects ``decode_frame`` returns; every other frame still goes through ``decode_frame``.
pika's channel hands those properties to the consumer and return callbacks unchanged, and
publishes any object with ``INDEX`` and ``encode()`` (``frame.Header.marshal``), so a
republish is built from bytes too.

The way out is bytes too: ``Publisher`` writes a republish's three frames (basic.publish,
content header, body) itself and hands them to the connection's frame output, the call
pika's own ``_send_message`` ends with. pika's per-publish work (a ``Basic.Publish``
object, three frame objects, their marshalling) was a fifth of the router's CPU; the
method frame is the same for every publish to one queue, so it is built once.

Relied on (pika 1.3 to 1.4; ``pyproject.toml`` pins ``pika>=1.3,<1.5`` and
``tests/unit/test_rawframes.py`` fails if any of it changes): ``Connection._read_frame``
with no arguments returning ``(bytes consumed, frame or None)`` over ``_frame_buffer``;
``_on_data_available(data)`` called with each read; ``frame.Header(channel_number,
body_size, properties)``; ``Connection._process_frame(frame)`` called for each frame read;
``Connection._send_message`` ending in ``_output_marshaled_frames(list of frames)`` with
bodies cut at ``_body_max_length``; frame layout type octet, channel (2), size (4),
payload, 0xCE.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pika import exceptions, frame, spec

from dlq_router.backends.rabbitmq import wire
from dlq_router.backends.rabbitmq.wire import BASIC_CLASS, Properties

_DELIVER = b"\x00\x3c\x00\x3c"  # basic (60), deliver (60)
_ACK = b"\x00\x3c\x00\x50"  # basic.ack (80)
_NACK = b"\x00\x3c\x00\x78"  # basic.nack (120)
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size


def read_frame(buffer: bytes, content: bool = False) -> tuple[int, Any]:
    """``pika.frame.decode_frame``, except that a basic content header is not decoded
    (``wire.Properties``; with ``content``, ``Content`` when it is plainly laid out) and
    basic.deliver and body frames are built directly (pika's generic decoder was a tenth of
    replay's CPU)."""
    size = len(buffer)
    if size >= 8:
        kind = buffer[0]
        if (
            kind == spec.FRAME_BODY
            or kind == spec.FRAME_HEADER
            or (kind == spec.FRAME_METHOD and buffer[7:11] == _DELIVER)
        ):
            end = 8 + int.from_bytes(buffer[3:7], "big")  # header 7 + payload + end octet
            if end > size:
                return 0, None  # not all of it yet
            if buffer[end - 1] != spec.FRAME_END:
                raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
            channel = int.from_bytes(buffer[1:3], "big")
            if kind == spec.FRAME_BODY:
                return end, frame.Body(channel, buffer[7 : end - 1])
            if kind == spec.FRAME_METHOD:
                return end, frame.Method(channel, _deliver(buffer, 11, end - 1))
            if end >= 19 and int.from_bytes(buffer[7:9], "big") == BASIC_CLASS:
                body_size = _U64.unpack_from(buffer, 11)[0]
                return end, frame.Header(
                    channel, body_size, header_props(buffer, 19, end - 1, content)
                )
    decoded: tuple[int, Any] = frame.decode_frame(buffer)
    return decoded


def header_props(buffer: bytes, at: int, stop: int, content: bool) -> Any:
    """The property list ``buffer[at:stop]``: ``Content`` if asked for and plainly laid out,
    else ``wire.Properties``."""
    if content:
        found = _content_props(buffer, at, stop)
        if found is not None:
            return found
    return Properties.parse_or_keep(buffer, at, stop)


def _short(buf: bytes, pos: int) -> tuple[str | bytes, int]:
    """A shortstr as pika decodes it: text if it is UTF-8, else the bytes."""
    stop = pos + 1 + buf[pos]
    data = buf[pos + 1 : stop]
    try:
        return data.decode(), stop
    except UnicodeDecodeError:
        return data, stop


def _deliver(buf: bytes, pos: int, end: int) -> spec.Basic.Deliver:
    """consumer tag, delivery tag (64 bits), redelivered bit, exchange, routing key."""
    try:
        consumer_tag, pos = _short(buf, pos)
        delivery_tag = int.from_bytes(buf[pos : pos + 8], "big")
        redelivered = bool(buf[pos + 8] & 1)
        exchange, pos = _short(buf, pos + 9)
        routing_key, pos = _short(buf, pos)
    except IndexError:
        pos = end + 1
    if pos > end:
        raise exceptions.InvalidFrameError("basic.deliver runs past its frame")
    return spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)


_HEADERS_BIT = wire.FIELDS[wire.HEADERS][1]
_BEFORE_HEADERS = tuple(bit for _name, bit, _kind in wire.FIELDS[: wire.HEADERS])  # shortstrs


class Content:
    """A basic content header's property list as it came (``data``), read no further than
    its header table: where the table's length field is or would go (``at``) and where the
    table ends (``end``; -1 when there is none). Replay republishes from it and replaces
    only the table (``with_table``); ``properties()`` splits it into ``wire.Properties``
    for whoever needs the fields."""

    __slots__ = ("at", "data", "end")

    def __init__(self, data: bytes, at: int, end: int) -> None:
        self.data, self.at, self.end = data, at, end

    @property
    def table(self) -> bytes | None:
        return self.data[self.at + 4 : self.end] if self.end >= 0 else None

    def properties(self) -> Properties:
        return Properties.parse_or_keep(self.data, 0, len(self.data))

    def with_table(self, table: bytes) -> bytes:
        """The property list with ``table`` as its headers, every other byte as it came."""
        data, at = self.data, self.at
        if self.end >= 0:
            return b"".join((data[:at], _U32.pack(len(table)), table, data[self.end :]))
        flags = ((data[0] << 8) | data[1]) | _HEADERS_BIT
        return b"".join(
            (flags.to_bytes(2, "big"), data[2:at], _U32.pack(len(table)), table, data[at:])
        )


def _content_props(buffer: bytes, at: int, stop: int) -> Content | None:
    """The property list ``buffer[at:stop]`` as ``Content``; None if it is not plainly laid
    out (flag continuation, fields past the frame): it is then split as ``wire.Properties``."""
    if stop - at < 2:
        return None
    flags = (buffer[at] << 8) | buffer[at + 1]
    if flags & 1:
        return None
    pos = at + 2
    for bit in _BEFORE_HEADERS:
        if flags & bit:
            if pos >= stop:
                return None
            pos += 1 + buffer[pos]
    table_end = -1
    if flags & _HEADERS_BIT:
        if pos + 4 > stop:
            return None
        table_end = pos + 4 + _U32.unpack_from(buffer, pos)[0]
        if table_end > stop:
            return None
        table_end -= at
    if pos > stop:
        return None
    return Content(buffer[at:stop], pos - at, table_end)


def install(connection: Any, *, content: bool = False) -> Inbound:
    """Make ``connection`` (an asynchronous pika connection, or a blocking one's ``_impl``)
    read its input with ``Inbound`` and its frames with ``read_frame`` (``content``: content
    headers that reach pika arrive as ``Content``). Installing again replaces the reader."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer, content)

    connection._read_frame = _read_frame
    inbound = Inbound(connection, content=content)
    connection._on_data_available = inbound
    return inbound


READ_SIZE = 128 * 1024


def read_more(connection: Any) -> None:
    """Read up to ``READ_SIZE`` bytes per ``recv()`` (pika reads 4,096: a dozen calls and
    as many passes through the reader for what one read of a busy socket returns; ``Inbound``
    reads frames by offset, so a larger read costs no extra copying). pika still stops
    reading after about 100 KB per readable event, so other work is not starved. Needs the
    connection's transport (call it once the connection is open); a pika without the
    attribute keeps its own size."""
    transport = getattr(connection, "_transport", None)
    if transport is not None and hasattr(transport, "_MAX_RECV_BYTES"):
        transport._MAX_RECV_BYTES = READ_SIZE


# (delivery tag, consumer tag, properties, body): properties are ``wire.Properties``, or
# ``Content`` for a consumer registered with ``content=True``.
OnDelivery = Callable[[int, str, Any, bytes], None]
# (ack, delivery tag, multiple)
OnConfirm = Callable[[bool, int, bool], None]
# A registered consumer: callback, consumer tag, channel (-1: ``Inbound.channel``), content.
_Consumer = tuple[OnDelivery, str, int, bool]
# The delivery being assembled: delivery tag, consumer tag, callback, content.
_Pending = tuple[int, str, OnDelivery, bool]


class Inbound:
    """A connection's ``_on_data_available``: its input without pika's frame objects.

    pika turns every frame into objects (``decode_frame``: a ``frame.Method`` around a
    ``spec.Basic.Deliver``, a ``frame.Header``, a ``frame.Body``), cuts each frame off the
    front of its buffer (a copy of the rest per frame), and routes each through its callback
    manager to the channel's content assembler; for a dead letter (three frames) and a
    confirm (one more, per lane run) that was about a third of the router's CPU, and most
    of a replay's reading. Here one pass over the bytes read, by offset, handles:

    - ``basic.deliver`` to a registered consumer tag on its channel (the router's
      consumers on ``channel``; a replay snapshot's on its own), its content header and its
      body frames: ``callback(delivery tag, consumer tag, properties, body)``, with the
      properties as ``wire.Properties`` or, for a consumer registered with ``content``, as
      ``Content``. A frame of another channel amid the content goes to pika, as AMQP allows
      interleaving; a frame on the channel that is not content ends the delivery (pika logs
      and drops such content too) and goes to pika;
    - ``basic.ack``/``basic.nack`` (publisher confirms) on every channel registered in
      ``confirms``: ``confirms[channel](ack, tag, multiple)``.

    Every other frame (RPC replies, heartbeats, ``basic.return`` and its content, deliveries
    to a tag that is not registered, such as one just cancelled, which pika rejects back to
    the queue) is decoded by ``read_frame`` and processed by pika, in the order it came; once
    that closes the connection, the rest of the read is dropped, as pika drops it. A frame's
    type, channel and size are read as pika reads them, and a frame without its end octet
    raises ``InvalidFrameError``, as in pika. ``connection._frame_buffer`` keeps what is left
    of an incomplete frame, as pika's own loop does, so either reader can take over.
    """

    __slots__ = (
        "after",
        "channel",
        "confirms",
        "connection",
        "consumers",
        "content",
        "parts",
        "pchannel",
        "pending",
        "process",
        "props",
        "seen",
        "size",
    )

    def __init__(self, connection: Any, *, content: bool = False) -> None:
        self.connection = connection
        self.process = connection._process_frame  # pika's, for every other frame
        self.content = content  # content headers that go to pika: as ``Content``
        self.channel = -1  # the channel of consumers registered without one (the router's)
        self.consumers: dict[bytes, _Consumer] = {}
        self.confirms: dict[int, OnConfirm] = {}  # channel number -> its confirm callback
        self.after: Callable[[], None] | None = None  # called after each read's frames
        # The delivery being assembled (a registered consumer's) and its channel.
        self.pending: _Pending | None = None
        self.pchannel = -1
        self.props: Any = None
        self.size = 0
        self.seen = 0
        self.parts: list[bytes] = []

    def register(
        self, consumer_tag: str, callback: OnDelivery, *, channel: int = -1, content: bool = False
    ) -> None:
        """Deliveries to ``consumer_tag`` on ``channel`` (default: ``self.channel``) go to
        ``callback``, with the properties as ``Content`` if ``content``."""
        self.consumers[consumer_tag.encode()] = (callback, consumer_tag, channel, content)

    def unregister(self, consumer_tag: str) -> None:
        """Later deliveries to it go to pika (which rejects them once it is cancelled)."""
        self.consumers.pop(consumer_tag.encode(), None)

    def __call__(self, data: bytes) -> None:
        conn = self.connection
        buf = conn._frame_buffer + data if conn._frame_buffer else data
        length = len(buf)
        pos = 0
        head, u64 = _HEAD.unpack_from, _U64.unpack_from
        ours, confirms, content = self.channel, self.confirms, self.content
        try:
            while length - pos >= 8:
                kind, channel, size = head(buf, pos)
                if kind > 3:  # heartbeat, or the protocol header of a refused handshake
                    consumed, value = read_frame(buf[pos:], content)
                    if value is None:
                        break
                    pos += consumed
                    self.process(value)
                    if conn.is_closed:  # pika empties its buffer then: nothing more to read
                        buf, length = buf[:pos], pos
                        break
                    continue
                end = pos + 8 + size
                if end > length:
                    break
                if buf[end - 1] != 0xCE:
                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                start = pos
                pos = end
                pending = self.pending
                if pending is not None and channel == self.pchannel:
                    if kind == 3 and self.props is not None:  # body
                        self.parts.append(buf[start + 7 : end - 1])
                        self.seen += size
                        if self.seen >= self.size:
                            self._finish(pending)
                        continue
                    if kind == 2 and self.props is None:  # header
                        self.size = u64(buf, start + 11)[0]
                        self.props = (
                            header_props(buf, start + 19, end - 1, True)
                            if pending[3]
                            else Properties.parse_or_keep(buf, start + 19, end - 1)
                        )
                        if self.size == 0:
                            self._finish(pending)
                        continue
                    self._reset()  # not how content comes: pika's, as it came
                elif kind == 1 and buf[start + 7 : start + 11] == _DELIVER:
                    at = start + 11
                    tag_end = at + 1 + buf[at]
                    found = self.consumers.get(buf[at + 1 : tag_end])
                    if found is not None and (found[2] if found[2] >= 0 else ours) == channel:
                        if tag_end + 9 > end - 1:
                            raise exceptions.InvalidFrameError("basic.deliver runs past its frame")
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
                                    props = (
                                        header_props(buf, header + 19, body - 1, True)
                                        if found[3]
                                        else Properties.parse_or_keep(buf, header + 19, body - 1)
                                    )
                                    pos = stop
                                    conn.frames_received += 3
                                    found[0](tag, found[1], props, buf[body + 7 : stop - 1])
                                    continue
                        if pending is None:  # (one at a time: else this one is pika's)
                            self.pending = (tag, found[1], found[0], found[3])
                            self.pchannel = channel
                            conn.frames_received += 1
                            continue
                if kind == 1 and channel in confirms:
                    method = buf[start + 7 : start + 11]
                    if method in (_ACK, _NACK):
                        conn.frames_received += 1
                        tag, bits = u64(buf, start + 11)[0], buf[start + 19]
                        confirms[channel](method == _ACK, tag, bool(bits & 1))
                        continue
                _consumed, value = read_frame(buf[start:end], content)
                self.process(value)
                if conn.is_closed:  # pika empties its buffer then: nothing more to read
                    buf, length = buf[:pos], pos
                    break
        finally:
            conn._frame_buffer = buf[pos:] if pos < length else b""
            conn.bytes_received += pos
            if self.after is not None:
                self.after()

    def _reset(self) -> None:
        self.pending = self.props = None
        self.parts = []
        self.size = self.seen = 0

    def _finish(self, pending: _Pending) -> None:
        props, parts = self.props, self.parts
        self.connection.frames_received += 1 + len(parts)
        self._reset()
        assert props is not None
        tag, consumer, callback, _content = pending
        callback(tag, consumer, props, parts[0] if len(parts) == 1 else b"".join(parts))


_HEADER_FRAME = struct.Struct(">BHIHHQ")  # frame head, then class, weight, body size
_END = b"\xce"


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _HEAD.pack(kind, channel, len(payload)) + payload + _END


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
            body_frame = _HEAD.pack(spec.FRAME_BODY, n, length)
            data = b"".join((method, header, properties, _END, body_frame, body, _END))
            self.connection._output_marshaled_frames([data])
            return
        frames = [method, header + properties + _END]
        for start in range(0, length, size):
            frames.append(_frame(spec.FRAME_BODY, n, body[start : start + size]))
        self.connection._output_marshaled_frames(frames)
