"""``dlq-router status``: every route at a glance, read-only, on either broker.

Exit codes: 0 ok (warnings included: they are printed, not failures), 2 broker unreachable
or bad input, 130 interrupted (how ``--watch`` ends).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dlq_router.backends.base import Backend
from dlq_router.cli.common import JsonOpt, TopologyOpt, UrlOpt, backend_for, cli_errors, load
from dlq_router.cli.common import print_json as _print_json
from dlq_router.parking import iso
from dlq_router.status import RouteStatus, Status


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)


def _age(ms: int | None, now: int) -> str:
    """How long ago ``ms`` was, in the two largest units: 45s, 3m 20s, 2h 0m, 4d 3h."""
    if ms is None:
        return "-"
    return human_age(max(0, now - ms) // 1000)


def human_age(seconds: int) -> str:
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} {seconds % size // sub_size}{sub}"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds}s"


def _tiers(status: RouteStatus) -> str:
    if not status.tiers:
        return "-"
    return " ".join(f"{t.tier}:{t.waiting}" for t in status.tiers)


def _groups(status: RouteStatus) -> str:
    if status.summary is None:
        return "-" if status.parked == 0 else "(not read)"
    rows = [f"{g.count} {g.error_type or '-'}/{g.reason or '-'}" for g in status.top_groups]
    return "\n".join(rows) or "-"


def render(status: Status) -> Group:
    """The status table and its warnings, as one rich renderable."""
    now = status.taken_at
    table = Table(
        title=f"{status.broker} {status.url}",
        caption=f"at {iso(now)}",
        title_justify="left",
        caption_justify="left",
    )
    for column in ("ROUTE", "WORK", "DLQ", "ROUTERS", "RETRIES WAITING", "PARKED", "OLDEST"):
        table.add_column(column, justify="left" if column == "ROUTE" else "right")
    table.add_column("TOP GROUPS")
    for r in status.routes:
        waiting = _tiers(r)
        if r.next_due_ms is not None:
            waiting += f"\nnext in {_age(now, r.next_due_ms) if r.next_due_ms > now else '0s'}"
        if r.in_flight:
            waiting += f"\n{r.in_flight} leased"
        parked = str(r.parked)
        if r.parking_max_length is not None:
            parked += f"/{r.parking_max_length}"
        table.add_row(
            r.route,
            _num(r.work_depth),
            _num(r.dlq_depth),
            _num(r.routers),
            waiting,
            parked,
            _age(r.oldest_parked_ms, now),
            _groups(r),
        )
    lines = [Text(f"warning: {w}", style="bold yellow") for w in status.all_warnings]
    return Group(table, *lines)


def status(
    topology: TopologyOpt,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            min=0.5,
            help="Refresh every SECONDS until Ctrl-C (in place; with --json, one object "
            "per refresh).",
            metavar="SECONDS",
        ),
    ] = None,
    groups: Annotated[
        bool,
        typer.Option(
            "--groups/--no-groups",
            help="Read each parking lot for its oldest message and top groups (one pass; on "
            "RabbitMQ it reads the whole parking queue, without changing it).",
        ),
    ] = True,
) -> None:
    """Per route: work and dead-letter depth, routers attached, retries waiting per tier,
    parked count and age, the three largest error groups, and warnings. Read-only."""
    with cli_errors():
        topo = load(topology, url)
        with backend_for(topo) as backend:
            if watch is None:
                _once(backend, as_json, groups)
            elif as_json:
                while True:
                    _once(backend, True, groups)
                    time.sleep(watch)
            else:
                _live(backend, watch, groups)


def _once(backend: Backend, as_json: bool, groups: bool) -> None:
    found = backend.status(groups=groups)
    if as_json:
        _print_json(found.as_dict())
    else:
        Console().print(render(found))


def _live(backend: Backend, every: float, groups: bool) -> None:
    with Live(render(backend.status(groups=groups)), auto_refresh=False) as live:
        while True:
            time.sleep(every)
            live.update(render(backend.status(groups=groups)), refresh=True)
