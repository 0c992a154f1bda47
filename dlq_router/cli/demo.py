"""``dlq-router demo``: watch retries and parking happen on a throwaway route (~5 s)."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING

import typer

from dlq_router.cli.common import UrlOpt, checked_url, cli_errors
from dlq_router.errors import UsageError
from dlq_router.urls import broker_kind, redact_url

if TYPE_CHECKING:
    from dlq_router.backends.rabbitmq.demo import Event

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def demo(url: UrlOpt = None) -> None:
    """Declare a demo route (tiers 1s, 2s; 3 attempts), publish five messages, let a toy
    worker fail some of them, run the router, print what happened, then delete it all."""
    with cli_errors():
        url = checked_url(url or os.environ.get("DLQ_ROUTER_URL") or DEFAULT_URL)
        if broker_kind(url) != "rabbitmq":
            raise UsageError("the demo runs on RabbitMQ (amqp:// URL)")
        from dlq_router.backends.rabbitmq.demo import PLAN, run_demo

        typer.echo(f"dlq-router demo on {redact_url(url)}")
        typer.echo("route: retry tiers 1s then 2s, at most 3 attempts, ValueError is non-retryable")
        typer.echo("toy worker plan per message (one entry per attempt):")
        for name, plan in PLAN.items():
            typer.echo(f"  {name:<14} {' -> '.join(step.split(':')[0] for step in plan)}")
        typer.echo("")
        outcomes: Counter[str] = Counter()
        parked: list[str] = []

        def show(event: Event) -> None:
            outcomes[event.kind] += 1
            if event.kind == "published":
                return
            if event.kind == "parked":
                parked.append(f"{event.message} ({event.detail.split(':')[0]})")
                line = f"PARKED after {event.attempt} attempt(s): {event.detail}"
            else:
                line = f"attempt {event.attempt}: {event.kind.upper()}"
                if event.detail:
                    line += f"  [{event.detail}]"
            typer.echo(f"  {f'+{event.at:.2f}s':>7}  {event.message:<14} {line}")

        topology = run_demo(url, show)
        retries = outcomes["failed"] - len(parked)
        typer.echo("")
        typer.echo(
            f"summary: {outcomes['ok']} succeeded, {retries} retries scheduled by the router, "
            f"{len(parked)} parked: {', '.join(parked)}"
        )
        typer.echo(f"cleaned up: every {topology.routes[0].name}* queue and exchange deleted")
