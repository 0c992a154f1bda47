"""``dlq-router console``: the web console (overview, parked messages, groups, one message,
replay and purge), on 127.0.0.1 by default.

Exit codes: 0 stopped by Ctrl-C/SIGTERM, 2 bad option (no token and not --read-only, port
taken) or broker unreachable at start.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import typer

from dlq_router.cli.common import TopologyOpt, UrlOpt, backend_for, cli_errors, load
from dlq_router.errors import UsageError
from dlq_router.urls import redact_url


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def console(
    topology: TopologyOpt,
    url: UrlOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind. Anything but loopback is reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8088,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DLQ_ROUTER_CONSOLE_TOKEN",
            help="Secret that replay and purge need (sign in with it). Prefer the environment "
            "variable: options show in the process list.",
            show_default=False,
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Hide every action; nothing can be changed.")
    ] = False,
) -> None:
    """Serve the web console: overview, parked messages with the CLI's selectors, error
    groups, one message, and (with a token) replay and purge."""
    with cli_errors():
        import uvicorn

        from dlq_router.console import create_app

        topo = load(topology, url)
        if not read_only and not token:
            raise UsageError(
                "the console needs a token for its actions: --token or DLQ_ROUTER_CONSOLE_TOKEN "
                "(or --read-only)"
            )
        if token is not None and len(token) < 12:
            raise UsageError("--token: use at least 12 characters")
        with backend_for(topo):  # fail now, with one line, if the broker is unreachable
            pass
        try:  # a taken port is one line too, before uvicorn logs its own traceback
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        if not _loopback(host):
            typer.echo(f"dlq-router: warning: console bound to {host}, not loopback", err=True)
        mode = " (read-only)" if read_only else ""
        typer.echo(
            f"dlq-router console for {redact_url(topo.url)} on http://{host}:{port}/{mode}",
            err=True,
        )
        app = create_app(topo, token=token, read_only=read_only)
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
