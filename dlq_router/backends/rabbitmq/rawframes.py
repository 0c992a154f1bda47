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

Relied on (pika 1.3 to 1.4; ``pyproject.toml`` pins ``pika>=1.3,<1.5`` and
``tests/unit/test_rawframes.py`` fails if any of it changes): ``Connection._read_frame``
with no arguments returning ``(bytes consumed, frame or None)`` over ``_frame_buffer``;
``frame.Header(channel_number, body_size, properties)``; frame layout type octet, channel
(2), size (4), payload, 0xCE.
"""

from __future__ import annotations

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


def install(connection: Any) -> None:
    """Make ``connection`` (an asynchronous pika connection) deliver raw properties."""

    def _read_frame() -> tuple[int, Any]:
        return read_frame(connection._frame_buffer)

    connection._read_frame = _read_frame
