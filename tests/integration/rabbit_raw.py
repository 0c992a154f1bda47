"""Raw AMQP header tables for hostile-input tests: publish what pika cannot encode, read
what pika cannot decode.

Publishing: pika's publish path only calls ``encode()`` on the properties it is given, so a
``wire.Properties`` built from bytes goes out exactly as built. Reading: the connection gets
the router's own hook (``rawframes.install``), so a consumer sees raw properties.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pika

from dlq_router.backends.rabbitmq import rawframes, wire

U32 = struct.Struct(">I")


def entry(name: bytes | str, value: bytes) -> bytes:
    key = name.encode() if isinstance(name, str) else name
    return bytes((len(key),)) + key + value


def longstr(data: bytes | str, kind: bytes = b"S") -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return kind + U32.pack(len(raw)) + raw


def nested_arrays(depth: int) -> bytes:
    """An array nested ``depth`` deep (each level: ``A`` + the length of what it holds)."""
    return b"".join(b"A" + U32.pack(5 * (depth - 1 - level)) for level in range(depth))


def shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes((len(data),)) + data


def properties(table: bytes, *, message_id: str, delivery_mode: int = 2) -> wire.Properties:
    fields: list[bytes | None] = [None] * len(wire.FIELDS)
    fields[3] = bytes((delivery_mode,))
    fields[wire.MESSAGE_ID] = shortstr(message_id)
    return wire.Properties(fields, table)


def frame_size(props: wire.Properties) -> int:
    return 20 + len(b"".join(props.encode()))


class RawClient:
    """A blocking connection that publishes and reads header tables as bytes."""

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        rawframes.install(self.conn._impl)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def publish(self, exchange: str, key: str, body: bytes, props: wire.Properties) -> None:
        self.ch.basic_publish(exchange, key, body, props)  # type: ignore[arg-type]

    def read_all(self, queue: str) -> list[tuple[wire.Properties, wire.Table, bytes, float]]:
        """Every message of ``queue`` (left in place): properties, table, body, read time."""
        ch = self.conn.channel()
        out: list[tuple[wire.Properties, wire.Table, bytes, float]] = []
        try:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                out.append((props, wire.Table(props.table), body, time.time()))
        finally:
            ch.close()
        return out

    def drain(self, queue: str) -> list[tuple[wire.Properties, wire.Table, bytes, float]]:
        """Take every message of ``queue`` (acked)."""
        out: list[tuple[wire.Properties, wire.Table, bytes, float]] = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, wire.Table(props.table), body, time.time()))

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def table_of(headers: dict[str, Any]) -> bytes:
    """An ordinary table, encoded by the router's own encoder (str/int values)."""
    return b"".join(wire.encode_entry(k, v) for k, v in headers.items())


# AMQP integer field types: (type octet, struct format, min, max).
AMQP_INTS = [
    (b"b", ">b", -(2**7), 2**7 - 1),
    (b"B", ">B", 0, 2**8 - 1),
    (b"s", ">h", -(2**15), 2**15 - 1),
    (b"u", ">H", 0, 2**16 - 1),
    (b"I", ">i", -(2**31), 2**31 - 1),
    (b"i", ">I", 0, 2**32 - 1),
    (b"l", ">q", -(2**63), 2**63 - 1),
    (b"T", ">Q", 0, 2**64 - 1),
]
