"""Replay publishes where the topology says, never where a message's headers say.

A producer (or anyone who can dead-letter a message) writes ``dlq-origin-exchange`` and
``dlq-origin-routing-key``. If replay trusted them, an operator's ``replay --all`` would
publish into any exchange the operator may write to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlq_router import headers as h
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import Parked, RabbitParkDriver, cli, write_topology


def test_a_crafted_origin_header_cannot_steer_a_replay(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, amqp: Any
) -> None:
    topology = make_topology(routes=[route_dict(uid), route_dict(uid + "-other")])
    route, other = topology.routes
    victim = f"{uid}-victim"  # an exchange and queue the route has nothing to do with
    amqp.exchange_declare(victim, "direct", auto_delete=False)
    amqp.queue_declare(victim)
    amqp.queue_bind(victim, victim, routing_key="steal")
    path = write_topology(topology, tmp_path / "t.yaml")
    driver = RabbitParkDriver(topology)
    crafted = {h.ORIGIN_EXCHANGE: victim, h.ORIGIN_ROUTING_KEY: "steal"}
    try:
        driver.park(route, [Parked("c1", extra=crafted), Parked("c2", extra=crafted)])
        dry = cli("replay", "-t", path, "--all", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        planned = [json.loads(line) for line in dry.stdout.splitlines()]
        assert {p["destination"] for p in planned if "destination" in p} == {
            f"exchange {route.exchange!r} key {route.routing_key!r}"
        }
        done = cli("replay", "-t", path, "--id", "c1")
        assert done.exit_code == 0, done.output
        done = cli("replay", "-t", path, "--id", "c2", "--to-route", other.name)
        assert done.exit_code == 0, done.output
        assert [w.headers["id"] for w in driver.work(route)] == ["task-c1"]
        assert [w.headers["id"] for w in driver.work(other)] == ["task-c2"]
        assert amqp.queue_declare(victim, passive=True).method.message_count == 0
    finally:
        driver.close()
        amqp.queue_delete(victim)
        amqp.exchange_delete(victim)
