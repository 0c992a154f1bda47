"""``dlq-router parked list|show|groups|purge|export|import``: the parking lot, on either broker.

Exit codes: 0 ok (also when nothing matched: it says so), 2 malformed selector / usage /
broker unreachable, 4 unknown id, 5 some messages of a bulk operation failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dlq_router import parking as p
from dlq_router.backends.base import ParkedMessage
from dlq_router.cli.common import JsonOpt, TopologyOpt, UrlOpt, backend_for, cli_errors, load
from dlq_router.cli.common import print_json as _print_json
from dlq_router.errors import NotFound, PartialFailure, UsageError
from dlq_router.topology import Topology

app = typer.Typer(
    help="Inspect, group, export, import and purge parked messages.", no_args_is_help=True
)

RouteOpt = Annotated[
    list[str] | None, typer.Option("--route", help="Only this route (repeatable).")
]
ErrorTypeOpt = Annotated[
    list[str] | None,
    typer.Option("--error-type", help="Error type, dotted or bare class name (repeatable)."),
]
ReasonOpt = Annotated[
    list[str] | None,
    typer.Option("--reason", help="Park reason, e.g. max_attempts (repeatable)."),
]
TaskOpt = Annotated[
    list[str] | None,
    typer.Option("--task", help="Celery task name, e.g. myapp.tasks.send (repeatable)."),
]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Parked at least this long ago (e.g. 1h).")
]
NewerOpt = Annotated[
    str | None, typer.Option("--newer-than", help="Parked at most this long ago (e.g. 30m).")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Only the newest N that match.")]
IdOpt = Annotated[list[str] | None, typer.Option("--id", help="A parked id (repeatable).")]
GroupOpt = Annotated[
    list[str] | None,
    typer.Option("--group", help="A fingerprint from `parked groups` (repeatable)."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every parked message.")]


def selector(
    topo: Topology,
    route: list[str] | None,
    error_type: list[str] | None,
    reason: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
    limit: int | None,
    ids: list[str] | None = None,
    group: list[str] | None = None,
    all_: bool = False,
    task: list[str] | None = None,
) -> p.Selector:
    return p.parse_selector(
        known_routes=[r.name for r in topo.routes],
        routes=route or (),
        error_types=error_type or (),
        reasons=reason or (),
        tasks=task or (),
        older_than=older_than,
        newer_than=newer_than,
        limit=limit,
        ids=ids or (),
        groups=group or (),
        all_=all_,
    )


def note(message: str) -> None:
    """Status lines go to stderr so stdout stays clean for --json and export."""
    typer.echo(message, err=True)


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool) -> Iterator[p.Progress]:
    """A progress bar on a terminal; a no-op when stderr is not a TTY or output is JSON."""
    if not enabled or not sys.stderr.isatty():
        yield p.no_progress
        return
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _short_time(iso: str | None) -> str:
    return (iso or "-").replace("T", " ").replace("+00:00", "Z")


def list_rows(messages: list[ParkedMessage]) -> None:
    rows = [
        ["ID", "ROUTE", "TASK", "TASK ID", "ATTEMPTS", "REASON", "ERROR TYPE", "PARKED AT", "SIZE"]
    ]
    for msg in messages:
        r = p.summary_row(msg)
        rows.append(
            [
                r["id"],
                r["route"],
                r["task"] or "-",
                r["task_id"] or "-",
                "-" if r["attempts"] is None else str(r["attempts"]),
                r["reason"] or "-",
                r["error_type"] or "-",
                _short_time(r["parked_at_iso"]),
                str(r["size"]),
            ]
        )
    _table(rows)


@app.command("list")
def list_(
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: RouteOpt = None,
    error_type: ErrorTypeOpt = None,
    reason: ReasonOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: LimitOpt = None,
    ids: IdOpt = None,
    group: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Parked messages, newest first: id, route, task, task id, attempts, reason, error type,
    time, size."""
    with cli_errors():
        topo = load(topology, url)
        sel = selector(
            topo, route, error_type, reason, older_than, newer_than, limit, ids, group, task=task
        )
        with backend_for(topo) as backend:
            messages = list(backend.parking.iter(sel))
        if not messages:
            note("no parked messages match" if sel.has_filter else "the parking lot is empty")
            return
        if as_json:
            for msg in messages:
                _print_json(p.summary_row(msg))
        else:
            list_rows(messages)


