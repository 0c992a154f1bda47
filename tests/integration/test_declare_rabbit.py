"""`dlq-router declare` on the real RabbitMQ: exact objects, idempotence, conflicts, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from typer.testing import CliRunner

from dlq_router.backends.rabbitmq.spec import ExchangeSpec, QueueSpec, topology_specs
from dlq_router.cli import app
from dlq_router.topology import Topology
from tests.conftest import RABBIT_URL, TopologyFactory, route_dict

runner = CliRunner()


def write(tmp_path: Path, topology: Topology, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))
    return path


def declare(path: Path, *args: str) -> Any:
    return runner.invoke(app, ["declare", "-t", str(path), *args])


def rabbitmqctl(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args, "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out) if out.strip() else []


def broker_queues(prefix: str) -> dict[str, dict[str, Any]]:
    rows = rabbitmqctl("list_queues", "name", "arguments", "durable")
    return {r["name"]: r for r in rows if r["name"].startswith(prefix)}


def broker_exchanges(prefix: str) -> dict[str, str]:
    rows = rabbitmqctl("list_exchanges", "name", "type")
    return {r["name"]: r["type"] for r in rows if r["name"].startswith(prefix)}


def normalise(args: Any) -> dict[str, Any]:
    # rabbitmqctl's JSON gives arguments as [key, AMQP type, value] triples
    return {k: v for k, _type, v in args}


def test_declare_creates_exactly_the_topology(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topo = make_topology(
        routes=[
            route_dict(
                uid,
                retry={"delays": ["1s", "10s", "1m"], "max_attempts": 4},
                parking={"max_length": 10},
            ),
            route_dict(
                f"{uid}-q",
                exchange="",
                queue_type="quorum",
                retry={"delays": ["5s"], "max_attempts": 2, "jitter": 0.2, "jitter_lanes": 2},
            ),
        ]
    )
    path = write(tmp_path, topo)
    result = declare(path)
    assert result.exit_code == 0, result.output
    assert "created" in result.output and "password" not in result.output

    queues = broker_queues(uid)
    expected = {s.name: s for s in topology_specs(topo) if isinstance(s, QueueSpec)}
    assert set(queues) == set(expected)
    for name, spec in expected.items():
        assert normalise(queues[name]["arguments"]) == spec.arguments, name
        assert queues[name]["durable"] is True
    assert normalise(queues[f"{uid}.retry.10s"]["arguments"]) == {
        "x-message-ttl": 10_000,
        "x-dead-letter-exchange": uid,
        "x-dead-letter-routing-key": uid,
    }
    assert normalise(queues[uid]["arguments"]) == {"x-dead-letter-exchange": f"{uid}.dlx"}
    assert normalise(queues[f"{uid}.parked"]["arguments"]) == {
        "x-max-length": 10,
        "x-overflow": "reject-publish",
    }
    quorum = normalise(queues[f"{uid}-q"]["arguments"])
    assert quorum["x-queue-type"] == "quorum"
    assert quorum["x-dead-letter-strategy"] == "at-least-once"
    assert quorum["x-overflow"] == "reject-publish"
    lanes = {
        n: normalise(q["arguments"])["x-message-ttl"]
        for n, q in queues.items()
        if n.startswith(f"{uid}-q.retry.")
    }
    assert lanes == {f"{uid}-q.retry.5s.0": 4000, f"{uid}-q.retry.5s.1": 6000}
    assert "x-delivery-limit" not in normalise(queues[f"{uid}-q.parked"]["arguments"])

    exchanges = broker_exchanges(uid)
    assert exchanges == {
        s.name: s.type for s in topology_specs(topo) if isinstance(s, ExchangeSpec)
    }
    assert exchanges[f"{uid}.dlx"] == "fanout"

    again = declare(path, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert {i["status"] for i in report["items"]} == {"unchanged"}
    assert report["url"] == "amqp://guest:***@127.0.0.1:5672/%2F"


def test_dead_letters_flow_through_the_declared_topology(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, amqp: Any
) -> None:
    """The broker itself proves the wiring: reject -> DLQ; tier TTL -> back to work."""
    topo = make_topology(routes=[route_dict(uid, retry={"delays": ["100ms"], "max_attempts": 2})])
    assert declare(write(tmp_path, topo)).exit_code == 0
    amqp.confirm_delivery()
    amqp.basic_publish(uid, uid, b"x", pika.BasicProperties(message_id="m1"), mandatory=True)
    method, _, _ = amqp.basic_get(uid)
    amqp.basic_reject(method.delivery_tag, requeue=False)
    for _ in range(50):
        method, props, _ = amqp.basic_get(f"{uid}.dlq", auto_ack=True)
        if method:
            break
        amqp.connection.sleep(0.05)
    assert method is not None and props.headers["x-death"][0]["reason"] == "rejected"
    amqp.basic_publish(
        f"{uid}.retry",
        f"{uid}.retry.100ms",
        b"y",
        pika.BasicProperties(message_id="m2"),
        mandatory=True,
    )
    for _ in range(50):
        method, props, _ = amqp.basic_get(uid, auto_ack=True)
        if method:
            break
        amqp.connection.sleep(0.05)
    assert method is not None and props.message_id == "m2"


def test_conflict_reports_every_difference_and_changes_nothing(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topo = make_topology(
        routes=[route_dict(uid, retry={"delays": ["1s", "10s"], "max_attempts": 3})]
    )
    assert declare(write(tmp_path, topo)).exit_code == 0
    changed = make_topology(
        routes=[
            route_dict(
                uid,
                retry={"delays": ["1s", "20s", "1m"], "max_attempts": 3},
                parking={"max_length": 5},
            )
        ]
    )
    result = declare(write(tmp_path, changed, "changed.yaml"))
    assert result.exit_code == 3, result.output
    assert "1 existing object(s) differ" in result.stderr
    assert f"conflict: queue {uid}.parked: x-max-length: expected 5, actual none" in result.stderr
    # 1s is unchanged; 20s and 1m are new names, so only the parking queue conflicts ...
    assert f"{uid}.retry.20s" not in broker_queues(uid)  # ... and nothing was created
    ttl = make_topology(
        routes=[
            route_dict(
                uid, exchange_type="topic", retry={"delays": ["1s", "10s"], "max_attempts": 3}
            )
        ]
    )
    result = declare(write(tmp_path, ttl, "ttl.yaml"), "--dry-run")
    assert result.exit_code == 3
    assert f"conflict: exchange {uid}: type: expected topic, actual direct" in result.stderr


def test_tier_ttl_change_is_a_conflict(
    uid: str, tmp_path: Path, make_topology: TopologyFactory
) -> None:
    topo = make_topology(
        routes=[
            route_dict(
                uid, retry={"delays": ["1s"], "max_attempts": 2, "jitter": 0.1, "jitter_lanes": 2}
            )
        ]
    )
    assert declare(write(tmp_path, topo)).exit_code == 0
    wider = make_topology(
        routes=[
            route_dict(
                uid, retry={"delays": ["1s"], "max_attempts": 2, "jitter": 0.2, "jitter_lanes": 2}
            )
        ]
    )
    result = declare(write(tmp_path, wider, "w.yaml"))
    assert result.exit_code == 3
    assert (
        f"conflict: queue {uid}.retry.1s.0: x-message-ttl: expected 800, actual 900"
        in result.stderr
    )
    assert normalise(broker_queues(uid)[f"{uid}.retry.1s.0"]["arguments"])["x-message-ttl"] == 900


def test_dry_run_touches_nothing(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> None:
    topo = make_topology()
    result = declare(write(tmp_path, topo), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("create ") == len(topology_specs(topo))
    assert "dry run: nothing was changed" in result.stdout
    assert broker_queues(uid) == {} and broker_exchanges(uid) == {}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:s3cretpw@127.0.0.1:1/%2F", "connection refused"),
        ("amqp://guest:s3cretpw@127.0.0.1:5672/%2F", "authentication failed"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost-dlq", "access refused"),
    ],
)
def test_unreachable_broker_is_one_line_exit_2(
    make_topology: TopologyFactory, tmp_path: Path, url: str, expected: str
) -> None:
    path = write(tmp_path, make_topology())
    # the real console script: no traceback on stderr, exactly one line
    proc = subprocess.run(
        [sys.executable, "-m", "dlq_router", "declare", "-t", str(path), "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "s3cretpw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "routes: [{name: a, retry: {delays: [1s, 10x], max_attempts: 2}}]",
            "routes[0].retry.delays[1]: '10x' is not a duration",
        ),
        ("routes: [{name: a, retry: {delays: [], max_attempts: 2}}]", "routes[0].retry.delays:"),
        (
            "routes: [{name: a, bogus: 1, retry: {delays: [1s], max_attempts: 2}}]",
            "routes[0].bogus: unknown key",
        ),
        (
            "routes: [{name: a, retry: {delays: [1s], max_attempts: 0}}]",
            "routes[0].retry.max_attempts:",
        ),
        (
            "routes: [{name: a, retry: {delays: [2s, 1s], max_attempts: 1}}]",
            "delays must increase strictly",
        ),
        ("routes: [{name: a, retry: {delays: [50d], max_attempts: 1}}]", "x-message-ttl limit"),
        (
            "routes: [{name: a, retry: {delays: [1s], max_attempts: 1}},"
            " {name: a, queue: b, retry: {delays: [1s], max_attempts: 1}}]",
            "repeats the name 'a'",
        ),
    ],
)
def test_bad_topology_file_exit_2(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = declare(path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"dlq-router: error: {path}: ")
    assert expected in result.stderr


@pytest.fixture
def restricted_user(uid: str) -> Iterator[tuple[str, str]]:
    """A user who may configure the exchanges, the work queue and the parking queue (named as
    its exchange), but no other queue."""
    user, password = f"{uid}-user", uuid.uuid4().hex
    subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True, timeout=60)
    try:
        subprocess.run(
            [
                "rabbitmqctl",
                "-q",
                "set_permissions",
                "-p",
                "/",
                user,
                rf"^{uid}(\.dlx|\.retry|\.parked)?$",
                ".*",
                ".*",
            ],
            check=True,
            timeout=60,
        )
        yield user, password
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], check=False, timeout=60)


def test_failed_apply_rolls_back(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, restricted_user: tuple[str, str]
) -> None:
    user, password = restricted_user
    path = write(tmp_path, make_topology())
    result = declare(path, "--url", f"amqp://{user}:{password}@127.0.0.1:5672/%2F")
    assert result.exit_code == 2, result.output
    assert f"may not configure queue '{uid}.dlq'" in result.stderr
    assert password not in result.output
    # exchanges and the work queue were created, then removed: no half-built topology
    assert broker_queues(uid) == {} and broker_exchanges(uid) == {}
    assert RABBIT_URL  # the guest URL is untouched by the override
