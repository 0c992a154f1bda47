"""The pure part of the Celery drop-in: the dead letter's headers and the park prediction."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dlq_router import headers as h
from dlq_router import policy
from dlq_router.celery import failure
from dlq_router.topology import parse_topology


class PermanentError(Exception):
    pass


ROUTE = parse_topology(
    {
        "routes": [
            {
                "name": "emails",
                "exchange": "emails",
                "retry": {"delays": ["1s", "2s"], "max_attempts": 3},
                "non_retryable": ["ValueError", f"{__name__}.PermanentError"],
            }
        ]
    }
).routes[0]


def test_error_type_is_dotted_except_for_builtins() -> None:
    assert failure.error_type(ValueError("x")) == "ValueError"
    assert failure.error_type(PermanentError()) == f"{__name__}.PermanentError"


def test_error_type_of_an_unpicklable_exception_wrapper() -> None:
    class Wrapper(Exception):
        exc_module = "myapp.errors"
        exc_cls_name = "Boom"
        exc_message = ("it", "broke")

    assert failure.error_type(Wrapper()) == "myapp.errors.Boom"
    assert failure.error_message(Wrapper()) == "it broke"


def test_traceback_keeps_its_end() -> None:
    text = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "ValueError: boom"
    cut = failure.truncate_traceback(text)
    assert len(cut) == failure.MAX_TRACEBACK
    assert cut.endswith("ValueError: boom") and cut.startswith("[... ")


def test_dead_letter_headers_keep_everything_but_the_delivery_count() -> None:
    incoming = {"id": "t-1", "task": "app.send", "dlq-attempts": 1, "x-delivery-count": 2}
    out = failure.dead_letter_headers(
        incoming, ValueError("bad"), "tb", origin=("emails", "emails"), queue="emails"
    )
    assert out["id"] == "t-1" and out["task"] == "app.send" and out[h.ATTEMPTS] == 1
    assert failure.DELIVERY_COUNT not in out
    assert out[h.ERROR_TYPE] == "ValueError" and out[h.ERROR_MESSAGE] == "bad"
    assert out[failure.TRACEBACK] == "tb"
    assert (out[h.ORIGIN_EXCHANGE], out[h.ORIGIN_ROUTING_KEY]) == ("emails", "emails")
    assert incoming["x-delivery-count"] == 2  # the input is not changed


def test_the_first_origin_wins() -> None:
    incoming = {h.ORIGIN_EXCHANGE: "first", h.ORIGIN_ROUTING_KEY: "k"}
    out = failure.dead_letter_headers(
        incoming, RuntimeError(), None, origin=("second", "k2"), queue="q"
    )
    assert (out[h.ORIGIN_EXCHANGE], out[h.ORIGIN_ROUTING_KEY]) == ("first", "k")


def test_redis_leaves_the_origin_to_the_router() -> None:
    out = failure.dead_letter_headers({}, RuntimeError(), None, origin=None, queue="q")
    assert h.ORIGIN_EXCHANGE not in out


def test_will_park_follows_the_policy() -> None:
    def park(attempts: int | None, exc: BaseException) -> bool:
        incoming: dict[str, Any] = {} if attempts is None else {h.ATTEMPTS: attempts}
        out = failure.dead_letter_headers(incoming, exc, None, origin=None, queue="emails")
        return failure.will_park(ROUTE, out, "emails")

    assert not park(None, RuntimeError())  # failure 1 of 3: retry
    assert not park(1, RuntimeError())  # failure 2 of 3: retry
    assert park(2, RuntimeError())  # failure 3 of 3: park
    assert park(None, ValueError())  # non-retryable: park at once
    assert park(None, PermanentError())


def test_redeliveries_only_count_on_a_redelivery() -> None:
    assert failure.redeliveries({"x-delivery-count": 3}, True) == 3
    assert failure.redeliveries({"x-delivery-count": 3}, False) == 0  # stale copy
    assert failure.redeliveries({"x-delivery-count": "3"}, True) == 0
    assert failure.redeliveries({"x-delivery-count": True}, True) == 0
    assert failure.redeliveries({}, True) == 0


def test_route_match() -> None:
    r = ROUTE
    match = failure.RouteMatch({("emails", "emails"): r}, {"fan": r})
    assert match.find("emails", "emails") is r
    assert match.find("fan", "anything") is r
    assert match.find("emails", "other") is None
    assert match.find(None, None) is None


header_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


@given(
    incoming=st.dictionaries(st.text(max_size=20), header_values, max_size=8),
    attempts=header_values,
    count=header_values,
    redelivered=st.booleans(),
)
def test_any_incoming_headers_give_a_decision(
    incoming: dict[str, Any], attempts: Any, count: Any, redelivered: bool
) -> None:
    incoming = {**incoming, h.ATTEMPTS: attempts, failure.DELIVERY_COUNT: count}
    out = failure.dead_letter_headers(
        incoming, RuntimeError("x"), "tb", origin=("emails", "emails"), queue="emails"
    )
    assert failure.DELIVERY_COUNT not in out
    assert isinstance(failure.will_park(ROUTE, out, "emails"), bool)
    assert failure.redeliveries(incoming, redelivered) >= 0
    # the prediction is the router's own decision
    decision = policy.decide(
        ROUTE,
        policy.Failure(out, "emails", "emails", "emails"),
        now_ms=1,
        rng=random.Random(1),
        message_id="m",
        continuous_jitter=False,
    )
    assert isinstance(decision, policy.Park) == failure.will_park(ROUTE, out, "emails")
