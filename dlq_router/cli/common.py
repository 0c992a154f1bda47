"""Options and helpers shared by every command group."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from dlq_router.backends import open_backend
from dlq_router.backends.base import Backend
from dlq_router.errors import DlqRouterError, TopologyConflict
from dlq_router.topology import Topology, load_topology

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
    """One line on stderr, the way every failure is reported."""
    typer.echo(f"dlq-router: error: {message}", err=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the project's errors into one line and the documented exit code."""
    try:
        yield
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
    return load_topology(topology, url)


@contextmanager
def backend_for(topology: Topology) -> Iterator[Backend]:
    backend = open_backend(topology)
    try:
        yield backend
    finally:
        backend.close()