@app.command("show")
def show(
    msg_id: Annotated[
        str, typer.Argument(metavar="ID", help="The parked message's id, or a Celery task id.")
    ],
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: Annotated[str | None, typer.Option("--route", help="Look only here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Properties, headers, failure history and body of one parked message.

    The body is pretty-printed when it is JSON, printed when it is text and hex-dumped
    otherwise; a pickle body is never unpickled.
    """
    with cli_errors():
        topo = load(topology, url)
        if route is not None:
            selector(topo, [route], None, None, None, None, None)  # validates the route
        with backend_for(topo) as backend:
            msg = find_parked(backend.parking, topo, msg_id, route)
        record = p.show_record(msg)
        if as_json:
            _print_json(record)
            return
        typer.echo(f"id:     {record['id']}")
        typer.echo(f"route:  {record['route']}")
        if record["task"]:
            typer.echo(f"task:   {record['task']}[{record['task_id']}]")
        typer.echo(f"group:  {record['fingerprint']}")
        typer.echo("properties:")
        for key, value in record["properties"].items():
            typer.echo(f"  {key}: {value}")
        typer.echo("headers:")
        for key, value in record["headers"].items():
            typer.echo(f"  {key}: {value}")
        typer.echo("failure history:")
        for key, value in record["history"].items():
            typer.echo(f"  {key}: {value}")
        body = record["body"]
        suffix = " (pickle: shown as hex, never unpickled)" if body["kind"] == "pickle" else ""
        typer.echo(f"body ({body['kind']}, {body['size']} bytes){suffix}:")
        typer.echo(body["preview"])


@app.command("groups")
def groups(
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: RouteOpt = None,
    error_type: ErrorTypeOpt = None,
    reason: ReasonOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Parked messages grouped by route + task + error type + reason, largest group first.

    The fingerprint selects the group in `replay`, `purge` and `export` (--group).
    """
    with cli_errors():
        topo = load(topology, url)
        sel = selector(topo, route, error_type, reason, older_than, newer_than, None, task=task)
        with backend_for(topo) as backend:
            found = p.groups(backend.parking.scan(sel))  # one pass, no message kept
        if not found:
            note("no parked messages match" if sel.has_filter else "the parking lot is empty")
            return
        if as_json:
            for group in found:
                _print_json(p.group_row(group))
            return
        rows = [
            ["GROUP", "COUNT", "ROUTE", "TASK", "ERROR TYPE", "REASON", "FIRST SEEN", "LAST SEEN"]
        ]
        for group in found:
            r = p.group_row(group)
            rows.append(
                [
                    r["fingerprint"],
                    str(r["count"]),
                    r["route"],
                    r["task"] or "-",
                    r["error_type"] or "-",
                    r["reason"] or "-",
                    _short_time(r["first_seen_iso"]),
                    _short_time(r["last_seen_iso"]),
                ]
            )
        _table(rows)


def find_parked(lot: p.ParkingLot, topo: Topology, wanted: str, route: str | None) -> ParkedMessage:
    """A parked id, or else a Celery task id (the newest message parked under it)."""
    try:
        return lot.get(wanted, route)
    except NotFound:
        sel = selector(topo, [route] if route else None, None, None, None, None, None)
        for msg in lot.iter(sel):  # newest first
            if p.task_id(msg) == wanted:
                return msg
        raise


def check_missing(result: p.ReplayResult) -> None:
    if result.missing:
        raise NotFound(f"not parked: {', '.join(result.missing)}")


@app.command("purge")
def purge(
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: RouteOpt = None,
    error_type: ErrorTypeOpt = None,
    reason: ReasonOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: LimitOpt = None,
    ids: IdOpt = None,
    group: GroupOpt = None,
    all_: AllOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the selected parked messages for good (a selector or --all is required).

    Asks for confirmation on a terminal; without a terminal, --yes is required.
    """
    with cli_errors():
        topo = load(topology, url)
        sel = selector(
            topo, route, error_type, reason, older_than, newer_than, limit, ids, group, all_, task
        )
        sel.require_choice("purge")
        if not yes and not sys.stdin.isatty():
            raise UsageError("purge deletes messages: pass --yes when not on a terminal")
        with backend_for(topo) as backend:
            lot = backend.parking
            if not yes:
                count = sum(1 for _ in lot.iter(sel))
                if count == 0:
                    note("nothing matched: nothing was purged")
                    return
                typer.confirm(f"Delete {count} parked message(s) for good?", abort=True)
            with progress_bar("purging", None, True) as advance:
                result = lot.purge(sel, advance)
        note(f"purged {result.replayed} message(s)" if result.replayed else "nothing matched")
        check_missing(result)


@app.command("export")
def export(
    topology: TopologyOpt,
    url: UrlOpt = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSONL file to write ('-' = stdout).")
    ] = Path("-"),
    route: RouteOpt = None,
    error_type: ErrorTypeOpt = None,
    reason: ReasonOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    limit: LimitOpt = None,
    ids: IdOpt = None,
    group: GroupOpt = None,
) -> None:
    """Write the selected parked messages as JSONL (bodies base64); nothing is removed."""
    with cli_errors():
        topo = load(topology, url)
        sel = selector(
            topo, route, error_type, reason, older_than, newer_than, limit, ids, group, task=task
        )
        with backend_for(topo) as backend:
            messages = list(backend.parking.iter(sel))
        lines = "".join(p.export_line(m) + "\n" for m in messages)
        if str(output) == "-":
            sys.stdout.write(lines)
        else:
            output.write_text(lines, encoding="utf-8")
        note(f"exported {len(messages)} message(s)")
        check_missing(p.ReplayResult(missing=p.missing_ids(sel, (m.id for m in messages))))


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(metavar="FILE", help="A `parked export` file.")],
    topology: TopologyOpt,
    url: UrlOpt = None,
    route: Annotated[
        str | None, typer.Option("--route", help="Park everything on this route instead.")
    ] = None,
) -> None:
    """Park the messages of an export file (from either broker).

    Ids already parked are skipped, so importing the same file twice adds nothing.
    """
    with cli_errors():
        topo = load(topology, url)
        known = [r.name for r in topo.routes]
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{source}: {exc.strerror or exc}") from None
        messages = [
            p.import_line(line, f"{source}:{n}")
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
        if route is not None:
            selector(topo, [route], None, None, None, None, None)
            messages = [
                ParkedMessage(m.id, route, m.headers, m.properties, m.body) for m in messages
            ]
        unknown = sorted({m.route for m in messages} - set(known))
        if unknown:
            raise UsageError(
                f"{source}: route(s) {', '.join(unknown)} not in the topology "
                f"(routes: {', '.join(known)}); use --route to choose one"
            )
        with backend_for(topo) as backend, progress_bar("importing", len(messages), True) as adv:
            result = backend.parking.put(messages, adv)
        note(
            f"imported {result.replayed}, skipped {result.skipped} already parked, "
            f"failed {result.failed}"
        )
        for msg_id, why in result.failures:
            note(f"  failed {msg_id}: {why}")
        if result.failed:
            raise PartialFailure(f"{result.failed} message(s) could not be imported")
