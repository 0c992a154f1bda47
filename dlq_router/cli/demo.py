"""``dlq-router demo``: a short, self-cleaning tour of retries and parking."""

from __future__ import annotations


def demo() -> None:
    """Placeholder replaced below."""
