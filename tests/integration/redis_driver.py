"""``RedisDriver``: producer and worker around the router, in kombu's Redis transport format.

publish = LPUSH of a kombu envelope to the work list (priority list per kombu), receive =
BRPOP over the priority lists as kombu does, fail = LPUSH the envelope with ``dlq-error-*``
headers onto ``{q}:dlq``. On Redis Cluster the priority lists live in other slots, so the
driver pops them one by one instead of one BRPOP.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from dlq_router.backends.redis import envelope
from dlq_router.backends.redis.connection import connect
from dlq_router.names import redis_keys
from dlq_router.topology import Route, Topology
from tests.integration.drivers import BrokerDriver, Received


def kombu_envelope(
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any] | None,
    content_type: str,
    content_encoding: str,
    properties: dict[str, Any],
) -> dict[str, Any]:
    """What kombu's ``prepare_message`` + ``_inplace_augment_message`` produce."""
    props = {
        **properties,
        "delivery_info": {"exchange": exchange, "routing_key": routing_key},
        "delivery_tag": str(uuid.uuid4()),
        "body_encoding": "base64",
    }
    props.setdefault("priority", 0)
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers or {},
        "properties": props,
    }


class RedisDriver(BrokerDriver):
    kind = "redis"
    origin_without_headers = True  # it always came from the route's work list

    def __init__(self, topology: Topology, route: Route) -> None:
        super().__init__(topology, route)
        self.client = connect(topology.url, client_name="dlq-router-test-driver")
        self.keys = redis_keys(topology, route)
        self.cluster = "+cluster" in topology.url.split("://", 1)[0]
        self.work_lists = [envelope.work_list(self.keys.work, s) for s in envelope.PRIORITY_STEPS]

    def publish(
        self,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        correlation_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        props: dict[str, Any] = {"message_id": message_id}
        if correlation_id is not None:
            props["correlation_id"] = correlation_id
        if priority is not None:
            props["priority"] = priority
        env = kombu_envelope(
            body,
            exchange=self.route.exchange,
            routing_key=self.route.routing_key,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            properties=props,
        )
        step = envelope.Envelope(env).priority_step()
        self.client.lpush(envelope.work_list(self.keys.work, step), json.dumps(env))

    def receive(self, timeout: float) -> Received | None:
        if not self.cluster:
            # kombu: BRPOP q, q\x06\x163, q\x06\x166, q\x06\x169 (lower step served first)
            got = self.client.brpop(self.work_lists, timeout=timeout)
            return None if got is None else self._received(got[1])
        deadline = time.monotonic() + timeout
        while True:
            for name in self.work_lists:
                raw = self.client.rpop(name)
                if raw is not None:
                    return self._received(raw)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.002)

    def _received(self, raw: bytes) -> Received:
        now = time.time()
        env = json.loads(raw)
        props = env["properties"]
        body = env["body"].encode()
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return Received(
            body=body,
            headers=dict(env.get("headers") or {}),
            properties={
                "message_id": props.get("message_id"),
                "correlation_id": props.get("correlation_id"),
                "content_type": env.get("content-type"),
                "content_encoding": env.get("content-encoding"),
                "priority": props.get("priority"),
            },
            received_at=now,
            raw=raw,
        )

    def ack(self, msg: Received) -> None:
        """kombu acks by dropping its unacked record; this driver keeps none."""

    def fail(
        self, msg: Received, *, error_type: str | None = None, error_message: str | None = None
    ) -> None:
        env = json.loads(msg.raw)
        headers = dict(env.get("headers") or {})
        if error_type is not None:
            headers["dlq-error-type"] = error_type
        if error_message is not None:
            headers["dlq-error-message"] = error_message
        env["headers"] = headers
        self.client.lpush(self.keys.dlq, json.dumps(env))

    def inject_dead_letter(self, body: bytes, headers: dict[str, Any] | None) -> None:
        env = kombu_envelope(
            body,
            exchange=self.route.exchange,
            routing_key=self.route.routing_key,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            properties={"message_id": uuid.uuid4().hex},
        )
        if headers is None:
            del env["headers"]
        self.client.lpush(self.keys.dlq, json.dumps(env))

    def inject_raw(self, raw: bytes) -> None:
        """Redis only: push bytes that are not a kombu envelope onto the dead-letter list."""
        self.client.lpush(self.keys.dlq, raw)

    def parked(self) -> list[Received]:
        ids = self.client.zrevrange(self.keys.parked_index, 0, -1)
        out = []
        for pid in ids:
            raw = self.client.hget(self.keys.parked, pid)
            if raw is not None:
                out.append(self._received(raw))
        return out

    def counts(self) -> dict[str, int]:
        k = self.keys
        return {
            "work": sum(int(self.client.llen(name)) for name in self.work_lists),
            # held and claimed dead letters are still dead letters
            "dlq": int(self.client.llen(k.dlq)) + int(self.client.zcard(k.inflight)),
            "retry": int(self.client.zcard(k.retry)),
            "parked": int(self.client.hlen(k.parked)),
        }

    def cleanup(self) -> None:
        """Delete every key this route derives (the work lists included)."""
        k = self.keys
        names = [k.dlq, k.inflight, k.claims, k.retry, k.seq, k.parked, k.parked_index, k.topology]
        for name in [*names, *self.work_lists]:
            self.client.delete(name)  # one by one: the work lists are in other Cluster slots

    def close(self) -> None:
        self.client.close()
