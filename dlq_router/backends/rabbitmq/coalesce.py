"""Send the frames one ioloop turn produced in one socket write (router and replay).

pika queues every frame as its own buffer and sends each with its own ``send()``: a publish
is three frames (method, header, body), so for small messages those syscalls were a third
of the CPU time. The bytes on the wire and their order are unchanged: frames are only held
until the ioloop has handled what it read (a zero-delay timer runs before the next poll;
BlockingConnection's waits run the same ioloop). Installed only where pika has the hook
(pika 1.x).
"""

from __future__ import annotations

from typing import Any


class Coalescer:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.emit = connection._adapter_emit_data
        self.buffer: list[bytes] = []

    @classmethod
    def install(cls, connection: Any) -> None:
        """Coalesce ``connection``'s output (an asynchronous pika connection: a
        ``SelectConnection``, or a ``BlockingConnection``'s ``_impl``). Idempotent."""
        output = getattr(connection, "_output_marshaled_frames", None)
        if output is None or not hasattr(connection, "_adapter_emit_data"):
            return
        if isinstance(getattr(output, "__self__", None), cls):
            return
        connection._output_marshaled_frames = cls(connection).output

    def output(self, frames: list[bytes]) -> None:
        if not self.buffer:
            self.connection.ioloop.call_later(0, self.flush)
        self.buffer += frames
        self.connection.frames_sent += len(frames)

    def flush(self) -> None:
        data = b"".join(self.buffer)
        self.buffer.clear()
        # The timer may fire after pika dropped the stream (a lost socket, or Ctrl-C while
        # it was closing): its transport is gone. Drop the frames, as pika drops its own
        # unsent output then; only a broker confirm ever counts a publish as sent.
        if data and getattr(self.connection, "_transport", None) is not None:
            self.connection.bytes_sent += len(data)
            self.emit(data)
