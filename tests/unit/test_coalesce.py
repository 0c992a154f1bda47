"""The frame coalescer: frames of one ioloop turn leave in one write, in order, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlq_router.backends.rabbitmq.coalesce import Coalescer


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[Callable[[], None]] = []

    def call_later(self, _delay: float, callback: Callable[[], None]) -> None:
        self.timers.append(callback)

    def turn(self) -> None:
        timers, self.timers = self.timers, []
        for callback in timers:
            callback()


class FakeConnection:
    """The two pika hooks the coalescer uses, and its counters."""

    def __init__(self) -> None:
        self.ioloop = FakeLoop()
        self.written: list[bytes] = []
        self.frames_sent = self.bytes_sent = 0
        self._transport: object | None = object()  # pika sets it to None when the stream goes

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)

    def _output_marshaled_frames(self, frames: Any) -> None:  # replaced by install()
        raise AssertionError("not coalesced")


def test_frames_of_one_turn_leave_in_one_write_in_order() -> None:
    conn = FakeConnection()
    Coalescer.install(conn)
    Coalescer.install(conn)  # idempotent: still one buffer, one timer per turn
    conn._output_marshaled_frames([b"m1", b"h1", b"b1"])
    conn._output_marshaled_frames([b"ack"])
    assert conn.written == [] and len(conn.ioloop.timers) == 1
    conn.ioloop.turn()
    assert conn.written == [b"m1h1b1ack"]
    assert (conn.frames_sent, conn.bytes_sent) == (4, 9)
    conn.ioloop.turn()
    assert conn.written == [b"m1h1b1ack"]  # nothing new, nothing written
    conn._output_marshaled_frames([b"next"])
    conn.ioloop.turn()
    assert conn.written == [b"m1h1b1ack", b"next"]


def test_a_connection_without_the_hooks_is_left_alone() -> None:
    class Other:
        pass

    other = Other()
    Coalescer.install(other)
    assert not hasattr(other, "_output_marshaled_frames")


def test_frames_held_when_the_stream_goes_are_dropped_not_raised() -> None:
    """Ctrl-C or a lost socket can end the stream before the turn's timer fires."""
    conn = FakeConnection()
    Coalescer.install(conn)
    conn._output_marshaled_frames([b"close"])
    conn._transport = None
    conn.ioloop.turn()  # must not raise AttributeError from a missing transport
    assert conn.written == [] and conn.bytes_sent == 0
