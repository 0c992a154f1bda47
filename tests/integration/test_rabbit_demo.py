"""``dlq-router demo`` runs end to end on the real broker and cleans up after itself."""

from __future__ import annotations

import re
import time

import pika
import pytest
from typer.testing import CliRunner

from dlq_router.cli import app
from tests.conftest import RABBIT_URL


def test_demo_prints_the_outcome_and_deletes_its_objects() -> None:
    started = time.monotonic()
    result = CliRunner().invoke(app, ["demo", "--url", RABBIT_URL])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 20
    out = result.output
    assert "flaky-payment  attempt 2: OK  [back from the 1s tier" in out
    assert "slow-report    attempt 3: OK  [back from the 2s tier" in out
    assert "bad-address    PARKED after 1 attempt(s): non_retryable" in out
    assert "always-broken  PARKED after 3 attempt(s): max_attempts" in out
    assert "summary: 3 succeeded, 5 retries scheduled by the router, 2 parked" in out
    assert "guest:guest" not in out
    match = re.search(r"every (demo-[0-9a-f]{6})\* queue", out)
    assert match, out
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        for queue in (match[1], f"{match[1]}.dlq", f"{match[1]}.parked"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                conn.channel().queue_declare(queue, passive=True)
            assert info.value.reply_code == 404
    finally:
        conn.close()


def test_demo_refuses_redis_urls() -> None:
    result = CliRunner().invoke(app, ["demo", "--url", "redis://127.0.0.1:6379/0"])
    assert result.exit_code == 2
    assert "RabbitMQ" in result.output
