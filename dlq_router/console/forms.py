"""Query strings and form fields -> a ``Selector``, through the CLI's own ``parse_selector``.

Everything here is outside input: unknown values are ``SelectorError`` (shown on the page,
HTTP 400), never an exception page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dlq_router.errors import SelectorError
from dlq_router.parking import Selector, parse_selector
from dlq_router.topology import Topology

PAGE_SIZE = 50
MAX_PAGE = 200  # page 200 holds 10,000 summaries on RabbitMQ: narrow the filter instead
FILTERS = ("task", "error_type", "reason", "older_than", "newer_than", "group", "id")


@dataclass(frozen=True)
class Filters:
    """The filter fields as typed, kept to refill the form and carry into actions."""

    task: str = ""
    error_type: str = ""
    reason: str = ""
    older_than: str = ""
    newer_than: str = ""
    group: str = ""
    id: str = ""

    @classmethod
    def read(cls, data: Mapping[str, str]) -> Filters:
        values = {}
        for name in FILTERS:
            value = data.get(name, "")
            values[name] = value.strip() if isinstance(value, str) else ""
        return cls(**values)

    def items(self) -> list[tuple[str, str]]:
        return [(name, getattr(self, name)) for name in FILTERS if getattr(self, name)]

    def selector(self, topology: Topology, route: str, limit: int | None = None) -> Selector:
        def many(value: str) -> list[str]:
            return [v.strip() for v in value.split(",") if v.strip()]

        return parse_selector(
            known_routes=[r.name for r in topology.routes],
            routes=[route],
            error_types=many(self.error_type),
            tasks=many(self.task),
            reasons=many(self.reason),
            older_than=self.older_than or None,
            newer_than=self.newer_than or None,
            limit=limit,
            ids=many(self.id),
            groups=many(self.group),
        )


def page_number(value: str | None) -> int:
    try:
        page = int(value or "1")
    except ValueError:
        raise SelectorError(f"page {value!r}: not a number") from None
    if not 1 <= page <= MAX_PAGE:
        raise SelectorError(f"page {page}: must be 1 to {MAX_PAGE} (narrow the filter)")
    return page


def rate(value: str | None) -> float | None:
    """The replay rate cap: empty means none; otherwise a number above 0 (msg/s)."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise SelectorError(f"rate {value!r}: not a number") from None
    if not 0 < number < float("inf"):
        raise SelectorError(f"rate {value!r}: must be above 0")
    return number
