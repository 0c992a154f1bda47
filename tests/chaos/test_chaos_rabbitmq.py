"""Chaos ledger on RabbitMQ: a second node of the test's own, quorum routes.

While a worker fails each message a planned number of times, the harness SIGKILLs and
restarts the real ``dlq-router run`` subprocess, restarts the node's application
(``stop_app``/``start_app``), stops and starts the whole node, and cuts the router's TCP
connections through a proxy. Every hop is at-least-once on quorum queues (the worker's
reject into the DLX and a tier's TTL hop back use ``x-dead-letter-strategy:
at-least-once``; the router republishes with confirms before it acks). At the end every id
was processed or parked with the planned reason, none is lost, and duplicates stay within
the bound the README states: up to the router's prefetch window per router disruption, plus
what the worker handled again after a redelivery and what the producer resent.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from dlq_router.backends.rabbitmq.spec import BindingSpec, QueueSpec, topology_specs
from dlq_router.names import rabbit_names
from dlq_router.topology import Topology, parse_topology
from tests.chaos.amqp_clients import AMQP_ERRORS, AmqpSender, AmqpWorker
from tests.chaos.ledger import (
    NON_RETRYABLE_ERROR,
    SCALE,
    Faults,
    Ledger,
    Producer,
    chaos_loop,
    chaos_seed,
    report,
    scaled,
)
from tests.chaos.rabbit_node import RabbitNode
from tests.integration.drivers import wait_for
from tests.integration.rabbit_driver import RabbitDriver
from tests.integration.router_process import RouterProcess, write_topology

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900 * SCALE)]

ROUNDS = 6  # faults per CHAOS_SCALE: each kind once, then at random
RATE = 40.0  # messages per second: the producer is still sending while faults happen
PREFETCH = 50  # the router's window: the duplicate bound per router disruption
# Faults that interrupt the router with dead letters in its window.
ROUTER_FAULTS = ("router_sigkill", "tcp_cut", "app_restart", "node_restart")


def route_data(name: str, queue_type: str = "quorum") -> dict[str, object]:
    return {
        "name": name,
        "exchange": name,
        "queue_type": queue_type,
        "retry": {"delays": ["100ms", "300ms", "700ms"], "max_attempts": 4},
        "non_retryable": [NON_RETRYABLE_ERROR],
    }


def declare(path: Path, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlq_router", "declare", "-t", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def delete_topology(url: str, topology: Topology) -> None:
    with contextlib.suppress(*AMQP_ERRORS):
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            ch = conn.channel()
            for spec in topology_specs(topology):
                if isinstance(spec, BindingSpec):
                    continue
                try:
                    if isinstance(spec, QueueSpec):
                        ch.queue_delete(spec.name)
                    else:
                        ch.exchange_delete(spec.name)
                except pika.exceptions.ChannelClosedByBroker:
                    ch = conn.channel()
        finally:
            conn.close()


def parked_and_drained(driver: RabbitDriver, ledger: Ledger) -> list[tuple[str, str]] | None:
    """The parked (id, reason) pairs once every id is accounted for and nothing is moving."""
    try:
        counts = driver.counts()
        if counts["work"] or counts["dlq"] or counts["retry"]:
            return None
        parked = [
            (str(m.properties["message_id"]), str(m.headers.get("dlq-park-reason")))
            for m in driver.parked()
        ]
    except AMQP_ERRORS:
        return None
    return parked if ledger.done(mid for mid, _ in parked) else None


def test_rabbitmq_chaos_ledger(running_node: RabbitNode, tmp_path: Path, uid: str) -> None:
    node = running_node
    seed = chaos_seed()
    rng = random.Random(seed)
    topology = parse_topology({"url": node.url, "routes": [route_data(uid)]}, "<chaos>")
    route = topology.routes[0]
    names = rabbit_names(topology, route)
    declare(write_topology(topology, tmp_path / "topology.yaml"))
    ledger = Ledger.make(scaled(1_000), route.max_attempts, rng)

    router = RouterProcess(topology, tmp_path, proxy=True, args=("--prefetch", str(PREFETCH)))
    stop = threading.Event()
    sender = AmqpSender([node.url], names)
    producer = Producer(ledger, sender.send, RATE, AMQP_ERRORS, stop)
    worker = AmqpWorker([node.url], names, ledger, stop)
    faults = Faults()

    def kill_router() -> None:
        router.kill()
        router.start(wait=False)

    def app_restart() -> None:
        node.stop_app()
        node.start_app()

    def node_restart() -> None:
        node.stop()
        node.start()

    actions = {
        "router_sigkill": kill_router,
        "tcp_cut": router.cut,
        "app_restart": app_restart,
        "node_restart": node_restart,
    }
    started = time.monotonic()
    driver: RabbitDriver | None = None
    try:
        router.start(timeout=60)
        worker.start()
        producer.start()
        chaos_loop(rng, actions, faults, rounds=scaled(ROUNDS), pause=(0.5, 3.0), stop=stop)
        producer.join(timeout=300)
        assert producer.sent == len(ledger.plans), "the producer did not finish"
        if router.proc is None or router.proc.poll() is not None:
            router.start(wait=False)
        router.wait_ready(timeout=120)
        driver = RabbitDriver(topology, route)
        parked = wait_for(
            lambda: parked_and_drained(driver, ledger),  # type: ignore[arg-type]
            timeout=240 * SCALE,  # the backlog grows with the size; the machine may be loaded
            what="every id processed or parked, queues drained",
        )
        result = ledger.check(parked)
    finally:
        stop.set()
        worker.join(15)
        producer.join(15)
        sender.close()
        router.close()
        if driver is not None:
            with contextlib.suppress(*AMQP_ERRORS):
                driver.close()
        delete_topology(node.url, topology)
    seconds = time.monotonic() - started
    line = report("rabbitmq", seed, result, faults, seconds)
    line += (
        f"; worker re-handled {ledger.worker_rehandled}, producer resent {sender.uncertain}, "
        f"router prefetch {PREFETCH}"
    )
    print(line)
    assert result.lost == [], f"{line}; lost: {result.lost[:20]}\n{router.output[-3000:]}"
    assert result.wrong == [], f"{line}; {result.wrong[:20]}"
    assert result.processed == ledger.expected_processed(), line
    router_faults = sum(faults.counts[k] for k in ROUTER_FAULTS)
    bound = router_faults * PREFETCH + ledger.worker_rehandled + sender.uncertain
    assert result.duplicates <= bound, f"{line}; bound {bound}"
