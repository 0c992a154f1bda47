"""The parking lot's frame reader: basic.deliver and body frames without pika's decode_frame.

A snapshot (listing, replay) reads every message of a parking queue, three frames each.
``rawframes.read_frame`` keeps content headers as bytes; here the other two are built
directly as the objects pika's ``frame.decode_frame`` returns for them (a ``frame.Method``
holding a ``spec.Basic.Deliver``, a ``frame.Body``): pika's generic decoder was a tenth of
replay's CPU. Every other frame goes to ``rawframes.read_frame`` (and so to pika).
``install`` goes after ``rawframes.install`` on the same connection; it relies on what
that relies on (``Connection._read_frame``, ``_frame_buffer``; the frame layout).

With ``content=True`` (replay's own connection) a basic content header is not even split
into fields: its properties arrive as ``Content``, the property list as it came and where
its header table sits, and a republish replaces just the table (``Content.with_table``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pika import exceptions, frame, spec

from dlq_router.backends.rabbitmq import rawframes, wire

_DELIVER = (spec.Basic.Deliver.INDEX).to_bytes(4, "big")  # class basic (60), method 60


def read_frame(buffer: bytes, content: bool = False) -> tuple[int, Any]:
    """``rawframes.read_frame``, with basic.deliver and body frames read here (and, with
    ``content``, basic content headers as ``Content``)."""
    return read_at(buffer, 0, content)


def read_at(buffer: bytes, pos: int, content: bool = False) -> tuple[int, Any]:
    """``read_frame`` of the frame starting at ``pos``: (its size, the frame) or (0, None)."""
    if len(buffer) - pos >= 8:
        kind = buffer[pos]
        if kind == spec.FRAME_BODY or (
            kind == spec.FRAME_METHOD and buffer[pos + 7 : pos + 11] == _DELIVER
        ):
            end = pos + 8 + int.from_bytes(buffer[pos + 3 : pos + 7], "big")
            if end > len(buffer):
                return 0, None  # not all of it yet
            if buffer[end - 1] != spec.FRAME_END:
                raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
            channel = int.from_bytes(buffer[pos + 1 : pos + 3], "big")
            if kind == spec.FRAME_BODY:
                return end - pos, frame.Body(channel, buffer[pos + 7 : end - 1])
            return end - pos, frame.Method(channel, _deliver(buffer, pos + 11, end - 1))
        if content and kind == spec.FRAME_HEADER:
            found = _content(buffer, pos)
            if found is not None:
                return found
    return rawframes.read_frame(buffer[pos:] if pos else buffer)


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
_U32 = struct.Struct(">I")


class Content:
    """A basic content header's property list as it came (``data``), read no further than
    its header table: where the table's length field is or would go (``at``) and where the
    table ends (``end``; -1 when there is none). ``properties()`` splits it like
    ``rawframes`` does, for whoever needs the fields."""

    __slots__ = ("at", "data", "end")

    def __init__(self, data: bytes, at: int, end: int) -> None:
        self.data, self.at, self.end = data, at, end

    @property
    def table(self) -> bytes | None:
        return self.data[self.at + 4 : self.end] if self.end >= 0 else None

    def properties(self) -> wire.Properties:
        return wire.Properties.parse_or_keep(self.data, 0, len(self.data))

    def with_table(self, table: bytes) -> bytes:
        """The property list with ``table`` as its headers, every other byte as it came."""
        data, at = self.data, self.at
        if self.end >= 0:
            return b"".join((data[:at], _U32.pack(len(table)), table, data[self.end :]))
        flags = ((data[0] << 8) | data[1]) | _HEADERS_BIT
        return b"".join(
            (flags.to_bytes(2, "big"), data[2:at], _U32.pack(len(table)), table, data[at:])
        )


def _content(buffer: bytes, start: int) -> tuple[int, frame.Header] | None:
    """The basic content header frame at ``start`` as ``Content``; None when it is not one,
    not all here, or not plainly laid out (flag continuation, fields past the frame):
    ``rawframes`` then reads it (or waits for the rest)."""
    if len(buffer) - start < 22:
        return None
    _kind, channel, length, klass, _weight, size = _CONTENT_HEAD.unpack_from(buffer, start)
    end = start + 8 + length
    if end > len(buffer) or buffer[end - 1] != spec.FRAME_END or klass != wire.BASIC_CLASS:
        return None
    props = _content_props(buffer, start + 19, end - 1)
    return None if props is None else (end - start, frame.Header(channel, size, props))


def _content_props(buffer: bytes, at: int, stop: int) -> Content | None:
    """The property list ``buffer[at:stop]`` as ``Content``; None if it is not plainly
    laid out."""
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


_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # ... class, weight, body size
_U64 = struct.Struct(">Q")


def install(connection: Any, *, content: bool = False) -> None:
    """Read ``connection``'s frames with ``read_frame`` (after ``rawframes.install``).

    With ``content``, also take over pika's ``_on_data_available`` (``DataReader``) and
    read the socket in larger pieces."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer, content)

    connection._read_frame = _read_frame
    if content:
        connection._on_data_available = DataReader(connection)
        transport = getattr(connection, "_transport", None)
        if transport is not None and hasattr(transport, "_MAX_RECV_BYTES"):
            transport._MAX_RECV_BYTES = RECV_BYTES


