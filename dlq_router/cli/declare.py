"""``dlq-router declare``: create (or check) the retry topology on the broker."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from dlq_router.cli.common import (
    JsonOpt,
    TopologyOpt,
    UrlOpt,
    backend_for,
    cli_errors,
    load,
    print_json,
)
from dlq_router.errors import TopologyConflict
from dlq_router.urls import redact_url


def declare(
    topology: TopologyOpt,
    url: UrlOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (create/unchanged/conflict) only.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the dead-letter, retry-tier and parking objects of every route.

    Idempotent: a second run reports every object unchanged. When an existing object has
    different arguments, every conflict is reported, nothing is declared, and the exit code
    is 3.
    """
    with cli_errors():
        topo = load(topology, url)
        with backend_for(topo) as backend:
            report = backend.declare(dry_run=dry_run)
        if as_json:
            print_json(
                {
                    "url": redact_url(topo.url),
                    "applied": report.applied,
                    # A dry run only looks (passive declares need no permission).
                    "permissions_checked": not dry_run,
                    "items": [asdict(item) for item in report.items],
                }
            )
        else:
            width = max((len(i.name) for i in report.items), default=10)
            for item in report.items:
                typer.echo(f"{item.status:<10} {item.kind:<9} {item.name:<{width}}  {item.detail}")
            counts = {
                s: sum(1 for i in report.items if i.status == s)
                for s in ("create", "unchanged", "conflict", "warning")
            }
            verb = "would create" if not report.applied else "created"
            typer.echo(
                f"{redact_url(topo.url)}: {counts['create']} {verb}, {counts['unchanged']} "
                f"unchanged, {counts['conflict']} conflict(s), {counts['warning']} warning(s)"
                + (
                    " (dry run: nothing was changed, and permissions were not checked)"
                    if dry_run
                    else ""
                )
            )
        if report.conflicts:
            raise TopologyConflict([f"{c.kind} {c.name}: {c.detail}" for c in report.conflicts])
