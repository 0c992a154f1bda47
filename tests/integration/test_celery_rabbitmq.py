"""The Celery drop-in end to end on RabbitMQ, on a classic and a quorum route."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.integration.celery_cases import CeleryCases
from tests.integration.celery_harness import CeleryStack


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


class TestCeleryOnRabbitMQ(CeleryCases):
    def test_worker_started_before_declare_gets_no_406(self, stack: CeleryStack) -> None:
        # The worker declared the work queues first; declare found them identical.
        for q in stack.queues:
            assert re.search(rf"^unchanged\s+queue\s+{q}\s", stack.declare_output, re.M), (
                stack.declare_output
            )
        assert " 0 conflict(s)" in stack.declare_output
        assert "PRECONDITION" not in stack.worker.output

    def test_worker_started_after_declare_gets_no_406(self, stack: CeleryStack) -> None:
        late = stack.start_worker("late")
        try:
            assert "PRECONDITION" not in late.output
        finally:
            late.stop()
        assert late.proc.returncode == 0, late.output
