"""Options and helpers shared by every command group."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from dlq_router import logs
from dlq_router.backends import open_backend
from dlq_router.backends.base import Backend
from dlq_router.errors import DlqRouterError, TopologyConflict, UsageError
from dlq_router.topology import Topology, load_topology
from dlq_router.urls import SECRETS, broker_kind, normalize_url, redact, url_port_problem

TopologyOpt = Annotated[
    Path,
    typer.Option(
        "-t",
        "--topology",
        envvar="DLQ_ROUTER_TOPOLOGY",
        help="Topology YAML file.",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Broker URL; overrides DLQ_ROUTER_URL and the file's url.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def error(message: str) -> None:
    """One line on stderr, the way every failure is reported (never with a secret in it)."""
    typer.echo(f"dlq-router: error: {redact(message)}", err=True)


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (``| head``): stop without a word, like ``cat``.

    Python would complain again while flushing stdout at exit, so stdout is pointed at
    /dev/null first.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the project's errors into one line and the documented exit code."""
    logs.configure_default()
    try:
        yield
    except BrokenPipeError:
        _quiet_broken_pipe()
        raise typer.Exit(141) from None  # 128 + SIGPIPE, what a shell pipeline expects
    except TopologyConflict as exc:
        error(str(exc))
        for conflict in exc.conflicts:
            typer.echo(f"  conflict: {conflict}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except DlqRouterError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        error("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("DLQ_ROUTER_DEBUG"):
            raise
        error(f"unexpected {type(exc).__name__}: {exc} (set DLQ_ROUTER_DEBUG=1 for a traceback)")
        raise typer.Exit(1) from None


def load(topology: Path, url: str | None) -> Topology:
    """The validated topology; its URL's secrets are known to every redaction from here on."""
    for raw in (url, os.environ.get("DLQ_ROUTER_URL")):
        if raw:
            SECRETS.add_url(raw)  # before validation: its errors must not quote them either
    topo = load_topology(topology, url)
    SECRETS.add_url(topo.url)
    return topo


def checked_url(url: str) -> str:
    """A URL given outside a topology file (``demo --url``), checked like the file's url."""
    SECRETS.add_url(url)
    try:
        broker_kind(url)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None
    problem = url_port_problem(url)
    if problem:
        raise UsageError(f"--url: {problem}")
    return normalize_url(url)


@contextmanager
def backend_for(topology: Topology) -> Iterator[Backend]:
    backend = open_backend(topology)
    try:
        yield backend
    finally:
        backend.close()
