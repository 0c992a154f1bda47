"""Replay's header reset on bytes (replaywire.Reset) against the policy on decoded headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import replaywire, wire
from dlq_router.policy import reset_for_replay

NAMES = [
    "task",
    "id",
    "x-death",
    "x-first-death-reason",
    "x-last-death-queue",
    "x-custom",
    "dlq-custom",
    h.ID,
    h.ROUTE,
    h.ATTEMPTS,
    h.PARKED_AT,
    h.PARK_REASON,
    h.PARK_DETAIL,
    h.PUBLISH_ID,
    h.RETRY_TIER,
    h.ERROR_TYPE,
    "dlq-invalid-attempts",
]
VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.text(max_size=20),
    st.binary(max_size=8).map(wire.Raw),
)


def entries(table: bytes) -> list[tuple[str, bytes]]:
    found, readable = wire.scan(table, 0, len(table))
    assert readable == len(table)
    return [(name.decode(), table[start:stop]) for name, start, _v, stop in found]


def encode(pairs: list[tuple[str, object]]) -> bytes:
    out = []
    for name, value in pairs:
        if isinstance(value, wire.Raw):  # a foreign value the router never reads
            value = wire.Raw(b"x" + len(value.data).to_bytes(4, "big") + value.data)
        out.append(wire.encode_entry(name, value))
    return b"".join(out)


@given(
    pairs=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=14),
    keep=st.booleans(),
    seq=st.integers(1, 2**40),
)
def test_reset_cuts_exactly_what_the_policy_drops(
    pairs: list[tuple[str, object]], keep: bool, seq: int
) -> None:
    table = encode(pairs)
    out = replaywire.Reset(keep_attempts=keep).table(table, seq)
    got = entries(out)
    kept = reset_for_replay(dict(entries(table)), keep_attempts=keep)
    # every entry the policy keeps (duplicates included), bytes unchanged, in order; then ours
    assert got[:-1] == [(n, e) for n, e in entries(table) if n in kept]
    name, stamp = got[-1]
    assert name == h.PUBLISH_ID
    assert wire.read_value(stamp, 1 + len(name), len(stamp)) == seq


def test_no_table_and_an_unreadable_tail() -> None:
    reset = replaywire.Reset(keep_attempts=False)
    assert entries(reset.table(None, 7)) == [(h.PUBLISH_ID, wire.encode_entry(h.PUBLISH_ID, 7))]
    head = encode([("task", "t"), (h.PARKED_AT, 5)])
    tail = b"\x03bad?rest"  # an entry of unknown type: nothing after it can be sized
    out = reset.table(head + tail, 7)
    assert out == encode([("task", "t")]) + wire.encode_entry(h.PUBLISH_ID, 7) + tail


def test_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replaywire, "CACHE_MAX", 4)
    reset = replaywire.Reset(keep_attempts=False)
    for i in range(10):
        reset.table(encode([(f"n{i}", 1), (h.PARKED_AT, 1)]), 1)
        assert len(reset.drops) <= 4


def test_content_replaces_only_the_table() -> None:
    fields: list[bytes | None] = [None] * len(wire.FIELDS)
    fields[0] = b"\x04json"
    fields[wire.MESSAGE_ID] = b"\x02m1"
    props = wire.Properties(fields, b"old")
    encoded = replaywire.content(props, b"new!")
    back = wire.Properties.parse(encoded, 0, len(encoded))
    assert back.table == b"new!" and back.fields == fields and props.table == b"old"
    assert replaywire.republishable(props)
    props.unreadable = b"?"
    assert not replaywire.republishable(props)


@given(st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6), st.binary(max_size=40))
def test_walk_reads_what_wire_scan_reads(pairs: list[tuple[str, object]], junk: bytes) -> None:
    for table in (encode(pairs) + junk, junk):
        entries_, readable = wire.scan(table, 0, len(table))
        names, stops = replaywire.walk(table)
        assert names == [name for name, _s, _v, _e in entries_]
        assert stops == [stop for _n, _s, _v, stop in entries_]
        assert (stops[-1] if stops else 0) == readable


def test_every_type_octet_is_sized_as_wire_sizes_it() -> None:
    for kind in range(256):
        value = bytes((kind,)) + b"\x00\x00\x00\x02" + b"ab" + bytes(8)
        table = b"\x01k" + value
        stop = wire.value_end(table, 2, len(table))
        assert replaywire.walk(table)[1] == ([stop] if stop > 0 else []), chr(kind)
