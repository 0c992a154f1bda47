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
    end = start + 8 + int.from_bytes(buffer[start + 3 : start + 7], "big")
    if end > len(buffer) or buffer[end - 1] != spec.FRAME_END:
        return None
    if int.from_bytes(buffer[start + 7 : start + 9], "big") != wire.BASIC_CLASS:
        return None
    props_at = start + 19  # after type, channel, size, class, weight, body size
    flags = (buffer[props_at] << 8) | buffer[props_at + 1]
    if flags & 1:
        return None
    pos, stop = props_at + 2, end - 1
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
        table_end -= props_at
    if pos > stop:
        return None
    props = Content(buffer[props_at:stop], pos - props_at, table_end)
    channel = int.from_bytes(buffer[start + 1 : start + 3], "big")
    size = int.from_bytes(buffer[start + 11 : props_at], "big")
    return end - start, frame.Header(channel, size, props)


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


class DataReader:
    """pika's ``Connection._on_data_available`` reading frames by offset.

    pika appends what the socket gave to ``_frame_buffer`` and, after each frame, cuts the
    frame off the front (a copy of the rest of the buffer per frame: with larger reads
    that copying grows with the read size). Here the frames of one read are taken at
    offsets and only the incomplete tail is kept; each still goes to the connection's
    ``_process_frame``, in order, with ``bytes_received`` counted as pika counts it.
    """

    __slots__ = ("connection",)

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def __call__(self, data_in: bytes) -> None:
        connection = self.connection
        buffer = connection._frame_buffer + data_in if connection._frame_buffer else data_in
        pos, size = 0, len(buffer)
        try:
            while pos < size:
                consumed, value = read_at(buffer, pos, True)
                if value is None:
                    break
                pos += consumed
                connection.bytes_received += consumed
                connection._process_frame(value)
                if connection.is_closed:  # pika resets its buffer then: nothing more to read
                    pos = size
                    break
        finally:
            connection._frame_buffer = buffer[pos:] if pos else buffer
