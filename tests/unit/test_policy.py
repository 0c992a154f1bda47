"""The pure retry policy: tiers, attempts, parking reasons, header hygiene."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.policy import Failure, Park, Retry, decide, is_non_retryable, reset_for_replay
from dlq_router.topology import Route

NOW = 1_800_000_000_000


def route(**retry: Any) -> Route:
    policy = {"delays": [200, 400, 800], "max_attempts": 4, **retry}
    return Route.model_validate(
        {"name": "emails", "exchange": "emails", "retry": policy, "non_retryable": ["ValueError"]}
    )


ORIGIN = {h.ORIGIN_EXCHANGE: "emails", h.ORIGIN_ROUTING_KEY: "emails"}


def run(headers: dict[str, Any], r: Route | None = None, **failure: Any) -> Retry | Park:
    return decide(
        r or route(),
        Failure(headers=headers, **failure),
        now_ms=NOW,
        rng=random.Random(7),
        message_id="id-1",
        continuous_jitter=False,
    )


@pytest.mark.parametrize(("previous", "tier", "delay"), [(0, 0, 200), (1, 1, 400), (2, 2, 800)])
def test_each_failure_moves_to_the_next_tier(previous: int, tier: int, delay: int) -> None:
    d = run({**ORIGIN, h.ATTEMPTS: previous})
    assert isinstance(d, Retry)
    assert (d.attempts, d.tier, d.delay_ms, d.due_at_ms) == (previous + 1, tier, delay, NOW + delay)
    assert d.headers[h.ATTEMPTS] == previous + 1
    assert d.headers[h.RETRY_DUE_AT] == NOW + delay


def test_last_tier_repeats_until_max_attempts() -> None:
    d = run({**ORIGIN, h.ATTEMPTS: 2}, route(delays=[200, 400], max_attempts=5))
    assert isinstance(d, Retry) and d.tier == 1
    d = run({**ORIGIN, h.ATTEMPTS: 3}, route(delays=[200, 400], max_attempts=5))
    assert isinstance(d, Retry) and d.tier == 1


def test_exhausted_attempts_park_with_metadata() -> None:
    d = run({**ORIGIN, h.ATTEMPTS: 3, h.FIRST_FAILED_AT: NOW - 5000, h.ERROR_TYPE: "IOError"})
    assert isinstance(d, Park) and d.reason == "max_attempts"
    assert d.headers[h.PARK_REASON] == "max_attempts"
    assert d.headers[h.FIRST_FAILED_AT] == NOW - 5000
    assert d.headers[h.LAST_FAILED_AT] == NOW
    assert d.headers[h.PARKED_AT] == NOW
    assert d.headers[h.ID] == "id-1"


def test_non_retryable_parks_on_first_failure() -> None:
    for error in ("ValueError", "builtins.ValueError", b"ValueError"):
        d = run({**ORIGIN, h.ERROR_TYPE: error})
        assert isinstance(d, Park) and d.reason == "non_retryable" and d.attempts == 1


def test_non_retryable_matching() -> None:
    assert is_non_retryable("myapp.errors.Permanent", ["myapp.errors.Permanent"])
    assert not is_non_retryable("other.Permanent", ["myapp.errors.Permanent"])
    assert is_non_retryable("pkg.ValueError", ["ValueError"])
    assert not is_non_retryable(None, ["ValueError"])


def short(value: Any) -> str:
    """A test id for any value (repr() refuses a 5,000-digit int)."""
    try:
        return repr(value)[:40]
    except ValueError:
        return f"<{type(value).__name__}>"


HOSTILE_ATTEMPTS = [
    "abc", -1, True, 1.5, b"x1",
    # issue 10: "²".isdigit() is true but int("²") raised out of the policy
    "\u00b2", b"\xc2\xb2", "1\u00b2",
    2.0, 2.5, float("inf"), float("nan"), 1e400, Decimal("2"), dt.datetime(2026, 1, 1),
    2**31 - 1, 2**63 - 1, 2**64, 10**5000, "9" * 5000, "1e3", "+1", "0x1", " ", [1], {"n": 1},
]  # fmt: skip


@pytest.mark.parametrize("bad", HOSTILE_ATTEMPTS, ids=short)
def test_attempts_of_wrong_type_park_as_invalid_header(bad: Any) -> None:
    d = run({**ORIGIN, h.ATTEMPTS: bad})
    assert isinstance(d, Park) and d.reason == "invalid_header"
    assert d.attempts == 1 and d.headers[h.ATTEMPTS] == 1
    assert "dlq-invalid-attempts" in d.headers
    assert len(d.headers["dlq-invalid-attempts"]) <= 100


def test_largest_attempts_value_is_read() -> None:
    d = run({**ORIGIN, h.ATTEMPTS: 2**31 - 2})
    assert isinstance(d, Park) and d.reason == "max_attempts" and d.attempts == 2**31 - 1


@pytest.mark.parametrize("bad", ["\u00b2", 2**64 - 1, 253_402_300_800_000, 1.5, -1, "x"])
def test_unusable_first_failed_at_is_stamped_again(bad: Any) -> None:
    d = run({**ORIGIN, h.FIRST_FAILED_AT: bad})
    assert isinstance(d, Retry) and d.headers[h.FIRST_FAILED_AT] == NOW


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, 7, ["id"], "bell\x07", None])
def test_implausible_dlq_id_is_replaced(given: Any) -> None:
    d = run({h.ID: given})
    assert isinstance(d, Park) and d.headers[h.ID] == "id-1"


def test_plausible_dlq_id_is_kept_across_parks() -> None:
    d = run({h.ID: b"0123abcd-ef"})
    assert isinstance(d, Park) and d.headers[h.ID] == "0123abcd-ef"


def test_numeric_text_attempts_are_accepted() -> None:
    d = run({**ORIGIN, h.ATTEMPTS: "1"})
    assert isinstance(d, Retry) and d.attempts == 2


def test_no_origin_parks_and_x_death_origin_retries() -> None:
    assert isinstance(d := run({}), Park) and d.reason == "no_origin"
    d = run({}, origin_exchange="emails", origin_routing_key="emails", death_reason="rejected")
    assert isinstance(d, Retry)
    assert d.headers[h.ORIGIN_EXCHANGE] == "emails"
    assert d.headers[h.DEATH_REASON] == "rejected"


def test_own_origin_headers_win_over_x_death() -> None:
    d = run(ORIGIN, origin_exchange="emails.retry", origin_routing_key="emails.retry.200ms")
    assert d.headers[h.ORIGIN_EXCHANGE] == "emails"
    assert d.headers[h.ORIGIN_ROUTING_KEY] == "emails"


def test_broker_death_headers_are_stripped_and_foreign_kept() -> None:
    incoming = {
        **ORIGIN,
        "x-death": [{"count": 1}],
        "x-first-death-reason": "rejected",
        "x-last-death-queue": "emails",
        "task": "tasks.send",
        "retries": 0,
    }
    d = run(incoming)
    assert not set(d.headers) & h.BROKER_DEATH_HEADERS
    assert d.headers["task"] == "tasks.send" and d.headers["retries"] == 0
    assert "x-death" in incoming  # the input is not mutated


def test_long_error_message_is_truncated() -> None:
    d = run({**ORIGIN, h.ERROR_MESSAGE: "e" * 10_000})
    assert len(d.headers[h.ERROR_MESSAGE]) == h.MAX_ERROR_MESSAGE
    assert "truncated" in d.headers[h.ERROR_MESSAGE]


def test_jitter_lanes_stay_within_the_band() -> None:
    r = route(jitter=0.2, jitter_lanes=4)
    rng = random.Random(1)
    lanes = set()
    for _ in range(200):
        d = decide(
            r,
            Failure(headers=ORIGIN),
            now_ms=NOW,
            rng=rng,
            message_id="x",
            continuous_jitter=False,
        )
        assert isinstance(d, Retry) and 160 <= d.delay_ms <= 240
        lanes.add(d.lane)
    assert lanes == {0, 1, 2, 3}


def test_retry_after_park_drops_stale_park_headers() -> None:
    d = run({**ORIGIN, h.PARK_REASON: "max_attempts", h.PARKED_AT: 1, h.PARK_DETAIL: "x"})
    assert isinstance(d, Retry)
    assert not {h.PARK_REASON, h.PARKED_AT, h.PARK_DETAIL} & set(d.headers)


def test_reset_for_replay() -> None:
    parked = run({**ORIGIN, h.ATTEMPTS: 3, "x-death": []}).headers
    parked[h.PUBLISH_ID] = 9
    fresh = reset_for_replay(parked, keep_attempts=False)
    assert h.ATTEMPTS not in fresh and h.PARK_REASON not in fresh and h.PUBLISH_ID not in fresh
    assert reset_for_replay(parked, keep_attempts=True)[h.ATTEMPTS] == 4
