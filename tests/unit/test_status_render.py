"""The status table's pure parts: ages, warnings, JSON field names."""

from __future__ import annotations

from dlq_router import headers as h
from dlq_router.backends.base import ParkedMessage
from dlq_router.cli.status import human_age, render
from dlq_router.parking import LotSummary
from dlq_router.status import RouteStatus, Status, TierStatus, add_warnings
from dlq_router.topology import parse_topology


def test_human_age_two_largest_units() -> None:
    assert [human_age(s) for s in (0, 59, 61, 3600, 7261, 90000)] == [
        "0s",
        "59s",
        "1m 1s",
        "1h 0m",
        "2h 1m",
        "1d 1h",
    ]


def _route(**parking: int | str) -> object:
    topo = parse_topology(
        {
            "url": "redis://:secret@127.0.0.1:6379/0",
            "routes": [
                {"name": "r", "retry": {"delays": ["1s"], "max_attempts": 2}, "parking": parking}
            ],
        }
    )
    return topo.routes[0]


def test_warnings_never_declared_no_router_near_full() -> None:
    route = _route(max_length=10)
    missing = RouteStatus("r", declared=False, missing=["{r}:topology"], routers=0)
    add_warnings(route, missing, dlq="{r}:dlq")  # type: ignore[arg-type]
    assert len(missing.warnings) == 1 and "never declared" in missing.warnings[0]
    full = RouteStatus("r", routers=0, parked=9)
    add_warnings(route, full, dlq="{r}:dlq")  # type: ignore[arg-type]
    assert "no router consuming {r}:dlq" in full.warnings[0]
    assert "near max_length (9/10)" in full.warnings[1] and "refused" in full.warnings[1]
    fine = RouteStatus("r", routers=None, parked=8)  # unknown routers: no claim either way
    add_warnings(route, fine, dlq="{r}:dlq")  # type: ignore[arg-type]
    assert fine.warnings == []


def test_json_fields_and_top_groups() -> None:
    summary = LotSummary()
    for i, err in enumerate(["A", "A", "B", "C", "D", "D", "D"]):
        headers = {h.ERROR_TYPE: err, h.PARK_REASON: "max_attempts", h.PARKED_AT: 1000 + i}
        summary.add(ParkedMessage(str(i), "r", headers, {}, b"xy"))
    rs = RouteStatus("r", tiers=[TierStatus("1s", 1000, 4)], parked=7, summary=summary)
    rs.oldest_parked_ms = summary.oldest
    status = Status("redis", "redis://:***@127.0.0.1:6379/0", [rs], taken_at=11_000)
    row = status.as_dict()["routes"][0]
    assert row["retries_waiting"] == 4 and row["oldest_parked_age_s"] == 10
    assert [(g["error_type"], g["count"]) for g in row["top_groups"]] == [
        ("D", 3),
        ("A", 2),
        ("C", 1),  # ties: most recently seen first
    ]
    assert summary.count == 7 and summary.bytes == 14
    assert render(status) is not None
