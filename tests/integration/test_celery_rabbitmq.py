"""The Celery drop-in end to end on RabbitMQ, on a classic and a quorum route."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.conftest import RABBIT_URL
from tests.integration.celery_cases import CeleryCases
from tests.integration.celery_harness import CeleryStack, runs, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryStack]:
    # The worker starts before `dlq-router declare`; a second one starts after it.
    s = CeleryStack("rabbitmq", tmp_path_factory.mktemp("celery-rabbit"))
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(params=["classic", "quorum"])
def queue(request: pytest.FixtureRequest, stack: CeleryStack) -> str:
    return next(q for q in stack.queues if q.endswith(request.param))


@pytest.fixture
def queue_once(stack: CeleryStack) -> str:
    return next(q for q in stack.queues if q.endswith("quorum"))


class TestCeleryOnRabbitMQ(CeleryCases):
    def test_worker_started_before_declare_gets_no_406(self, stack: CeleryStack) -> None:
        # The worker declared its work queues first; declare found them identical.
        for q in stack.main_queues:
            assert re.search(rf"^unchanged\s+queue\s+{q}\s", stack.declare_output, re.M), (
                stack.declare_output
            )
        assert " 0 conflict(s)" in stack.declare_output
        assert "PRECONDITION" not in stack.worker.output

    def test_late_worker_and_a_message_redelivered_past_the_limit(
        self, stack: CeleryStack, tmp_path: Path
    ) -> None:
        """A worker started after declare gets no 406; a quorum queue message delivered
        more than max_redeliveries (5) times goes to the router without running."""
        queue = next(q for q in stack.queues if q.endswith("-redeliver"))
        log = tmp_path / "runs.jsonl"
        result = stack.send("example.flaky", queue, fail_times=0, log=str(log))
        # Nobody consumes this queue yet: return the message 6 times, as six workers that
        # died holding it would have (each return counts one delivery).
        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        try:
            ch = conn.channel()
            for _ in range(6):
                method = wait_for(lambda: ch.basic_get(queue)[0], 30, "the task message")
                ch.basic_nack(method.delivery_tag, requeue=True)
        finally:
            conn.close()
        late = stack.start_worker("late", stack.queues)
        try:
            assert result.get(timeout=60) == "ok after 2 runs"
            assert "PRECONDITION" not in late.output
            assert "delivered 7 times without finishing; handed to the router" in late.output
        finally:
            late.stop()
        assert late.proc.returncode == 0, late.output
        # It never ran on the redelivery: its only run is the router's retry.
        assert [r["attempts"] for r in runs(log)] == [1]
