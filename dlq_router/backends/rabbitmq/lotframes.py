"""The parking lot's frame reader: basic.deliver and body frames without pika's decode_frame.

A snapshot (listing, replay) reads every message of a parking queue, three frames each.
``rawframes.read_frame`` keeps content headers as bytes; here the other two are built
directly as the objects pika's ``frame.decode_frame`` returns for them (a ``frame.Method``
holding a ``spec.Basic.Deliver``, a ``frame.Body``): pika's generic decoder was a tenth of
replay's CPU. Every other frame goes to ``rawframes.read_frame`` (and so to pika).
``install`` goes after ``rawframes.install`` on the same connection; it relies on what
that relies on (``Connection._read_frame``, ``_frame_buffer``; the frame layout).
"""

from __future__ import annotations

from typing import Any

from pika import exceptions, frame, spec

from dlq_router.backends.rabbitmq import rawframes

_DELIVER = (spec.Basic.Deliver.INDEX).to_bytes(4, "big")  # class basic (60), method 60


def read_frame(buffer: bytes) -> tuple[int, Any]:
    """``rawframes.read_frame``, with basic.deliver and body frames read here."""
    if len(buffer) >= 8:
        kind = buffer[0]
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


def install(connection: Any) -> None:
    """Read ``connection``'s frames with ``read_frame`` (after ``rawframes.install``)."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer)

    connection._read_frame = _read_frame
