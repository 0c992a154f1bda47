"""End-to-end behaviour of the Celery drop-in, shared by both brokers.

A real ``celery worker`` (prefork, concurrency 2) runs the example app, the real
``dlq-router run`` routes its dead letters; the test process sends tasks with a client app
configured by the same topology. Subclasses provide the ``stack`` and ``queue`` fixtures, and
``queue_once`` for the slow cases (pool processes killed, time limits), run once per broker:
their code path does not depend on the queue type.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.integration.celery_harness import (
    DELAYS_MS,
    MAX_ATTEMPTS,
    CeleryStack,
    StateWatch,
    dlq,
    runs,
    wait_for,
)


class CeleryCases:
    def test_fails_twice_then_succeeds_after_the_tier_delays(
        self, stack: CeleryStack, queue: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        result = stack.send("example.flaky", queue, fail_times=2, log=str(log))
        states = StateWatch(result).until_ready(60)
        assert result.get(timeout=5) == "ok after 3 runs"
        got = runs(log)
        assert [r["attempts"] for r in got] == [None, 1, 2], got
        gaps_ms = [(b["at"] - a["at"]) * 1000 for a, b in itertools.pairwise(got)]
        for gap, delay in zip(gaps_ms, DELAYS_MS, strict=True):
            assert gap >= delay - 5, (gaps_ms, DELAYS_MS)
        # While the broker holds the retry the state is RETRY, never FAILURE.
        assert "RETRY" in states and "FAILURE" not in states, states
        assert states[-1] == "SUCCESS"

    def test_get_waits_across_broker_retries(self, stack: CeleryStack, queue: str) -> None:
        result = stack.send("example.flaky", queue, fail_times=1)
        assert result.get(timeout=60) == "ok after 2 runs"

    def test_always_failing_task_ends_parked_with_its_error(
        self, stack: CeleryStack, queue: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        order = uuid.uuid4().hex[:8]
        result = stack.send(
            "example.charge", queue, order, fixed_flag=str(tmp_path / "fixed"), log=str(log)
        )
        states = StateWatch(result).until_ready(60)
        assert states[-1] == "FAILURE" and "RETRY" in states, states
        assert len(runs(log)) == MAX_ATTEMPTS
        with pytest.raises(RuntimeError, match="price is None"):
            result.get(timeout=5)
        parked = [
            p for p in stack.parked("--route", queue) if f"order {order}:" in p["error_message"]
        ]
        assert len(parked) == 1, parked
        assert parked[0]["error_type"] == "RuntimeError"
        assert parked[0]["reason"] == "max_attempts"
        assert parked[0]["attempts"] == MAX_ATTEMPTS
        shown = dlq("parked", "show", parked[0]["id"], "-t", stack.topology_path, "--json")
        headers = json.loads(shown.stdout)["headers"]
        assert "RuntimeError: order" in headers["dlq-error-traceback"]
        assert headers["id"] == result.id and headers["task"] == "example.charge"

    def test_non_retryable_error_parks_at_once(
        self, stack: CeleryStack, queue: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        result = stack.send("example.send_email", queue, "nobody", log=str(log))
        states = StateWatch(result).until_ready(60)
        assert "RETRY" not in states and states[-1] == "FAILURE", states
        assert len(runs(log)) == 1
        with pytest.raises(ValueError, match="not an email address"):
            result.get(timeout=5)
        # The parking tools name the task: list --task, show <task id>, groups by task.
        listed = stack.parked("--route", queue, "--task", "example.send_email")
        mine = [row for row in listed if row["task_id"] == result.id]
        assert len(mine) == 1 and mine[0]["task"] == "example.send_email", listed
        assert all(row["task"] == "example.send_email" for row in listed)
        assert mine[0]["reason"] == "non_retryable" and mine[0]["error_type"] == "ValueError"
        shown = json.loads(
            dlq("parked", "show", result.id, "-t", stack.topology_path, "--json").stdout
        )
        assert shown["id"] == mine[0]["id"] and shown["task_id"] == result.id
        text = dlq("parked", "show", result.id, "-t", stack.topology_path).stdout
        assert f"task:   example.send_email[{result.id}]" in text
        groups = dlq("parked", "groups", "-t", stack.topology_path, "--route", queue, "--json")
        rows = [json.loads(line) for line in groups.stdout.splitlines()]
        assert {r["task"] for r in rows} >= {"example.send_email"}
        email = [r for r in rows if r["task"] == "example.send_email"]
        assert len(email) == 1 and email[0]["fingerprint"] == mine[0]["fingerprint"]
        table = dlq(
            "parked", "list", "-t", stack.topology_path, "--task", "example.send_email"
        ).stdout
        assert "TASK ID" in table and result.id in table
        assert f"parked task example.send_email[{result.id}]" in stack.router_output()

    def test_replayed_parked_task_runs_again_and_succeeds(
        self, stack: CeleryStack, queue: str, tmp_path: Path
    ) -> None:
        log, flag = tmp_path / "runs.jsonl", tmp_path / "fixed"
        order = uuid.uuid4().hex[:8]
        result = stack.send("example.charge", queue, order, fixed_flag=str(flag), log=str(log))
        assert StateWatch(result).until_ready(60)[-1] == "FAILURE"
        parked = [
            p for p in stack.parked("--route", queue) if f"order {order}:" in p["error_message"]
        ]
        assert len(parked) == 1, parked
        flag.touch()  # the fix is deployed
        assert parked[0]["task_id"] == result.id and parked[0]["task"] == "example.charge"
        out = dlq(
            "replay", "-t", stack.topology_path, "--task", "example.charge",
            "--id", parked[0]["id"], "--json",
        )  # fmt: skip
        assert '"replayed": 1' in out.stdout, out.stdout
        # Celery caches a ready state in the AsyncResult and the backend: read it afresh.
        backend = stack.client.backend

        def meta() -> dict[str, object]:
            got: dict[str, object] = backend.get_task_meta(result.id, cache=False)
            return got

        wait_for(lambda: meta()["status"] == "SUCCESS", 60, "SUCCESS after the replay")
        assert meta()["result"] == f"charged {order}"
        assert len(runs(log)) == MAX_ATTEMPTS + 1
        assert stack.parked("--route", queue, "--id", parked[0]["id"]) == []

    def test_pool_process_killed_mid_task_loses_nothing(
        self, stack: CeleryStack, queue_once: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        result = stack.send("example.slow", queue_once, 30, log=str(log), first_run_only=True)
        first = wait_for(lambda: runs(log), 60, "the task to start")[0]
        os.kill(first["pid"], signal.SIGKILL)
        # Handed to the router as a lost worker (one attempt), retried on the first tier,
        # run again in a new pool process: nothing lost, and it is never acked as done.
        assert result.get(timeout=60) == "slept"
        got = runs(log)
        assert [(r["event"], r["attempts"]) for r in got] == [
            ("start", None),
            ("start", 1),
            ("done", 1),
        ], got
        assert got[1]["pid"] != first["pid"]

    def test_hard_time_limit_is_a_failed_attempt(
        self, stack: CeleryStack, queue_once: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        result = stack.client.send_task(
            "example.slow",
            args=[30],
            kwargs={"log": str(log), "first_run_only": True},
            queue=queue_once,
            time_limit=2,
        )
        states = StateWatch(result).until_ready(60)
        assert states[-1] == "SUCCESS" and "RETRY" in states and "FAILURE" not in states, states
        got = runs(log)
        assert [(r["event"], r["attempts"]) for r in got] == [
            ("start", None),
            ("start", 1),
            ("done", 1),
        ], got

    def test_task_that_kills_its_pool_process_every_time_ends_parked(
        self, stack: CeleryStack, queue_once: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.jsonl"
        result = stack.send("example.crash", queue_once, log=str(log))
        states = StateWatch(result).until_ready(90)
        assert states[-1] == "FAILURE" and "RETRY" in states, states
        assert len(runs(log)) == MAX_ATTEMPTS
        assert "WorkerLostError" in repr(result.result)
