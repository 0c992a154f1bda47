"""What ``rawframes.Inbound`` uses of a pika connection, for the reader's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeConnection:
    """Frames the reader hands on to pika land in ``frames``, each as ``record`` makes it
    (by default the frame object itself)."""

    def __init__(self, record: Callable[[Any], Any] | None = None) -> None:
        self._frame_buffer = b""
        self.bytes_received = 0
        self.frames_received = 0
        self.is_closed = False
        self.record = record
        self.frames: list[Any] = []

    def _process_frame(self, value: Any) -> None:
        self.frames.append(value if self.record is None else self.record(value))
