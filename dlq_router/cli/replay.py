"""``dlq-router replay``: send parked messages back to work, at least once.

Exit codes: 0 ok (also when nothing matched: it says so), 2 malformed selector / usage /
broker unreachable, 4 an --id that is not parked, 5 some messages failed (they stay parked).
"""

from __future__ import annotations

from typing import Annotated

import typer

from dlq_router import parking as p
from dlq_router.cli import parked as cli
from dlq_router.cli.common import JsonOpt, TopologyOpt, UrlOpt, backend_for, cli_errors, load
from dlq_router.cli.common import print_json as _print_json
from dlq_router.errors import PartialFailure


def replay(
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: cli.RouteOpt = None,
    error_type: cli.ErrorTypeOpt = None,
    reason: cli.ReasonOpt = None,
    task: cli.TaskOpt = None,
    older_than: cli.OlderOpt = None,
    newer_than: cli.NewerOpt = None,
    limit: cli.LimitOpt = None,
    ids: cli.IdOpt = None,
    group: cli.GroupOpt = None,
    all_: cli.AllOpt = False,
    to_route: Annotated[
        str | None,
        typer.Option("--to-route", help="Send to this route's work queue instead of its own."),
    ] = None,
    keep_attempts: Annotated[
        bool, typer.Option("--keep-attempts", help="Keep the attempt counter (default: reset).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would move; change nothing.")
    ] = False,
    rate: Annotated[
        float | None, typer.Option("--rate", help="At most N messages per second.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send the selected parked messages back to their route's work exchange and routing key.

    A message leaves the parking lot only once the broker confirmed its republish, so an
    interrupted replay loses nothing and can be run again. A selector or --all is required.
    """
    with cli_errors():
        topo = load(topology, url)
        sel = cli.selector(
            topo, route, error_type, reason, older_than, newer_than, limit, ids, group, all_, task
        )
        sel.require_choice("replay")
        if to_route is not None:
            cli.selector(topo, [to_route], None, None, None, None, None)
        options = p.ReplayOptions(to_route, keep_attempts, rate, dry_run)
        with (
            backend_for(topo) as backend,
            cli.progress_bar("replaying", None, not as_json and not dry_run) as advance,
        ):
            result = backend.parking.replay(sel, options, advance)
        report(result, as_json)
        cli.check_missing(result)
        if result.failed:
            raise PartialFailure(f"{result.failed} message(s) failed and are still parked")


def report(result: p.ReplayResult, as_json: bool) -> None:
    if as_json:
        if result.dry_run:
            for msg, destination in result.planned:
                _print_json({**p.summary_row(msg), "destination": destination})
        _print_json(result.as_dict())
        return
    if result.dry_run:
        for msg, destination in result.planned:
            typer.echo(f"would replay {msg.id} ({msg.route}) -> {destination}")
        cli.note(f"dry run: {len(result.planned)} message(s) would be replayed; nothing changed")
        return
    if result.selected == 0:
        cli.note("nothing matched: no message was replayed")
        return
    for msg_id, why in result.failures:
        cli.note(f"failed {msg_id}: {why}")
    typer.echo(f"replayed {result.replayed}, skipped {result.skipped}, failed {result.failed}")
