"""Shared fixtures. Every test owns unique names and deletes only what it made.

Brokers are the real ones on loopback (started by `make brokers`); nothing here mocks them.
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
import redis

from dlq_router.backends.rabbitmq.spec import BindingSpec, ExchangeSpec, QueueSpec, topology_specs
from dlq_router.names import redis_keys
from dlq_router.topology import Topology, parse_topology

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_configure(config: pytest.Config) -> None:
    """Tests send SIGINT to the CLI and expect exit 130. A shell without job control (a CI
    script run with ``&``, ``nohup ... &``) starts background commands with SIGINT ignored,
    and every child inherits that: the CLI would never see the signal. Undo it here."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def uid() -> str:
    return "t" + uuid.uuid4().hex[:10]


def delete_rabbit_topology(topology: Topology, extra_queues: tuple[str, ...] = ()) -> None:
    """Delete exactly the queues and exchanges this topology derives (and nothing else)."""
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        ch = conn.channel()
        for spec in topology_specs(topology):
            if isinstance(spec, BindingSpec):
                continue
            try:
                if isinstance(spec, QueueSpec):
                    ch.queue_delete(spec.name)
                elif isinstance(spec, ExchangeSpec):
                    ch.exchange_delete(spec.name)
            except pika.exceptions.ChannelClosedByBroker:
                ch = conn.channel()
        for q in extra_queues:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                ch.queue_delete(q)
    finally:
        conn.close()


def delete_redis_topology(topology: Topology) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for route in topology.routes:
            keys = redis_keys(topology, route)
            names = [
                keys.work,
                keys.dlq,
                keys.inflight,
                keys.claims,
                keys.retry,
                keys.seq,
                keys.parked,
                keys.parked_index,
                keys.topology,
            ]
            # kombu's priority lists for the work queue
            names += [f"{keys.work}\x06\x16{p}" for p in (3, 6, 9)]
            client.delete(*names)
    finally:
        client.close()


TopologyFactory = Callable[..., Topology]


def route_dict(name: str, **overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "exchange": name,
        "retry": {"delays": ["200ms", "400ms", "800ms"], "max_attempts": 4},
        "non_retryable": ["ValueError"],
    }
    route.update(overrides)
    return route


@pytest.fixture
def make_topology(uid: str) -> Iterator[TopologyFactory]:
    """Build a topology with unique names; whatever it derives is deleted at teardown."""
    made: list[Topology] = []

    def factory(
        kind: str = "rabbitmq", routes: list[dict[str, Any]] | None = None, **top: Any
    ) -> Topology:
        url = RABBIT_URL if kind == "rabbitmq" else REDIS_URL
        data = {"url": url, "routes": routes or [route_dict(uid)], **top}
        topology = parse_topology(data, source="<test>")
        made.append(topology)
        return topology

    yield factory
    for topology in made:
        if topology.kind == "rabbitmq":
            delete_rabbit_topology(topology)
        else:
            delete_redis_topology(topology)


@pytest.fixture
def amqp() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()
