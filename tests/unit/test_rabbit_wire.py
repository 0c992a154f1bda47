"""The RabbitMQ router's byte-level header reader and splicer (wire.py).

Property tests build header tables from raw AMQP field values (every type RabbitMQ and pika
know, any size, nesting, non-UTF-8 text, numbers at every boundary, unknown type octets)
and check: foreign entries come out byte for byte, x-death and the death headers are cut,
the router's headers read back, and nothing raises.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import message, wire
from dlq_router.policy import PARK_REASONS, Park, Retry, decide
from dlq_router.topology import parse_topology
from tests.conftest import route_dict
from tests.integration.rabbit_raw import AMQP_INTS

U32 = struct.Struct(">I")


def entry(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + value


def longstr(kind: bytes, data: bytes) -> bytes:
    return kind + U32.pack(len(data)) + data


def table(*entries: bytes) -> bytes:
    return b"".join(entries)


def nested_arrays(depth: int) -> bytes:
    """An array nested ``depth`` deep: each level holds the next one, the innermost is
    empty (each level is 5 bytes: ``A`` and the length of what it holds)."""
    return b"".join(b"A" + U32.pack(5 * (depth - 1 - level)) for level in range(depth))


# ---- strategies: raw field values -----------------------------------------------------

INT_KINDS = AMQP_INTS


@st.composite
def scalars(draw: Any) -> bytes:
    choice = draw(st.integers(0, 7))
    if choice == 0:
        kind, fmt, lo, hi = draw(st.sampled_from(INT_KINDS))
        n = draw(st.one_of(st.sampled_from([lo, hi, 0, lo + 1, hi - 1]), st.integers(lo, hi)))
        return kind + struct.pack(fmt, n)
    if choice == 1:
        return b"d" + struct.pack(">d", draw(st.floats(allow_nan=True, allow_infinity=True)))
    if choice == 2:
        return b"f" + struct.pack(">f", draw(st.floats(width=32, allow_nan=True)))
    if choice == 3:
        return longstr(b"S", draw(st.binary(max_size=64)))  # often not UTF-8
    if choice == 4:
        return longstr(b"S", draw(st.text(max_size=32)).encode())
    if choice == 5:
        return longstr(b"x", draw(st.binary(max_size=32)))
    if choice == 6:
        return (
            b"D"
            + bytes((draw(st.integers(0, 255)),))
            + struct.pack(">i", draw(st.integers(-(2**31), 2**31 - 1)))
        )
    return draw(st.sampled_from([b"V", b"t\x00", b"t\x01", b"t\xff"]))


def values() -> Any:
    """Scalars, tables and arrays of them, nested (built bottom-up by hypothesis)."""
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda vs: longstr(b"A", b"".join(vs))),
            st.lists(st.tuples(names(), inner), max_size=4).map(
                lambda es: longstr(b"F", b"".join(entry(n, v) for n, v in es))
            ),
        ),
        max_leaves=12,
    )


def names() -> Any:
    return st.binary(min_size=0, max_size=20).filter(lambda n: not n.startswith(b"dlq-"))


def foreign_entries() -> Any:
    return st.lists(
        st.tuples(names(), values()).filter(lambda e: e[0] not in wire._DEATH_NAMES),
        max_size=8,
    ).map(lambda es: [entry(n, v) for n, v in es])


X_DEATH = longstr(
    b"A",
    longstr(
        b"F",
        table(
            entry(b"count", b"l" + struct.pack(">q", 1)),
            entry(b"reason", longstr(b"S", b"rejected")),
            entry(b"queue", longstr(b"S", b"emails")),
            entry(b"time", b"T" + struct.pack(">Q", 2**64 - 1)),
            entry(b"exchange", longstr(b"S", b"emails")),
            entry(b"routing-keys", longstr(b"A", longstr(b"S", b"emails.high"))),
            entry(b"original-expiration", longstr(b"S", b"5000")),
        ),
    )
    + longstr(b"F", entry(b"reason", longstr(b"S", b"expired"))),
)


def props_with(table_bytes: bytes, **fields: bytes) -> wire.Properties:
    slots: list[bytes | None] = [None] * len(wire.FIELDS)
    index = {name: i for i, (name, _bit, _kind) in enumerate(wire.FIELDS)}
    for name, raw in fields.items():
        slots[index[name]] = raw
    return wire.Properties(slots, table_bytes)


def parse(data: bytes) -> wire.Properties:
    return wire.Properties.parse(data, 0, len(data))


# ---- properties ----------------------------------------------------------------------


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "content_type": st.text(max_size=20),
            "content_encoding": st.text(max_size=20),
            "delivery_mode": st.integers(0, 255),
            "priority": st.integers(0, 255),
            "correlation_id": st.text(max_size=20),
            "reply_to": st.text(max_size=20),
            "expiration": st.text(max_size=20),
            "message_id": st.text(max_size=20),
            "timestamp": st.integers(0, 2**64 - 1),
            "type": st.text(max_size=20),
            "user_id": st.text(max_size=20),
            "app_id": st.text(max_size=20),
            "cluster_id": st.text(max_size=20),
            "headers": st.dictionaries(st.text(max_size=10), st.integers(0, 9), max_size=3),
        },
    ).filter(lambda d: all(len(v.encode()) < 256 for v in d.values() if isinstance(v, str)))
)
def test_properties_round_trip_byte_for_byte(fields: dict[str, Any]) -> None:
    data = b"".join(pika.BasicProperties(**fields).encode())
    props = parse(data)
    assert b"".join(props.encode()) == data
    assert props.message_id == fields.get("message_id")


@given(st.binary(max_size=300))
def test_arbitrary_property_bytes_never_raise_past_parse_or_keep(data: bytes) -> None:
    props = wire.Properties.parse_or_keep(data, 0, len(data))
    if props.unreadable is None:
        wire.Table(props.table)  # whatever parsed must also scan
    else:
        assert props.unreadable == data


# ---- tables --------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(foreign_entries(), foreign_entries(), st.integers(0, 10**6))
def test_splice_keeps_foreign_bytes_and_cuts_death_headers(
    before: list[bytes], after: list[bytes], attempts: int
) -> None:
    death = [
        entry(b"x-death", X_DEATH),
        entry(b"x-first-death-reason", longstr(b"S", b"rejected")),
        entry(b"x-last-death-queue", longstr(b"S", b"emails")),
    ]
    ours = entry(b"dlq-attempts", b"I" + struct.pack(">i", 3))
    raw = table(*before, *death, ours, *after)
    t = wire.Table(raw)
    assert t.ours == {"dlq-attempts": 3}
    assert t.death["exchange"] == "emails" and t.death["routing-keys"] == "emails.high"
    assert t.death["reason"] == "rejected"  # the newest entry, not the second
    out = dict(t.ours)
    out[h.ROUTE] = "emails"
    out[h.LAST_FAILED_AT] = attempts
    spliced = t.splice(out)
    foreign = b"".join(before + after)
    assert spliced.startswith(foreign)  # foreign out == foreign in, in order
    rest = spliced[len(foreign) :]
    assert rest.startswith(ours)  # a dlq-* value left as it came is copied
    again = wire.Table(spliced)
    assert again.ours == {"dlq-attempts": 3, h.ROUTE: "emails", h.LAST_FAILED_AT: attempts}
    assert not again.death and again.first_death_reason is None


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_table_scan_without_raising_and_splice_back(data: bytes) -> None:
    t = wire.Table(data)
    spliced = t.splice({})
    # Without router headers, the output is the input minus dlq-*/death entries only.
    entries, _ = wire.scan(data, 0, len(data))
    cut = [e for e in entries if e[0][:4] == b"dlq-" or e[0] in wire._DEATH_NAMES]
    assert len(spliced) == len(data) - sum(end - start for _n, start, _v, end in cut)
    if not cut:
        assert spliced == data


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(
    st.sampled_from(
        [name for name in h.__dict__.values() if isinstance(name, str) and name.startswith("dlq-")]
    ),
    values(),
)
def test_any_router_header_value_ends_routed_or_parked(name: str, value: bytes) -> None:
    """Whatever a producer puts in a dlq-* header: decide() ends in a retry or a park with
    a reason, and the spliced table reads back."""
    raw = table(entry(b"x-death", X_DEATH), entry(name.encode(), value))
    t = wire.Table(raw)
    route = TOPOLOGY.routes[0]
    decision = decide(
        route,
        message.failure(t),
        now_ms=1_700_000_000_000,
        rng=random.Random(0),
        message_id="m",
        continuous_jitter=False,
    )
    assert isinstance(decision, Retry | Park)
    if isinstance(decision, Park):
        assert decision.reason in PARK_REASONS
    spliced = wire.Table(t.splice(decision.headers))
    assert spliced.ours[h.ATTEMPTS] == decision.attempts


TOPOLOGY = parse_topology(
    {"url": "amqp://guest:guest@127.0.0.1/%2F", "routes": [route_dict("emails")]},
    source="<test>",
)


# ---- the Why cases, as bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"T" + struct.pack(">Q", 2**64 - 1),  # year 584 billion
        b"T" + struct.pack(">Q", 1_795_683_600_000),  # milliseconds in a seconds field
        nested_arrays(3000),
        nested_arrays(100_000),
        b"d" + struct.pack(">d", float("nan")),
        b"Z\x00\x01",  # a type octet nobody knows: the rest is kept as one blob
    ],
    ids=["T-max", "T-ms", "A-3000", "A-100000", "d-nan", "unknown"],
)
def test_hostile_foreign_values_pass_through(value: bytes) -> None:
    task, hostile = entry(b"task", longstr(b"S", b"t")), entry(b"hostile", value)
    spliced = wire.Table(task + hostile).splice({h.ROUTE: "r"})
    ours = wire.encode_entry(h.ROUTE, "r")
    if value[:1] == b"Z":  # cannot be sized: kept as an opaque tail after the router's
        assert spliced == task + ours + hostile
    else:
        assert spliced == task + hostile + ours
    assert wire.Table(spliced).ours.get(h.ROUTE) == "r"


def test_double_in_attempts_is_a_float_not_an_int() -> None:
    t = wire.Table(entry(b"dlq-attempts", b"d" + struct.pack(">d", 2.5)))
    assert t.ours["dlq-attempts"] == 2.5 and isinstance(t.ours["dlq-attempts"], float)


def test_x_death_reading_is_tolerant() -> None:
    for bad in (longstr(b"S", b"garbage"), longstr(b"A", b""), longstr(b"A", b"S\x00")):
        t = wire.Table(
            entry(b"x-death", bad) + entry(b"x-first-death-reason", longstr(b"S", b"maxlen"))
        )
        f = message.failure(t)
        assert f.origin_exchange is None and f.death_reason == "maxlen"


@pytest.mark.parametrize(
    ("value", "wire_kind"),
    [
        (0, b"I"),
        (2**31, b"l"),
        (-(2**63), b"l"),
        (2**63, b"S"),
        (2.5, b"d"),
        (True, b"t"),
        (None, b"V"),
        ("é", b"S"),
        (b"\xff", b"S"),
    ],
)
def test_router_values_encode_without_raising(value: Any, wire_kind: bytes) -> None:
    data = wire.encode_value(value)
    assert data[:1] == wire_kind
    assert wire.value_end(data, 0, len(data)) == len(data)


def test_publish_id_of_a_returned_message() -> None:
    props = props_with(entry(b"x", b"V") + wire.encode_entry(h.PUBLISH_ID, 42))
    assert wire.publish_id(props.table) == 42
    assert wire.publish_id(props_with(b"").table) is None
