"""``dlq-router run``: the sidecar that routes dead letters until it is told to stop."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from dlq_router import logs, native
from dlq_router.backends.base import RouterContext
from dlq_router.cli.common import TopologyOpt, UrlOpt, backend_for, cli_errors, load
from dlq_router.errors import UsageError
from dlq_router.metrics import Metrics, serve
from dlq_router.topology import Topology
from dlq_router.urls import redact_url

PROBES_PORT = 9108


def select_routes(topology: Topology, names: list[str]) -> Topology:
    """The topology restricted to ``names`` (all routes when empty)."""
    if not names:
        return topology
    known = {r.name for r in topology.routes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"no route named {unknown[0]!r} (routes: {', '.join(sorted(known))})")
    routes = [r for r in topology.routes if r.name in names]
    return topology.model_copy(update={"routes": routes})


@contextmanager
def stop_on_signals(ctx: RouterContext) -> Iterator[None]:
    """First SIGTERM/SIGINT: drain and stop. Second: close at once."""

    def handler(signum: int, _frame: Any) -> None:
        if ctx.stop.is_set():
            ctx.abort.set()
        else:
            ctx.log.info("%s received: draining", signal.Signals(signum).name)
            ctx.stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off the routing path while the router runs.
    A router allocates a dozen objects per dead letter, none in reference cycles, and with
    a window of 2,000 in flight many live long enough to be promoted, so the collector
    kept walking the whole heap (pika, pydantic, the topology): 15-20 % of the RabbitMQ
    router's CPU in a profile. What is loaded at start is moved out of its sight
    (``gc.freeze``) and a collection starts after 50,000 net allocations instead of 700;
    both are undone on the way out (``run`` can be called in-process)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def run(
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: Annotated[
        list[str] | None,
        typer.Option("--route", help="Only this route (repeatable). Default: every route."),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Dead letters in flight at once. Default: 2000 on RabbitMQ (bytes held are "
            "capped by --max-in-flight-mb), 500 on Redis (at most 1000 per claim).",
        ),
    ] = None,
    max_in_flight_mb: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="RabbitMQ: MiB of dead-letter bodies held at once; past it the router stops "
            "consuming until half is done. Default: 64.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics, /healthz, /readyz on this port (0: any free port)."),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address the metrics server binds. Default: 127.0.0.1 (0.0.0.0 with --probes).",
            show_default=False,
        ),
    ] = None,
    probes: Annotated[
        bool,
        typer.Option(
            "--probes",
            envvar="DLQ_ROUTER_PROBES",
            help=f"Kubernetes probes: serve /healthz, /readyz and /metrics on 0.0.0.0:"
            f"{PROBES_PORT} (or --metrics-port / --metrics-host) so the kubelet can reach them.",
        ),
    ] = False,
    shutdown_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for outstanding confirms on stop.")
    ] = 10.0,
    hold_alert_after: Annotated[
        float,
        typer.Option(
            min=0,
            help="RabbitMQ: seconds a dead letter may stay held (its park not confirmed, e.g. "
            "a full parking queue) before it is reported, and again every so often: an error "
            "line with its id and dlq_router_held_too_long_total.",
        ),
    ] = 60.0,
    log_format: Annotated[
        logs.LogFormat, typer.Option(help="text (readable) or json (one object per line).")
    ] = "text",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Route dead letters of every route: retry on the next delay tier, or park.

    Runs until SIGTERM/SIGINT: the first signal stops consuming, waits for outstanding
    confirms (at most --shutdown-timeout seconds) and exits 0; a second one closes at once.
    Unacked dead letters return to the DLQ, so nothing in flight is lost.
    """
    with cli_errors():
        topo = select_routes(load(topology, url), route or [])
        # The router reports every connection and channel failure itself, in one line;
        # pika's and redis-py's own records (a traceback per failed connect) only at debug.
        logs.configure(log_format, log_level, libraries=logging.CRITICAL)
        ctx = RouterContext(
            metrics=Metrics(),
            prefetch=prefetch,
            max_in_flight_bytes=max_in_flight_mb * 1024 * 1024 if max_in_flight_mb else None,
            shutdown_timeout=shutdown_timeout,
            hold_alert_after=hold_alert_after,
        )
        server = None
        if probes and metrics_port is None:
            metrics_port = PROBES_PORT
        if metrics_host is None:
            metrics_host = "0.0.0.0" if probes else "127.0.0.1"  # the kubelet uses the pod IP
        if metrics_port is not None:
            try:
                server = serve(ctx.metrics, metrics_port, metrics_host)
            except OSError as exc:
                where = f"{metrics_host}:{metrics_port}"
                raise UsageError(f"cannot serve metrics on {where}: {exc}") from exc
            ctx.log.info(
                "metrics on http://%s:%d/metrics (/healthz, /readyz)",
                metrics_host,
                server.server_port,
            )
        ctx.log.info(
            "dlq-router run on %s, %d route(s); %s",
            redact_url(topo.url),
            len(topo.routes),
            native.describe(),
        )
        try:
            with stop_on_signals(ctx), quiet_gc(), backend_for(topo) as backend:
                backend.run_router(ctx)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
