"""Prometheus metrics plus /healthz and /readyz, served from one small HTTP thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

# A loop pass takes milliseconds and waits at most about a second between passes, so ten
# seconds without one means a call is hanging.
STALL_AFTER_S = 10.0


class Metrics:
    """The router's counters. Each instance has its own registry (tests run many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.dead_letters = Counter(
            "dlq_router_dead_letters", "Dead letters received", ["route"], registry=r
        )
        self.retries = Counter(
            "dlq_router_retries_scheduled", "Retries scheduled", ["route", "tier"], registry=r
        )
        self.parked = Counter(
            "dlq_router_parked", "Messages parked", ["route", "reason"], registry=r
        )
        self.publish_failures = Counter(
            "dlq_router_publish_failures",
            "Publishes the broker refused or returned (message held, not lost)",
            ["route", "kind"],
            registry=r,
        )
        self.held = Gauge(
            "dlq_router_held",
            "Dead letters held unacked because their park (or retry) was not confirmed (RabbitMQ)",
            ["route"],
            registry=r,
        )
        self.held_too_long = Counter(
            "dlq_router_held_too_long",
            "Reports of a dead letter held past the limit because its park is refused "
            "(each report is also logged with the message id)",
            ["route"],
            registry=r,
        )
        self.reconnects = Counter("dlq_router_reconnects", "Broker reconnects", registry=r)
        self.moved = Counter(
            "dlq_router_retries_moved",
            "Due retries moved back to work (Redis)",
            ["route"],
            registry=r,
        )
        self.ready = Gauge("dlq_router_ready", "1 when connected and consuming", registry=r)
        self.paused = Gauge(
            "dlq_router_paused",
            "1 while consuming is paused because the bodies held reached the byte budget "
            "(RabbitMQ)",
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "dlq_router_in_flight_bytes", "Bytes of dead-letter bodies held (RabbitMQ)", registry=r
        )

        # Loops that report progress (``beat``); /readyz fails when one has been quiet for
        # longer than ``stall_after`` seconds (a call hanging on a half-open connection).
        self.stall_after = STALL_AFTER_S
        self._beats: dict[str, float] = {}
        self.loop_age = Gauge(
            "dlq_router_loop_seconds_since_progress",
            "Seconds since each router loop last completed a pass (Redis)",
            ["loop"],
            registry=r,
        )

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def beat(self, loop: str) -> None:
        """``loop`` completed a pass (its broker calls answered) just now."""
        if loop not in self._beats:
            self.loop_age.labels(loop).set_function(lambda: self._age(loop))
        self._beats[loop] = time.monotonic()

    def _age(self, loop: str) -> float:
        return round(time.monotonic() - self._beats.get(loop, time.monotonic()), 3)

    def stalled(self) -> list[str]:
        """The loops that have made no progress for longer than ``stall_after``."""
        return sorted(n for n in list(self._beats) if self._age(n) > self.stall_after)

    def is_ready(self) -> bool:
        ready = bool(self.registry.get_sample_value("dlq_router_ready"))
        return ready and not self.stalled()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _app(metrics: Metrics) -> Callable[..., Iterable[bytes]]:
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            if metrics.is_ready():
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            stalled = metrics.stalled()
            if stalled:
                return [
                    f"not ready: no progress for over {metrics.stall_after:.0f}s in "
                    f"{', '.join(stalled)}\n".encode()
                ]
            return [b"not ready\n"]
        return prom(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread; returns the server."""
    server = make_server(host, port, _app(metrics), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