# pika reads 4 KiB per recv() (ten small deliveries): one pass through its ioloop,
# transport and protocol layers each. With frames read by offset (``DataReader``) a
# larger read costs no extra copying.
RECV_BYTES = 64 * 1024


Sink = Callable[[int, Any, bytes], None]


class _Delivery:
    """A basic.deliver read directly, waiting for its content header and body frames."""

    __slots__ = ("channel", "parts", "props", "seen", "sink", "size", "tag")

    def __init__(self, sink: Sink, channel: int, tag: int) -> None:
        self.sink, self.channel, self.tag = sink, channel, tag
        self.props: Any = None
        self.size = self.seen = 0
        self.parts: list[bytes] = []


class DataReader:
    """pika's ``Connection._on_data_available`` reading frames by offset.

    pika appends what the socket gave to ``_frame_buffer`` and, after each frame, cuts the
    frame off the front (a copy of the rest of the buffer per frame: with larger reads
    that copying grows with the read size). Here the frames of one read are taken at
    offsets and only the incomplete tail is kept; each still goes to the connection's
    ``_process_frame``, in order, with ``bytes_received`` counted as pika counts it.

    Deliveries on a channel given a sink (``direct``: a replay snapshot's channel, whose
    one consumer never cancels) skip pika's frame objects and channel dispatch: the
    basic.deliver's tag, the content header (``Content``) and the body go to
    ``sink(tag, props, body)``. A frame of another channel in between goes to pika, as
    AMQP allows; a frame that does not belong in the delivery drops it (pika logs and
    drops such content too) and goes to pika.
    """

    __slots__ = ("connection", "delivery", "sinks")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.sinks: dict[int, Sink] = {}
        self.delivery: _Delivery | None = None

    def direct(self, channel: int, sink: Sink | None) -> None:
        """Send deliveries on ``channel`` to ``sink`` (None: to pika again)."""
        if sink is None:
            self.sinks.pop(channel, None)
            if self.delivery is not None and self.delivery.channel == channel:
                self.delivery = None
        else:
            self.sinks[channel] = sink

    def __call__(self, data_in: bytes) -> None:
        connection = self.connection
        buffer = connection._frame_buffer + data_in if connection._frame_buffer else data_in
        pos, size = 0, len(buffer)
        sinks, head = self.sinks, _FRAME_HEAD.unpack_from
        try:
            while size - pos >= 8:
                kind, channel, length = head(buffer, pos)
                end = pos + 8 + length
                if end > size:
                    break  # not all of it yet
                if buffer[end - 1] != spec.FRAME_END:
                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                if sinks and self._direct(buffer, pos, end, kind, channel):
                    connection.bytes_received += end - pos
                    connection.frames_received += 1
                    pos = end
                    continue
                consumed, value = read_at(buffer, pos, True)
                pos += consumed
                connection.bytes_received += consumed
                connection._process_frame(value)
                if connection.is_closed:  # pika resets its buffer then: nothing more to read
                    pos = size
                    break
        finally:
            connection._frame_buffer = buffer[pos:] if pos else buffer

    def _direct(self, buffer: bytes, pos: int, end: int, kind: int, channel: int) -> bool:
        """Take the whole frame ``buffer[pos:end]`` if it belongs to a direct delivery."""
        delivery = self.delivery
        if delivery is None:
            if kind != spec.FRAME_METHOD or buffer[pos + 7 : pos + 11] != _DELIVER:
                return False
            sink = self.sinks.get(channel)
            if sink is None:
                return False
            at = pos + 12 + buffer[pos + 11]  # past the consumer tag
            if at + 9 > end - 1:
                raise exceptions.InvalidFrameError("basic.deliver runs past its frame")
            self.delivery = _Delivery(sink, channel, _U64.unpack_from(buffer, at)[0])
            return True
        if channel != delivery.channel:
            return False  # another channel's frame: AMQP allows interleaving
        if kind == spec.FRAME_HEADER and delivery.props is None:
            props = _content_props(buffer, pos + 19, end - 1) if end - pos >= 22 else None
            if props is None:  # not plainly laid out: split as rawframes splits it
                props = rawframes.read_frame(buffer[pos:end])[1].properties
            delivery.props = props
            delivery.size = _U64.unpack_from(buffer, pos + 11)[0]
            if delivery.size == 0:
                self._finish(delivery)
            return True
        if kind == spec.FRAME_BODY and delivery.props is not None:
            delivery.parts.append(buffer[pos + 7 : end - 1])
            delivery.seen += end - pos - 8
            if delivery.seen >= delivery.size:
                self._finish(delivery)
            return True
        self.delivery = None  # not content: the delivery is dropped, the frame goes to pika
        return False

    def _finish(self, delivery: _Delivery) -> None:
        self.delivery = None
        parts = delivery.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        delivery.sink(delivery.tag, delivery.props, body)
