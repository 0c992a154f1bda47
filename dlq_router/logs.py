"""Logging: readable lines by default, one JSON object per line with --log-format json.

One handler on the root logger serves dlq-router's records and those of pika, redis-py and
any other library, so every record passes the same redaction (``urls.redact``: URLs
without passwords, known secrets masked) and the same formatter.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, Literal

from dlq_router.urls import SECRETS, redact

LogFormat = Literal["text", "json"]

# The clients' own records are shown (redacted, formatted like ours) at --log-level debug
# only: every failure they log is one we report ourselves, in one line.
_LIBRARIES = ("pika", "redis", "kombu", "urllib3")


class Redact(logging.Filter):
    """Rewrite a record in place so that nothing after it can print a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: _redact_value(v) for k, v in fields.items()}
        return True


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


def configure(
    fmt: LogFormat = "text",
    level: str = "INFO",
    secrets: Iterable[str] = (),
    *,
    libraries: int = logging.CRITICAL,
) -> None:
    """Send every logger's records through one redacting handler on stderr."""
    SECRETS.add(list(secrets))
    handler = _Stderr()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    handler.addFilter(Redact())
    root = logging.getLogger()
    # First, so the record is already redacted when any other handler sees it.
    root.handlers[:] = [handler, *(h for h in root.handlers if not isinstance(h, _Stderr))]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("dlq_router")
    ours.handlers[:] = []
    ours.setLevel(level.upper())
    ours.propagate = True
    debug = level.upper() == "DEBUG"
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else libraries)


def configure_default() -> None:
    """For one-shot commands (``run`` then sets its own): our warnings, redacted, as text."""
    configure("text", "WARNING")
