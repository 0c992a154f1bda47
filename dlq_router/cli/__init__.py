"""The ``dlq-router`` command line: one module per command group, joined here."""

from __future__ import annotations

import sys

import typer

from dlq_router import __version__, native
from dlq_router.cli import console as _console
from dlq_router.cli import declare as _declare
from dlq_router.cli import demo as _demo
from dlq_router.cli import parked, replay
from dlq_router.cli import run as _run
from dlq_router.cli import status as _status

app = typer.Typer(
    name="dlq-router",
    help="Broker-level retries: dead letters routed to fixed-delay tiers or a parking lot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dlq-router {__version__} ({native.describe()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Broker-level retries: dead letters routed to fixed-delay tiers or a parking lot."""


app.command("declare")(_declare.declare)
app.command("run")(_run.run)
app.add_typer(parked.app, name="parked")
app.command("replay")(replay.replay)
app.command("demo")(_demo.demo)
app.command("status")(_status.status)
app.command("console")(_console.console)


def main() -> None:
    sys.exit(app())
