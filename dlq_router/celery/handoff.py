"""The failure hand-off: put a failed task's message in its route's dead-letter entry.

RabbitMQ: publish a copy (same body, same properties, the new headers) with ``mandatory``
and publisher confirms to the route's dead-letter exchange. Redis: ``LPUSH`` the kombu
envelope (same body string, same properties, the new headers) to the route's dead-letter
list; kombu's own ``reject(requeue=False)`` would just delete it. Either way the caller acks
the original only after this returned, so a crash in between duplicates and never loses.

Both use a connection of their own, made from the Celery app's broker URL and options,
never the consumer's: a publish must not interleave with the consumer's frames.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Protocol

from dlq_router import headers as h

CONFIRM_TIMEOUT_S = 10.0


class HandOff(Protocol):
    def send(self, message: Any, dead_letter_target: str, headers: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RabbitHandOff:
    """Publishes with confirms on a kombu/py-amqp connection of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None

    def _open(self) -> Any:
        if self._channel is None:
            conn = self.app.connection_for_write(transport_options={"confirm_publish": True})
            conn.ensure_connection(max_retries=3)
            self._conn = conn
            self._channel = conn.channel()
        return self._channel

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.release()

    def send(self, message: Any, dead_letter_target: str, headers: dict[str, Any]) -> None:
        import amqp  # py-amqp, kombu's AMQP client (installed with Celery)

        properties = dict(message.properties or {})
        properties.pop("application_headers", None)
        # A per-message TTL would expire the dead letter in the DLQ (it has no DLX): kept
        # as a header instead, as the router does.
        expiration = properties.pop("expiration", None)
        if expiration is not None:
            headers.setdefault(h.ORIGINAL_EXPIRATION, str(expiration))
        # RabbitMQ refuses a user_id that is not the publishing connection's user.
        user_id = properties.pop("user_id", None)
        if user_id is not None:
            headers.setdefault(h.ORIGINAL_USER_ID, str(user_id))
        body = message.body
        with self._lock:
            try:
                channel = self._open()
                channel.basic_publish(
                    amqp.Message(body, application_headers=headers, **properties),
                    exchange=dead_letter_target,
                    routing_key=str(message.delivery_info.get("routing_key") or ""),
                    mandatory=True,  # a missing DLQ comes back as basic.return: an error
                    confirm_timeout=CONFIRM_TIMEOUT_S,
                )
            except BaseException:
                # After a return, a nack or a lost connection the channel's state is
                # unknown: start over on the next hand-off.
                self.close()
                raise


class RedisHandOff:
    """LPUSHes the envelope with the client of a kombu Redis channel of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._conn: Any = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.release()

    def send(self, message: Any, dead_letter_target: str, headers: dict[str, Any]) -> None:
        envelope = envelope_of(message)
        envelope["headers"] = headers
        data = json.dumps(envelope)
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self.app.connection_for_write()
                self._conn.default_channel.client.lpush(dead_letter_target, data)
            except BaseException:
                self.close()
                raise


def envelope_of(message: Any) -> dict[str, Any]:
    """The kombu Redis envelope as it was read from the list (body string untouched).

    kombu keeps the parsed envelope as ``Message._raw``; ``serializable()`` (public, but it
    re-encodes the body) is the fallback for a kombu without it.
    """
    raw = getattr(message, "_raw", None)
    if isinstance(raw, dict) and "properties" in raw:
        return dict(raw)
    out: dict[str, Any] = message.serializable()
    return out
