"""The parsers bench_celery.py applies to other programs' output (rabbitmqctl, /proc)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.benchmarks.celery_bench_stats import (
    QueueCounts,
    parse_queue_listing,
    parse_vm_rss_kib,
)

LISTING = """[
{"name":"bench","messages_ready":12,"messages_unacknowledged":988}
,{"name":"celery_delayed_9","messages_ready":1000,"messages_unacknowledged":0}
]
"""


def test_listing_as_rabbitmqctl_prints_it() -> None:
    assert parse_queue_listing(LISTING) == {
        "bench": QueueCounts(ready=12, unacked=988),
        "celery_delayed_9": QueueCounts(ready=1000, unacked=0),
    }
    assert parse_queue_listing(LISTING)["bench"].total == 1000


def test_listing_of_an_empty_vhost() -> None:
    assert parse_queue_listing("[\n]\n") == {}


def test_listing_odd_values_count_as_zero() -> None:
    # A quorum queue without a leader reports "" for its counts; bools and negatives are
    # not counts either.
    text = json.dumps(
        [
            {"name": "q", "messages_ready": "", "messages_unacknowledged": None},
            {"name": "r", "messages_ready": True, "messages_unacknowledged": -3},
            {"name": 7, "messages_ready": 1},
            "not a row",
        ]
    )
    assert parse_queue_listing(text) == {"q": QueueCounts(0, 0), "r": QueueCounts(0, 0)}


def test_listing_with_warning_lines_around_it() -> None:
    text = "Warning: the node is busy\n" + LISTING + "done.\n"
    assert parse_queue_listing(text) == parse_queue_listing(LISTING)


def test_listing_that_is_not_a_list_is_none_not_empty() -> None:
    # "No queues" and "could not read" must stay apart: the benchmark counts lost retries.
    assert parse_queue_listing("Error: vhost not found") is None
    assert parse_queue_listing('{"name": "q"}') is None
    assert parse_queue_listing("[") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.text())
def test_listing_never_raises_on_any_text(text: str) -> None:
    for counts in (parse_queue_listing(text) or {}).values():
        assert counts.ready >= 0 and counts.unacked >= 0


@given(json_values)
def test_listing_never_raises_on_any_json(value: object) -> None:
    parsed = parse_queue_listing(json.dumps(value))
    assert (parsed is not None) == isinstance(value, list)
    for name, counts in (parsed or {}).items():
        assert isinstance(name, str)
        assert counts.ready >= 0 and counts.unacked >= 0


def test_listing_nested_too_deep_is_none() -> None:
    assert parse_queue_listing("[" * 100_000) is None


@given(
    st.dictionaries(
        st.text(min_size=1),
        st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
        max_size=20,
    )
)
def test_listing_round_trip(queues: dict[str, tuple[int, int]]) -> None:
    text = json.dumps(
        [
            {"name": n, "messages_ready": r, "messages_unacknowledged": u}
            for n, (r, u) in queues.items()
        ]
    )
    assert parse_queue_listing(text) == {n: QueueCounts(r, u) for n, (r, u) in queues.items()}


def test_vm_rss_from_proc_status() -> None:
    status = "Name:\tcelery\nVmPeak:\t  300000 kB\nVmRSS:\t   55123 kB\nThreads:\t3\n"
    assert parse_vm_rss_kib(status) == 55123


def test_vm_rss_missing_for_a_zombie() -> None:
    assert parse_vm_rss_kib("Name:\tcelery\nState:\tZ (zombie)\n") is None
    assert parse_vm_rss_kib("VmRSS:\n") is None
    assert parse_vm_rss_kib("VmRSS:\t²³ kB\n") is None  # isdigit() would accept these


@given(st.text())
def test_vm_rss_never_raises(text: str) -> None:
    value = parse_vm_rss_kib(text)
    assert value is None or value >= 0
