"""Put parked messages in place the way the routers write them, on either broker, and read
work queues back. Used by the parking-lot tests (no router needed)."""

from __future__ import annotations

import base64
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import redis
import yaml
from typer.testing import CliRunner

from dlq_router import headers as h
from dlq_router.backends.rabbitmq.backend import RabbitBackend
from dlq_router.cli import app
from dlq_router.names import rabbit_names, redis_keys
from dlq_router.policy import park_headers
from dlq_router.topology import Route, Topology


@dataclass
class Parked:
    """One message to park: what a router would have written."""

    id: str
    body: bytes = b'{"args": [1, 2], "kwargs": {}}'
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    error_type: str = "ConnectionError"
    reason: str = "max_attempts"
    attempts: int = 4
    parked_at: int = 0
    correlation_id: str | None = "corr-1"
    priority: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, route: Route) -> dict[str, Any]:
        base = {
            "task": "tasks.send_email",  # Celery protocol 2 header: must survive untouched
            "id": f"task-{self.id}",
            h.ROUTE: route.name,
            h.ATTEMPTS: self.attempts,
            h.FIRST_FAILED_AT: self.parked_at - 5000,
            h.LAST_FAILED_AT: self.parked_at,
            h.ORIGIN_EXCHANGE: route.exchange,
            h.ORIGIN_ROUTING_KEY: route.routing_key,
            h.ORIGIN_QUEUE: route.queue,
            h.ERROR_TYPE: self.error_type,
            h.ERROR_MESSAGE: f"{self.error_type}: boom",
            h.DEATH_REASON: "rejected",
            **self.extra,
        }
        return park_headers(base, self.reason, "test park", self.parked_at, self.id)


@dataclass
class Work:
    """A message found in a work queue after replay."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]


class ParkDriver(ABC):
    kind: str

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    @abstractmethod
    def park(self, route: Route, messages: list[Parked]) -> None: ...

    @abstractmethod
    def parked_ids(self, route: Route) -> list[str]:
        """Ids in storage order (queue order / index order), read destructively-free."""

    @abstractmethod
    def work(self, route: Route) -> list[Work]:
        """Drain the route's work queue (destructive), oldest first."""

    @abstractmethod
    def work_depth(self, route: Route) -> int:
        """Messages waiting in the route's work queue, without consuming them."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class RabbitParkDriver(ParkDriver):
    kind = "rabbitmq"

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        backend = RabbitBackend(topology)
        try:
            backend.declare(dry_run=False)
        finally:
            backend.close()
        self.conn = pika.BlockingConnection(pika.URLParameters(topology.url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def park(self, route: Route, messages: list[Parked]) -> None:
        queue = rabbit_names(self.topology, route).parking
        for m in messages:
            props = pika.BasicProperties(
                content_type=m.content_type,
                content_encoding=m.content_encoding,
                message_id=f"task-{m.id}",
                correlation_id=m.correlation_id,
                priority=m.priority,
                delivery_mode=2,
                headers=m.headers(route),
            )
            self.ch.basic_publish("", queue, m.body, props, mandatory=True)

    def parked_ids(self, route: Route) -> list[str]:
        """Drain with basic.get and no ack, then close: reads order without consuming."""
        queue = rabbit_names(self.topology, route).parking
        ch = self.conn.channel()
        ids = []
        while True:
            method, props, _ = ch.basic_get(queue, auto_ack=False)
            if method is None:
                break
            ids.append(h.as_text(props.headers[h.ID]) or "")
        ch.close()
        return ids

    def drain_parked(self, route: Route) -> list[tuple[str, bool]]:
        """(id, redelivered) of every parked message, consuming them (end of test only)."""
        queue = rabbit_names(self.topology, route).parking
        out = []
        while True:
            method, props, _ = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((h.as_text(props.headers[h.ID]) or "", method.redelivered))

    def work(self, route: Route) -> list[Work]:
        out = []
        while True:
            method, props, body = self.ch.basic_get(route.queue, auto_ack=True)
            if method is None:
                return out
            properties = {
                k: getattr(props, k)
                for k in ("content_type", "content_encoding", "correlation_id", "priority")
            }
            properties["message_id"] = props.message_id
            out.append(Work(body, dict(props.headers or {}), properties))

    def work_depth(self, route: Route) -> int:
        depth: int = self.ch.queue_declare(route.queue, passive=True).method.message_count
        return depth

    def close(self) -> None:
        self.conn.close()


class RedisParkDriver(ParkDriver):
    kind = "redis"

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.client = redis.Redis.from_url(topology.url)

    @staticmethod
    def envelope(route: Route, m: Parked) -> dict[str, Any]:
        return {
            "body": base64.b64encode(m.body).decode(),
            "content-encoding": m.content_encoding,
            "content-type": m.content_type,
            "headers": m.headers(route),
            "properties": {
                "correlation_id": m.correlation_id,
                "reply_to": None,
                "delivery_mode": 2,
                "delivery_info": {"exchange": route.exchange, "routing_key": route.routing_key},
                "priority": m.priority or 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }

    def park(self, route: Route, messages: list[Parked]) -> None:
        keys = redis_keys(self.topology, route)
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            pipe.hset(keys.parked, m.id, json.dumps(self.envelope(route, m)))
            pipe.zadd(keys.parked_index, {m.id: m.parked_at})
        pipe.execute()

    def parked_ids(self, route: Route) -> list[str]:
        keys = redis_keys(self.topology, route)
        ids = [i.decode() for i in self.client.zrange(keys.parked_index, 0, -1)]
        assert self.client.hlen(keys.parked) == len(ids)
        return ids

    def work(self, route: Route) -> list[Work]:
        out = []
        for key in (route.queue, *(f"{route.queue}\x06\x16{p}" for p in (3, 6, 9))):
            while (raw := self.client.rpop(key)) is not None:
                env = json.loads(raw)
                body = base64.b64decode(env["body"])
                props = env["properties"]
                properties = {
                    "content_type": env["content-type"],
                    "content_encoding": env["content-encoding"],
                    "correlation_id": props.get("correlation_id"),
                    "priority": props.get("priority"),
                    "list": key,
                }
                out.append(Work(body, env["headers"], properties))
        return out

    def work_depth(self, route: Route) -> int:
        lists = (route.queue, *(f"{route.queue}\x06\x16{p}" for p in (3, 6, 9)))
        return sum(int(self.client.llen(key)) for key in lists)

    def close(self) -> None:
        self.client.close()


def write_topology(topology: Topology, path: Path) -> Path:
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")), encoding="utf-8")
    return path


def cli(*args: str | Path) -> Any:
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
