"""The console's outside input: query strings, form fields and cookies. Whatever arrives is
either accepted or one ``SelectorError``; a cookie or CSRF field not made by this console
never passes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlq_router.console.forms import MAX_PAGE, Filters, page_number, rate
from dlq_router.console.security import Guard
from dlq_router.errors import SelectorError
from dlq_router.topology import parse_topology

TOPOLOGY = parse_topology(
    {
        "url": "redis://127.0.0.1:6379/0",
        "routes": [{"name": "emails", "retry": {"delays": ["1s"], "max_attempts": 2}}],
    }
)
text = st.text(max_size=40)


@given(
    st.dictionaries(
        st.sampled_from(
            ["error_type", "reason", "older_than", "newer_than", "group", "id", "other"]
        ),
        text,
    )
)
def test_any_filter_fields_give_a_selector_or_one_selector_error(data: dict[str, str]) -> None:
    filters = Filters.read(data)
    try:
        sel = filters.selector(TOPOLOGY, "emails", limit=50)
    except SelectorError as exc:
        assert str(exc)
    else:
        assert sel.routes == ("emails",) and sel.limit == 50


def test_filters_examples() -> None:
    sel = Filters.read({"error_type": "ValueError, KeyError", "older_than": "1h"}).selector(
        TOPOLOGY, "emails"
    )
    assert sel.error_types == ("ValueError", "KeyError") and sel.older_than_ms == 3_600_000
    with pytest.raises(SelectorError, match="--reason"):
        Filters.read({"reason": "nope"}).selector(TOPOLOGY, "emails")
    with pytest.raises(SelectorError, match="no such route"):
        Filters().selector(TOPOLOGY, "other")


@given(st.one_of(st.none(), text))
def test_page_number_and_rate_accept_or_refuse_cleanly(value: str | None) -> None:
    for parse in (page_number, rate):
        try:
            got = parse(value)
        except SelectorError:
            continue
        if parse is page_number:
            assert got is not None and 1 <= got <= MAX_PAGE
        else:
            assert got is None or got > 0


def test_rate_and_page_examples() -> None:
    assert rate("") is None and rate("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(SelectorError):
            rate(bad)
    assert page_number(None) == 1 and page_number("3") == 3
    with pytest.raises(SelectorError):
        page_number(str(MAX_PAGE + 1))


@given(st.one_of(st.none(), text), st.one_of(st.none(), text))
def test_foreign_cookies_and_csrf_fields_never_pass(cookie: str | None, field: str | None) -> None:
    guard = Guard("a-long-enough-token")
    assert guard.session(cookie) is None
    assert not guard.csrf_ok(guard.session(cookie), field)
    assert not guard.token_ok(field) or field == "a-long-enough-token"


def test_sessions_and_tokens() -> None:
    guard, other = Guard("a-long-enough-token"), Guard("a-long-enough-token")
    cookie = guard.new_session()
    sid = guard.session(cookie)
    assert sid is not None and guard.csrf_ok(sid, guard.csrf(sid))
    assert other.session(cookie) is None  # another process (or a restart) signs it out
    assert not guard.csrf_ok(sid, other.csrf(sid))
    assert guard.bearer_ok("Bearer a-long-enough-token")
    assert not guard.bearer_ok("Bearer wrong") and not guard.bearer_ok(None)
    assert not Guard(None).token_ok("")
