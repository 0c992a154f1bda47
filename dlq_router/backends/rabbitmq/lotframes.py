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
    if len(buffer) >= 8:
        kind = buffer[0]
        if content and kind == spec.FRAME_HEADER:
            found = _content(buffer)
            if found is not None:
                return found
        if kind == spec.FRAME_BODY or (kind == spec.FRAME_METHOD and buffer[7:11] == _DELIVER):
            end = 8 + int.from_bytes(buffer[3:7], "big")  # header 7 + payload + end octet
            if end > len(buffer):
                return 0, None  # not all of it yet
            if buffer[end - 1] != spec.FRAME_END:
                raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
            channel = int.from_bytes(buffer[1:3], "big")
            if kind == spec.FRAME_BODY:
                return end, frame.Body(channel, buffer[7 : end - 1])
            return end, frame.Method(channel, _deliver(buffer, 11, end - 1))
    return rawframes.read_frame(buffer)


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


def _content(buffer: bytes) -> tuple[int, frame.Header] | None:
    """A basic content header frame as ``Content``; None when it is not one, not all here,
    or not plainly laid out (flag continuation, fields past the frame): ``rawframes`` then
    reads it (or waits for the rest)."""
    if len(buffer) < 22:
        return None
    end = 8 + int.from_bytes(buffer[3:7], "big")
    if end > len(buffer) or buffer[end - 1] != spec.FRAME_END:
        return None
    if int.from_bytes(buffer[7:9], "big") != wire.BASIC_CLASS:
        return None
    flags = (buffer[19] << 8) | buffer[20]
    if flags & 1:
        return None
    pos, stop = 21, end - 1
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
        table_end -= 19
    if pos > stop:
        return None
    props = Content(buffer[19:stop], pos - 19, table_end)
    channel = int.from_bytes(buffer[1:3], "big")
    return end, frame.Header(channel, int.from_bytes(buffer[11:19], "big"), props)


def install(connection: Any, *, content: bool = False) -> None:
    """Read ``connection``'s frames with ``read_frame`` (after ``rawframes.install``)."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer, content)

    connection._read_frame = _read_frame
