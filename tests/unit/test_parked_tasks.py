"""Parked Celery tasks: task name and id in rows and groups, ``--task``, stable fingerprints."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlq_router import headers as h
from dlq_router import parking as p
from dlq_router.backends.base import ParkedMessage
from dlq_router.errors import SelectorError

ROUTES = ["emails"]


def parked(
    msg_id: str, headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None
) -> ParkedMessage:
    base = {h.ERROR_TYPE: "RuntimeError", h.PARK_REASON: "max_attempts", h.PARKED_AT: 1}
    return ParkedMessage(msg_id, "emails", {**base, **(headers or {})}, properties or {}, b"")


def celery(msg_id: str, task: str, task_id: str) -> ParkedMessage:
    return parked(msg_id, {"task": task, "id": task_id}, {"correlation_id": task_id})


def test_task_name_and_id_from_celery_headers() -> None:
    row = p.summary_row(celery("p1", "app.send", "t-1"))
    assert (row["task"], row["task_id"]) == ("app.send", "t-1")


def test_plain_messages_fall_back_to_message_id_then_correlation_id() -> None:
    assert p.task_id(parked("p", properties={"message_id": "m", "correlation_id": "c"})) == "m"
    assert p.task_id(parked("p", properties={"correlation_id": "c"})) == "c"
    assert p.task_id(parked("p")) == ""
    # an `id` header without Celery's `task` header is not taken for a task id
    assert p.task_id(parked("p", {"id": "x"}, {"message_id": "m"})) == "m"
    assert p.task_name(parked("p")) == ""
    assert p.task_id(parked("p", {"task": "a", "id": b"bytes-id"})) == "bytes-id"


def test_fingerprint_of_messages_without_a_task_is_unchanged() -> None:
    # Pinned: groups of plain messages keep the fingerprint of earlier versions.
    import hashlib

    old = hashlib.sha1(b"emails\0ConnectionError\0max_attempts").hexdigest()[:12]
    assert p.fingerprint("emails", "ConnectionError", "max_attempts") == old
    plain = p.message_fingerprint(parked("p"))
    assert plain == p.fingerprint("emails", "RuntimeError", "max_attempts")
    task = p.message_fingerprint(celery("c", "app.send", "t"))
    assert task != plain and task == p.fingerprint(
        "emails", "RuntimeError", "max_attempts", "app.send"
    )


def test_groups_split_by_task() -> None:
    messages = [celery("1", "app.send", "a"), celery("2", "app.send", "b")]
    found = p.groups([*messages, celery("3", "app.bill", "c"), parked("4")])
    rows = [p.group_row(g) for g in found]
    assert [(r["task"], r["count"]) for r in rows] == [("app.send", 2), ("app.bill", 1), ("", 1)]
    assert rows[0]["fingerprint"] == p.message_fingerprint(celery("1", "app.send", "a"))
    summary = p.summarize([celery("1", "app.send", "a"), celery("3", "app.bill", "c")])
    assert sorted(g.task for g in summary.groups()) == ["app.bill", "app.send"]


def test_task_selector() -> None:
    selector = p.parse_selector(known_routes=ROUTES, tasks=["app.send", "app.send"])
    assert selector.tasks == ("app.send",) and selector.has_filter and selector.header_filters
    assert selector.matches(celery("1", "app.send", "a"))
    assert not selector.matches(celery("2", "app.bill", "b"))
    assert not selector.matches(parked("3"))
    with pytest.raises(SelectorError, match="--task"):
        p.parse_selector(known_routes=ROUTES, tasks=[" "])
    with pytest.raises(SelectorError, match="--task"):
        p.parse_selector(known_routes=ROUTES).require_choice("replay")


@given(
    task=st.one_of(st.none(), st.text(), st.binary(), st.integers()),
    task_id=st.one_of(st.none(), st.text(), st.binary(), st.integers()),
    props=st.dictionaries(
        st.sampled_from(["message_id", "correlation_id"]), st.one_of(st.text(), st.binary())
    ),
)
def test_any_header_values_give_text(task: Any, task_id: Any, props: dict[str, Any]) -> None:
    headers = {k: v for k, v in (("task", task), ("id", task_id)) if v is not None}
    msg = parked("p", headers, props)
    assert isinstance(p.task_name(msg), str) and isinstance(p.task_id(msg), str)
    row = p.summary_row(msg)
    assert isinstance(row["task"], str) and isinstance(row["task_id"], str)
    assert len(p.message_fingerprint(msg)) == p.FINGERPRINT_LENGTH


def test_router_logs_name_the_task() -> None:
    from dlq_router.parking.messages import describe_envelope, describe_message

    assert describe_message({"task": "app.send", "id": "t-1"}, "m") == "task app.send[t-1]"
    assert describe_message({}, "m-1") == "message_id=m-1"
    envelope = '{"headers": {"task": "app.send", "id": "t-2"}, "properties": {}}'
    assert describe_envelope(envelope) == "task app.send[t-2]"
    assert describe_envelope('{"properties": {"correlation_id": "c"}}') == "message_id=c"
    assert describe_envelope(b"\xff not json") == "message_id=None"
    assert describe_envelope("[" * 100_000) == "message_id=None"
