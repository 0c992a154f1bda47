"""The console's pages and actions (Starlette). Each request opens the broker, does what the
matching CLI command does, and closes it again: pika connections are not shared between
threads, and a console is used by a handful of people, not thousands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.backends.base import Backend
from dlq_router.console.forms import PAGE_SIZE, Filters, page_number, rate
from dlq_router.console.security import SESSION_COOKIE, Guard
from dlq_router.errors import BrokerError, DlqRouterError, NotFound, UsageError
from dlq_router.policy import PARK_REASONS
from dlq_router.topology import Topology
from dlq_router.urls import redact_url

T = TypeVar("T")
TEMPLATES = Path(__file__).parent / "templates"
# No script runs on these pages; forms post only to the console itself.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(DlqRouterError):
    """An action without the token, or without this session's CSRF field."""


def create_app(
    topology: Topology,
    *,
    token: str | None,
    read_only: bool = False,
    backend_factory: Callable[[Topology], Backend] = open_backend,
) -> Starlette:
    """The console for ``topology``. Without ``token`` every action is refused."""
    guard = Guard(token)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    templates = Jinja2Templates(env=env)
    templates.env.filters["when"] = lambda ms: (p.iso(ms) or "-").replace("+00:00", "Z")
    routes = [r.name for r in topology.routes]

    @contextmanager
    def backend() -> Iterator[Backend]:
        opened = backend_factory(topology)
        try:
            yield opened
        finally:
            opened.close()

    async def call(fn: Callable[[Backend], T]) -> T:
        def run() -> T:
            with backend() as b:
                return fn(b)

        return await run_in_threadpool(run)

    def session(request: Request) -> str | None:
        return guard.session(request.cookies.get(SESSION_COOKIE))

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        sid = session(request)
        base = {
            "broker": topology.kind,
            "url": redact_url(topology.url),
            "routes": routes,
            "read_only": read_only,
            "signed_in": sid is not None and guard.token is not None,
            "csrf": guard.csrf(sid) if sid else "",
            "reasons": PARK_REASONS,
        }
        response: Response = templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    def failure(request: Request, exc: DlqRouterError) -> Response:
        if isinstance(exc, Refused):
            status = 403
        elif isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, BrokerError):
            status = 502
        elif isinstance(exc, UsageError):
            status = 400
        else:
            status = 500
        return page(request, "error.html", status, message=str(exc))

    def known(route: str) -> str:
        if route not in routes:
            raise NotFound(f"no route named {route!r} (routes: {', '.join(routes)})")
        return route

    async def authorize(request: Request) -> dict[str, str]:
        """The form of an allowed action; ``Refused`` otherwise (HTTP 403)."""
        if read_only:
            raise Refused("this console is read-only (--read-only)")
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if guard.bearer_ok(request.headers.get("authorization")):
            return form
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
            raise Refused("cross-site request refused (Origin does not match)")
        sid = session(request)
        if sid is None or guard.token is None:
            raise Refused("actions need the console token: sign in first")
        if not guard.csrf_ok(sid, form.get("csrf")):
            raise Refused("missing or wrong CSRF field: reload the page and try again")
        return form

    # ------------------------------------------------------------------ pages

    async def overview(request: Request) -> Response:
        try:
            found = await call(lambda b: b.status())
        except DlqRouterError as exc:
            return failure(request, exc)
        return page(request, "overview.html", data=found.as_dict(), now=found.taken_at)

    async def parked(request: Request) -> Response:
        try:
            route = known(request.path_params["route"])
            filters = Filters.read(request.query_params)
            number = page_number(request.query_params.get("page"))
            sel = filters.selector(topology, route, limit=number * PAGE_SIZE)
            messages = await call(lambda b: list(b.parking.iter(sel)))
        except DlqRouterError as exc:
            return failure(request, exc)
        rows = [p.summary_row(m) for m in messages[(number - 1) * PAGE_SIZE :]]
        query = urlencode(filters.items())
        return page(
            request,
            "parked.html",
            route=route,
            rows=rows,
            filters=filters,
            query=query,
            page_no=number,
            more=len(messages) == number * PAGE_SIZE,
            filtered=bool(filters.items()),
        )

    async def groups(request: Request) -> Response:
        try:
            route = known(request.path_params["route"])
            sel = Filters().selector(topology, route)
            found = await call(lambda b: p.groups(b.parking.scan(sel)))
        except DlqRouterError as exc:
            return failure(request, exc)
        return page(request, "groups.html", route=route, groups=[p.group_row(g) for g in found])

    async def message(request: Request) -> Response:
        try:
            route = known(request.path_params["route"])
            msg_id = request.path_params["msg_id"]
            msg = await call(lambda b: b.parking.get(msg_id, route))
        except DlqRouterError as exc:
            return failure(request, exc)
        record = p.show_record(msg)
        return page(request, "message.html", route=route, record=record)

    # ------------------------------------------------------------------ actions

    async def replay(request: Request) -> Response:
        try:
            route = known(request.path_params["route"])
            form = await authorize(request)
            sel = _action_selector(form, route)
            options = p.ReplayOptions(rate=rate(form.get("rate")))
            result = await call(lambda b: b.parking.replay(sel, options))
        except DlqRouterError as exc:
            return failure(request, exc)
        return page(request, "result.html", route=route, action="replayed", result=result)

    async def purge(request: Request) -> Response:
        try:
            route = known(request.path_params["route"])
            form = await authorize(request)
            sel = _action_selector(form, route)
            if form.get("confirm") != "yes":
                count = await call(lambda b: sum(1 for _ in b.parking.scan(sel)))
                fields = [(k, v) for k, v in form.items() if k not in ("csrf", "confirm")]
                return page(request, "confirm.html", route=route, count=count, fields=fields)
            result = await call(lambda b: b.parking.purge(sel))
        except DlqRouterError as exc:
            return failure(request, exc)
        return page(request, "result.html", route=route, action="purged", result=result)

    def _action_selector(form: dict[str, str], route: str) -> p.Selector:
        scope = form.get("scope", "selection")
        if scope == "all":
            return Filters().selector(topology, route)
        filters = Filters.read(form)
        if scope == "group" and not filters.group:
            raise UsageError("a group action needs the group's fingerprint")
        return filters.selector(topology, route)

    # ------------------------------------------------------------------ sign in

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if request.method == "GET":
            return page(request, "login.html", next=target)
        form = await request.form()
        given = form.get("token")
        if read_only or not guard.token_ok(given if isinstance(given, str) else None):
            return page(request, "login.html", 403, next=target, wrong=True)
        safe = target if target.startswith("/") and not target.startswith("//") else "/"
        response = RedirectResponse(safe, status_code=303)
        response.set_cookie(
            SESSION_COOKIE, guard.new_session(), httponly=True, samesite="strict", path="/"
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/", overview),
            Route("/healthz", healthz),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/routes/{route}/parked", parked),
            Route("/routes/{route}/groups", groups),
            Route("/routes/{route}/messages/{msg_id:path}", message),
            Route("/routes/{route}/replay", replay, methods=["POST"]),
            Route("/routes/{route}/purge", purge, methods=["POST"]),
        ]
    )
