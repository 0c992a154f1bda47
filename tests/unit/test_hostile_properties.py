"""Property tests (hypothesis) over what producers control: header values the policy reads,
and the raw dead letters the Redis router parses. Every input ends routed (a retry), parked
with a reason, or refused as malformed; nothing raises and nothing is a ``router_error``
(that reason is for bugs, and these inputs are only hostile).
"""

from __future__ import annotations

import base64
import json
import random
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlq_router import headers as h
from dlq_router import numbers
from dlq_router.backends.base import RouterContext
from dlq_router.backends.redis import envelope
from dlq_router.backends.redis.mover import Mover
from dlq_router.backends.redis.router import Claimer
from dlq_router.metrics import Metrics
from dlq_router.policy import PARK_REASONS, Failure, Park, Retry, decide
from dlq_router.topology import Route, parse_topology

NOW = 1_800_000_000_000
SETTINGS = settings(
    max_examples=150,
    deadline=None,  # a shared, loaded machine: time is not the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Numbers at every boundary the readers have, and the values issue 10 found.
BOUNDARY_NUMBERS: list[Any] = [
    0, 1, -1, 2**31 - 2, 2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
    10**30, numbers.MAX_TIMESTAMP_MS, numbers.MAX_TIMESTAMP_MS + 1, 1_795_683_600_000,
    0.0, -0.0, 2.0, 2.5, 1e308, float("inf"), float("-inf"), float("nan"),
    Decimal("2"), Decimal("NaN"), Decimal("1e400"), True, False,
    "\u00b2", "\u0663", "\uff13", "1\u00b2", " 7 ", "+1", "-1", "1e3", "9" * 30, "9" * 5000,
    b"\xc2\xb2", b"\xff", b"3",
]  # fmt: skip
HEADER_NAMES = [
    h.ATTEMPTS, h.FIRST_FAILED_AT, h.ERROR_TYPE, h.ERROR_MESSAGE, h.ORIGIN_EXCHANGE,
    h.ORIGIN_ROUTING_KEY, h.ORIGIN_QUEUE, h.ID, h.PARK_REASON, h.PARKED_AT, h.RETRY_DUE_AT,
    "x-death", "x-first-death-reason", "task", "id",
]  # fmt: skip


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.decimals(),
    st.text(),
    st.binary(),
    st.datetimes(),
    st.sampled_from(BOUNDARY_NUMBERS),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
) | st.sampled_from([1, 50, 999, 3000]).map(nested)
header_maps = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=12), values, max_size=10
)


def make_route(max_attempts: int) -> Route:
    return Route.model_validate(
        {
            "name": "emails",
            "exchange": "emails",
            "retry": {"delays": [200, 400, 800], "max_attempts": max_attempts, "jitter": 0.1},
            "non_retryable": ["ValueError"],
        }
    )


