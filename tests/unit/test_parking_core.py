"""The broker-neutral parking-lot core: selectors, groups, rows, previews, export format."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from decimal import Decimal
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router import parking as p
from dlq_router.backends.base import ParkedMessage
from dlq_router.errors import SelectorError, UsageError

NOW = 1_800_000_000_000
ROUTES = ["emails", "reports"]


def msg(
    msg_id: str,
    *,
    route: str = "emails",
    error: str = "ConnectionError",
    reason: str = "max_attempts",
    at: int = NOW,
    body: bytes = b"{}",
    **headers: Any,
) -> ParkedMessage:
    base = {h.ERROR_TYPE: error, h.PARK_REASON: reason, h.PARKED_AT: at, h.ATTEMPTS: 3, **headers}
    return ParkedMessage(msg_id, route, base, {"content_type": "application/json"}, body)


def sel(**kwargs: Any) -> p.Selector:
    selector = p.parse_selector(known_routes=ROUTES, **kwargs)
    return p.Selector(**{**selector.__dict__, "now_ms": NOW})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"routes": ["nope"]}, "no such route"),
        ({"reasons": ["tired"]}, "must be one of"),
        ({"groups": ["ABC"]}, "fingerprint"),
        ({"older_than": "yesterday"}, "--older-than"),
        ({"newer_than": "0s"}, "--newer-than"),
        ({"limit": 0}, "--limit"),
        ({"ids": [" "]}, "--id"),
        ({"older_than": "1h", "newer_than": "1h"}, "nothing can match"),
        ({"all_": True, "routes": ["emails"]}, "do not combine"),
    ],
)
def test_malformed_selectors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        p.parse_selector(known_routes=ROUTES, **kwargs)


def test_router_error_is_a_park_reason_selectors_accept() -> None:
    m = msg("a", reason="router_error")
    assert sel(reasons=["router_error"]).matches(m)
    assert not sel(reasons=["max_attempts"]).matches(m)


def test_bulk_needs_a_filter_or_all() -> None:
    with pytest.raises(SelectorError, match="--all"):
        sel(limit=5).require_choice("replay")
    sel(all_=True).require_choice("replay")
    sel(reasons=["max_attempts"]).require_choice("purge")


def test_matching_each_filter() -> None:
    m = msg("a", error="app.errors.ConnectionError", at=NOW - 90_000)
    assert sel().matches(m)
    assert sel(routes=["emails"]).matches(m) and not sel(routes=["reports"]).matches(m)
    assert sel(error_types=["ConnectionError"]).matches(m)  # bare class name
    assert sel(error_types=["app.errors.ConnectionError"]).matches(m)
    assert not sel(error_types=["other.ConnectionError"]).matches(m)
    assert sel(reasons=["max_attempts"]).matches(m) and not sel(reasons=["unroutable"]).matches(m)
    assert sel(older_than="1m").matches(m) and not sel(older_than="2m").matches(m)
    assert sel(newer_than="2m").matches(m) and not sel(newer_than="1m").matches(m)
    assert sel(ids=["a", "b"]).matches(m) and not sel(ids=["b"]).matches(m)
    fp = p.fingerprint("emails", "app.errors.ConnectionError", "max_attempts")
    assert sel(groups=[fp]).matches(m) and not sel(groups=["0" * 12]).matches(m)


def test_fingerprint_is_stable_and_distinguishes_fields() -> None:
    assert (
        p.fingerprint("emails", "E", "r") == "de2e589b58c8"
    )  # pinned: --group values must survive upgrades
    prints = {p.fingerprint(*k) for k in [("a", "b", "c"), ("a", "bc", ""), ("ab", "c", "")]}
    assert len(prints) == 3


def test_select_applies_limit_after_filters_and_merges_newest_first() -> None:
    first = [msg("a3", at=30), msg("a1", at=10)]
    second = [msg("b4", at=40, error="X"), msg("b2", at=20)]
    merged = list(p.newest_first([first, second]))
    assert [m.id for m in merged] == ["b4", "a3", "b2", "a1"]
    chosen = p.select(merged, sel(error_types=["ConnectionError"], limit=2))
    assert [m.id for m in chosen] == ["a3", "b2"]
    assert p.missing_ids(sel(ids=["a1", "zz"]), ["a1"]) == ["zz"]


def test_groups_count_and_time_span() -> None:
    found = p.groups(
        [msg("1", at=5), msg("2", at=9, body=b"12345"), msg("3", error="ValueError", at=7)]
    )
    top = p.group_row(found[0])
    assert (top["count"], top["first_seen"], top["last_seen"], top["bytes"]) == (2, 5, 9, 7)
    assert top["fingerprint"] == p.fingerprint("emails", "ConnectionError", "max_attempts")
    assert set(top) >= {"route", "error_type", "reason", "first_seen_iso", "last_seen_iso"}


def test_summary_row_field_names_are_stable() -> None:
    row = p.summary_row(msg("a", **{h.ORIGIN_EXCHANGE: "ex", h.ORIGIN_ROUTING_KEY: b"rk"}))
    assert list(row) == [
        "id",
        "route",
        "attempts",
        "reason",
        "error_type",
        "error_message",
        "parked_at",
        "parked_at_iso",
        "size",
        "content_type",
        "origin_exchange",
        "origin_routing_key",
        "fingerprint",
        "task",
        "task_id",
    ]
    assert row["origin_routing_key"] == "rk" and row["attempts"] == 3
    json.dumps(row)


def test_previews(monkeypatch: pytest.MonkeyPatch) -> None:
    assert p.preview_body(b'{"a":[1]}', "application/json", "utf-8").kind == "json"
    assert '"a": [\n' in p.preview_body(b'{"a":[1]}', None, None).text
    assert p.preview_body("héllo".encode(), "text/plain", "utf-8").kind == "text"
    binary = p.preview_body(bytes(range(256)) + bytes(44), "application/octet-stream", "binary")
    assert binary.kind == "binary" and "44 more bytes" in binary.text
    assert binary.text.startswith("00000000  00 01 02")

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a pickle body must never be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    body = pickle.dumps({"a": 1})
    shown = p.preview_body(body, "application/x-python-serialize", "binary")
    assert shown.kind == "pickle" and shown.size == len(body)


def test_export_import_round_trip_keeps_typed_values() -> None:
    original = ParkedMessage(
        "id-1",
        "emails",
        {
            "b": b"\x00\xff",
            "t": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "d": Decimal("1.50"),
            "nested": {"l": [1, b"x", None, True]},
            h.PARKED_AT: 7,
        },
        {"content_type": "application/x-python-serialize", "priority": 3},
        b"\x80\x04K\x01.",
    )
    line = p.export_line(original)
    assert "\n" not in line and json.loads(line)["parked_at"] == 7
    assert p.import_line(line, "f:1") == original


@pytest.mark.parametrize(
    "line",
    ["not json", '{"format": "x"}', json.dumps({"format": p.EXPORT_FORMAT, "id": "a"})],
)
def test_import_line_errors_name_the_line(line: str) -> None:
    with pytest.raises(UsageError, match=r"f\.jsonl:3"):
        p.import_line(line, "f.jsonl:3")


def test_rate_limiter_spaces_messages() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    limiter = p.RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    sent_at = []
    for _ in range(21):
        limiter.wait()
        sent_at.append(now[0])
    assert sent_at[-1] - sent_at[0] == pytest.approx(2.0)
    assert limiter.batch_size(500) == 1
    assert p.RateLimiter(None).batch_size(500) == 500
    with pytest.raises(UsageError):
        p.RateLimiter(0)


def test_replay_result_dict_fields() -> None:
    result = p.ReplayResult(selected=3, replayed=1, skipped=1)
    result.fail("x", "nack")
    assert result.as_dict() == {
        "dry_run": False,
        "selected": 3,
        "replayed": 1,
        "skipped": 1,
        "failed": 1,
        "failures": [{"id": "x", "error": "nack"}],
        "missing_ids": [],
    }
