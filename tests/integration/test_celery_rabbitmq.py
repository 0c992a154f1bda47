"""End to end on RabbitMQ: a real ``celery worker`` (prefork, concurrency 2) running the
example app, the real ``dlq-router run``, a classic and a quorum route."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.celery_harness import (
    DELAYS_MS,
    MAX_ATTEMPTS,
    CeleryStack,
    StateWatch,
    runs,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryStack]:
    s = CeleryStack("rabbitmq", tmp_path_factory.mktemp("celery-rabbit"))
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(params=["classic", "quorum"])
def queue(request: pytest.FixtureRequest, stack: CeleryStack) -> str:
    return next(q for q in stack.queues if q.endswith(request.param))


def test_worker_started_before_declare_gets_no_406(stack: CeleryStack) -> None:
    # The worker declared the work queues first; declare found them identical.
    for q in stack.queues:
        assert re.search(rf"^unchanged\s+queue\s+{q}\s", stack.declare_output, re.M), (
            stack.declare_output
        )
    assert " 0 conflict(s)" in stack.declare_output
    assert "PRECONDITION" not in stack.worker.output


def test_fails_twice_then_succeeds_after_the_tier_delays(
    stack: CeleryStack, queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    result = stack.send("example.flaky", queue, fail_times=2, log=str(log))
    watch = StateWatch(result)
    states = watch.until_ready(60)
    assert result.get(timeout=5) == "ok after 3 runs"
    got = runs(log)
    assert [r["attempts"] for r in got] == [None, 1, 2], got
    gaps_ms = [(b["at"] - a["at"]) * 1000 for a, b in itertools.pairwise(got)]
    for gap, delay in zip(gaps_ms, DELAYS_MS, strict=True):
        assert gap >= delay - 5, (gaps_ms, DELAYS_MS)
    assert "RETRY" in states and "FAILURE" not in states, states
    assert states[-1] == "SUCCESS"


def test_always_failing_task_ends_parked_with_its_error(
    stack: CeleryStack, queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    result = stack.send(
        "example.charge", queue, "A-1", fixed_flag=str(tmp_path / "fixed"), log=str(log)
    )
    states = StateWatch(result).until_ready(60)
    assert states[-1] == "FAILURE" and "RETRY" in states, states
    assert len(runs(log)) == MAX_ATTEMPTS
    with pytest.raises(RuntimeError, match="price is None"):
        result.get(timeout=5)
    parked = [p for p in stack.parked("--route", queue) if "order A-1:" in p["error_message"]]
    assert len(parked) == 1, parked
    assert parked[0]["error_type"] == "RuntimeError"
    assert parked[0]["reason"] == "max_attempts"
    assert parked[0]["attempts"] == MAX_ATTEMPTS


def test_non_retryable_error_parks_at_once(stack: CeleryStack, queue: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    result = stack.send("example.send_email", queue, "nobody", log=str(log))
    states = StateWatch(result).until_ready(60)
    assert "RETRY" not in states and states[-1] == "FAILURE", states
    assert len(runs(log)) == 1
