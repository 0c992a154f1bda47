"""RabbitMQ router: the budget on dead-letter bodies held at once (``--max-in-flight-mb``).

basic.qos counts messages; with large bodies the default window of 2,000 could hold
gigabytes. These tests hold big dead letters in the router (their parking queue is full,
so every park is refused and held) and check what the *broker* reports: how many
deliveries are unacknowledged, and the prefetch of the router's consumer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika

from dlq_router import headers as h
from tests.conftest import TopologyFactory, route_dict
from tests.integration.rabbit_driver import RabbitDriver, consumer_prefetch
from tests.integration.router_process import RouterProcess
from tests.integration.test_router_behaviour import declare, wait_for

BIG = 256 * 1024
BUDGET_MB = 1  # = 4 big bodies


def publish_dead_letters(driver: RabbitDriver, n: int, size: int, error: str, tag: str) -> None:
    """Dead letters straight into the DLQ, as a worker's rejection would leave them."""
    route = driver.route.name
    for i in range(n):
        props = pika.BasicProperties(
            message_id=f"{tag}-{i}",
            delivery_mode=2,
            headers={h.ORIGIN_EXCHANGE: route, h.ORIGIN_ROUTING_KEY: route, h.ERROR_TYPE: error},
        )
        driver.ops.basic_publish("", driver.names.dlq, bytes([i % 256]) * size, props)


def unacked(driver: RabbitDriver, total: int) -> int:
    """Deliveries of the DLQ the router holds: what is in it minus what is ready."""
    ready: int = driver.ops.queue_declare(driver.names.dlq, passive=True).method.message_count
    return total - ready


def start(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> tuple[Any, Any]:
    topology = make_topology(routes=[route_dict(uid, parking={"max_length": 1})])
    declare(topology)
    driver = RabbitDriver(topology, topology.routes[0])
    proc = RouterProcess(topology, tmp_path, args=("--max-in-flight-mb", str(BUDGET_MB)))
    return driver, proc


def test_big_dead_letters_narrow_the_window_and_small_ones_widen_it(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    driver, proc = start(make_topology, uid, tmp_path)
    try:
        # 1. Big non-retryable dead letters and a parking queue that takes one: the rest are
        #    held. The first burst of the default window (2,000) pauses the router at the
        #    budget; it consumes again with the window that fits, 1 MiB / 256 KiB = 4.
        publish_dead_letters(driver, 16, BIG, "ValueError", "big")
        proc.start()
        wait_for(lambda: driver.counts()["parked"] == 1, 15, "the one park that fits")
        wait_for(lambda: "resuming with a window of 4" in proc.output, 30, "a narrowed window")
        assert consumer_prefetch(driver.names.dlq) in ([4], [])  # [] while paused again
        # From now on the broker sees about a budget's worth unacked (4 bodies, plus a few
        # delivered just before a pause). Without the budget all 15 stay held.
        samples = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            samples.append(unacked(driver, 15))
            time.sleep(0.05)
        assert max(samples) <= 8, samples
        # 2. Make room in the parking queue until every big one is parked: nothing lost.
        taken = 1
        deadline = time.monotonic() + 90
        driver.ops.basic_get(driver.names.parking, auto_ack=True)
        while taken < 16:
            assert time.monotonic() < deadline, f"only {taken} of 16 big ones parked"
            method, _, _ = driver.ops.basic_get(driver.names.parking, auto_ack=True)
            taken += method is not None
            time.sleep(0.05)
        assert driver.counts()["dlq"] == 0
        # 3. Small retryable dead letters go to a tier; the average body shrinks and the
        #    router consumes again with the window that fits the budget at that size.
        publish_dead_letters(driver, 300, 1024, "ConnectionError", "small")
        # (It may widen in steps, at most one per WIDEN_EVERY, as the average comes down.)
        wait_for(
            lambda: [n for n in consumer_prefetch(driver.names.dlq) if n >= 500] != [],
            30,
            "a window of 500 or more",
        )
        assert "widening the window" in proc.output
        assert proc.terminate() == 0
        counts = driver.counts()
        assert counts["dlq"] == 0 and counts["work"] + counts["retry"] == 300, counts
    finally:
        proc.close()
        driver.close()