@SETTINGS
@given(
    headers=header_maps,
    origin=st.none() | st.text(max_size=10),
    death=st.none() | st.text(max_size=10),
    max_attempts=st.integers(min_value=1, max_value=10),
    continuous=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_policy_decides_any_header_values_without_raising(
    headers: dict[str, Any],
    origin: str | None,
    death: str | None,
    max_attempts: int,
    continuous: bool,
    seed: int,
) -> None:
    before = list(headers)
    failure = Failure(headers, origin, origin, origin, death)
    route = make_route(max_attempts)
    d = decide(
        route,
        failure,
        now_ms=NOW,
        rng=random.Random(seed),
        message_id="fresh-id",
        continuous_jitter=continuous,
    )
    assert list(headers) == before  # the input is never mutated
    assert 1 <= d.attempts <= numbers.MAX_ATTEMPTS + 1
    assert d.headers[h.ATTEMPTS] == d.attempts
    if isinstance(d, Park):
        assert d.reason in PARK_REASONS and d.reason != "router_error"
        assert h.read_id(d.headers[h.ID]) == d.headers[h.ID]
        assert len(d.headers[h.PARK_DETAIL]) <= 512
        if (
            numbers.attempts(headers.get(h.ATTEMPTS)) is None
            and headers.get(h.ATTEMPTS) is not None
        ):
            assert d.reason == "invalid_header"
    else:
        assert isinstance(d, Retry)
        assert d.attempts < max_attempts
        assert d.due_at_ms == NOW + d.delay_ms and d.delay_ms >= 1
        assert numbers.timestamp_ms(d.headers[h.FIRST_FAILED_AT]) is not None


@SETTINGS
@given(value=values)
def test_number_readers_answer_in_range_or_none(value: Any) -> None:
    for read, top in (
        (numbers.attempts, numbers.MAX_ATTEMPTS),
        (numbers.timestamp_ms, numbers.MAX_TIMESTAMP_MS),
        (numbers.sequence, numbers.MAX_SEQUENCE),
    ):
        n = read(value)
        assert n is None or (type(n) is int and 0 <= n <= top)
    assert 0 <= numbers.priority(value) <= numbers.MAX_PRIORITY
    assert isinstance(h.show_value(value), str)
    text = h.as_text(value)
    assert text is None or isinstance(text, str)


@SETTINGS
@given(n=st.integers(min_value=0, max_value=numbers.MAX_ATTEMPTS), pad=st.sampled_from(["", " "]))
def test_whole_numbers_read_the_same_as_int_text_or_bytes(n: int, pad: str) -> None:
    assert numbers.attempts(n) == numbers.attempts(f"{pad}{n}{pad}") == n
    assert numbers.attempts(str(n).encode()) == n


# ---- the Redis envelope parser, through the router's own per-message decision ------------

TOPOLOGY = parse_topology(
    {
        "url": "redis://127.0.0.1:6379/0",  # never connected: decide() is pure
        "routes": [
            {
                "name": "emails",
                "exchange": "emails",
                "retry": {"delays": [200, 400], "max_attempts": 3},
                "non_retryable": ["ValueError"],
            }
        ],
    },
    source="<test>",
)
CTX = RouterContext(metrics=Metrics(), clock=lambda: NOW / 1000)
CLAIMER = Claimer(TOPOLOGY, CTX, Mover(TOPOLOGY, CTX, priorities=True))
RK = CLAIMER.routes[0]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from([n for n in BOUNDARY_NUMBERS if isinstance(n, int | str)]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Text spliced in place of one JSON value: what json.dumps never writes but a producer can.
RAW_VALUES = [
    "1e400",
    "-1e400",
    "Infinity",
    "-Infinity",
    "NaN",
    "1" * 5000,
    "[" * 5000 + "]" * 5000,
]


@st.composite
def kombu_like(draw: st.DrawFn) -> bytes:
    props: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    if draw(st.booleans()):
        props["priority"] = draw(json_values)
    if draw(st.booleans()):
        props["delivery_info"] = draw(
            st.dictionaries(st.sampled_from(["exchange", "routing_key"]), json_values) | json_values
        )
    env: dict[str, Any] = {"body": draw(json_values), "properties": props}
    if draw(st.booleans()):
        env["headers"] = draw(
            st.dictionaries(st.sampled_from(HEADER_NAMES) | st.text(max_size=8), json_values)
            | json_values
        )
    if draw(st.integers(0, 9)) == 0:
        env = draw(json_values)  # not even an object
    text = json.dumps(env, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # splice a value json.dumps would never write
        marker = draw(st.sampled_from(['"priority": ', '"dlq-attempts": ', '"body": ']))
        if marker in text:
            raw_value = draw(st.sampled_from(RAW_VALUES))
            start = text.index(marker) + len(marker)
            # the value that was there becomes the value of "x-spliced"
            text = text[:start] + raw_value + ', "x-spliced": ' + text[start:]
    data = text.encode()
    cut = draw(st.integers(0, 20))
    if cut == 0:  # truncated, or with bytes that are not UTF-8
        data = data[: draw(st.integers(0, len(data)))]
    elif cut == 1:
        data = data + draw(st.binary(min_size=1, max_size=8))
    return data


def check_item(raw: bytes) -> None:
    item = CLAIMER.decide(RK, "claim0001", raw, NOW)
    assert item.label != "router_error", item
    if item.op == "r":
        assert item.payload[0] in "0369"
        env = envelope.parse(item.payload[1:].encode())  # strict JSON out, always
        assert numbers.timestamp_ms(item.arg) is not None
        return
    assert item.op == "p" and item.label in PARK_REASONS
    env = envelope.parse(item.payload.encode())
    assert env.headers[h.ID] == item.arg and h.read_id(item.arg) == item.arg
    assert env.headers[h.PARK_REASON] == item.label
    if item.label == "malformed":  # the raw bytes are kept as they came
        assert base64.b64decode(env.data["body"]) == raw
    assert item.rebuild is not None
    again = envelope.parse(item.rebuild("other-id").encode())
    assert again.headers[h.ID] == "other-id"


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_redis_router_decides_any_bytes(raw: bytes) -> None:
    check_item(raw)


@SETTINGS
@given(raw=kombu_like())
def test_redis_router_decides_any_kombu_like_envelope(raw: bytes) -> None:
    check_item(raw)
