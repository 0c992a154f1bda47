"""The Celery drop-in end to end on Redis (kombu's Redis transport)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.celery_cases import CeleryCases
from tests.integration.celery_harness import CeleryStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryStack]:
    s = CeleryStack("redis", tmp_path_factory.mktemp("celery-redis"))
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture
def queue(stack: CeleryStack) -> str:
    return stack.queues[0]


@pytest.fixture
def queue_once(stack: CeleryStack) -> str:
    return stack.queues[0]


class TestCeleryOnRedis(CeleryCases):
    pass
