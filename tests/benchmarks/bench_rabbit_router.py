"""Benchmark: the RabbitMQ router against RabbitMQ's own shovel, plus delay accuracy.

Run (brokers up, from the repository root)::

    .venv/bin/python tests/benchmarks/bench_rabbit_router.py [--n 20000] [--rate 1000]

1. Baseline: a dynamic shovel (ack-mode on-confirm) moves N preloaded messages
   queue-to-queue.
2. The router (``python -m dlq_router run``, a subprocess) routes N preloaded dead letters
   of the same shape into a tier queue (1 h TTL, so they stay) with publisher confirms.
   Both rates are measured the same way: from the first message leaving the source queue
   to the last one arriving (for the router: confirmed, acked, DLQ empty).
   Both are measured twice: with every process free to use every core (broker, router and
   this script share the machine), then with the local RabbitMQ node confined to core 0
   and the router on the other cores (a broker with a machine of its own and the router as
   a sidecar beside the app; ``--no-split`` skips it). Each prints the CPU both sides used
   per message.
3. Delay accuracy: dead letters fed at --rate per second for --seconds through a 1 s tier;
   lateness = arrival back in the work queue minus ``dlq-retry-due-at``.

Everything uses unique names and is deleted at the end. The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import cpu_meter as cpu
import pika
import yaml

from dlq_router import headers as h
from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.declare import declare
from dlq_router.backends.rabbitmq.spec import (
    ExchangeSpec,
    QueueSpec,
    topology_specs,
)
from dlq_router.names import rabbit_names
from dlq_router.topology import Topology, parse_topology

URL = os.environ.get("DLQ_ROUTER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY = b"\x80\x04" + os.urandom(254)  # 256 opaque bytes (a pickle-ish body)


def celery_headers(i: int) -> dict[str, Any]:
    task_id = f"{uuid.UUID(int=i)}"
    return {
        "lang": "py",
        "task": "tasks.send_email",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "retries": 0,
        "origin": "gen1@bench",
    }


def dead_letter_headers(i: int, route: str) -> dict[str, Any]:
    """What the broker writes when the work queue rejects a message."""
    return {
        **celery_headers(i),
        "x-death": [
            {
                "count": 1,
                "reason": "rejected",
                "queue": route,
                "exchange": route,
                "routing-keys": [route],
            }
        ],
        "x-first-death-reason": "rejected",
        "x-first-death-queue": route,
        "x-first-death-exchange": route,
    }


def props(headers: dict[str, Any], i: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        headers=headers,
        message_id=f"m-{i}",
        content_type="application/x-python-serialize",
        content_encoding="binary",
        delivery_mode=2,
    )


def preload(ch: Any, queue: str, n: int, make_headers: Any) -> None:
    for i in range(n):
        ch.basic_publish("", queue, BODY, props(make_headers(i), i))
    ch.queue_declare(queue, passive=True)  # a round trip: everything before it arrived
    while depth(ch, queue) < n:
        time.sleep(0.05)


def depth(ch: Any, queue: str) -> int:
    count: int = ch.queue_declare(queue, passive=True).method.message_count
    return count


def measure_move(
    ch: Any, src: str, dst: str, n: int, meter: cpu.Meter, timeout: float = 300
) -> float:
    """Messages/s from the first one leaving ``src`` until ``dst`` has all and src is empty;
    ``meter`` records CPU over the same window."""
    deadline = time.monotonic() + timeout
    while depth(ch, src) >= n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing left {src}")
        time.sleep(0.002)
    meter.start()
    start = time.monotonic()
    while depth(ch, dst) < n or depth(ch, src) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dst} has {depth(ch, dst)} of {n}")
        time.sleep(0.005)
    rate = n / (time.monotonic() - start)
    meter.stop()
    return rate


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


def shovel_rate(ch: Any, n: int, uid: str, meter: cpu.Meter) -> float:
    plugins = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "rabbitmq_shovel"], capture_output=True, text=True
    )
    if "rabbitmq_shovel " not in plugins.stdout:
        print("enabling rabbitmq_shovel ...", flush=True)
        subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_shovel"], check=True)
    src, dst, name = f"{uid}.shovel.src", f"{uid}.shovel.dst", f"{uid}-shovel"
    for q in (src, dst):
        ch.queue_declare(q, durable=True)
    try:
        preload(ch, src, n, celery_headers)
        uri = URL.replace("/%2F", "")  # the shovel's URI form for the default vhost
        definition = {
            "src-protocol": "amqp091",
            "src-uri": uri,
            "src-queue": src,
            "dest-protocol": "amqp091",
            "dest-uri": uri,
            "dest-queue": dst,
            "ack-mode": "on-confirm",
            "src-delete-after": "never",
        }
        rabbitmqctl("set_parameter", "shovel", name, json.dumps(definition))
        try:
            return measure_move(ch, src, dst, n, meter)
        finally:
            rabbitmqctl("clear_parameter", "shovel", name)
    finally:
        for q in (src, dst):
            ch.queue_delete(q)


def bench_topology(uid: str, delay: str, name: str) -> Topology:
    route = {
        "name": f"{uid}-{name}",
        "exchange": f"{uid}-{name}",
        "retry": {"delays": [delay], "max_attempts": 1000},
    }
    return parse_topology({"url": URL, "routes": [route]}, source="<bench>")


def start_router(topology: Topology, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    path = workdir / f"{topology.routes[0].name}.yaml"
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))
    log = (workdir / f"{topology.routes[0].name}.log").open("wb")
    cmd = [sys.executable, "-m", "dlq_router", "run", "-t", str(path), *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def cleanup(ch: Any, topology: Topology) -> None:
    for spec in topology_specs(topology):
        if isinstance(spec, QueueSpec):
            ch.queue_delete(spec.name)
        elif isinstance(spec, ExchangeSpec):
            ch.exchange_delete(spec.name)


def router_rate(
    ch: Any, conn: Any, n: int, uid: str, workdir: Path, prefetch: int, processes: int = 1
) -> tuple[float, dict[str, float]]:
    """The routing rate, and the CPU seconds the broker and the router(s) used meanwhile."""
    topology = bench_topology(uid, "1h", "rate")
    names = rabbit_names(topology, topology.routes[0])
    declare(conn, URL, topology_specs(topology), dry_run=False)
    try:
        route = topology.routes[0].name
        preload(ch, names.dlq, n, lambda i: dead_letter_headers(i, route))
        procs = [
            start_router(topology, workdir, "--prefetch", str(prefetch)) for _ in range(processes)
        ]
        pids: dict[str, int | None] = {"broker": cpu.broker_pid()}
        pids.update({f"router{i}": proc.pid for i, proc in enumerate(procs)})
        meter = cpu.Meter(pids)
        try:
            rate = measure_move(ch, names.dlq, names.tiers[0].lanes[0].queue, n, meter)
            return rate, meter.used
        finally:
            for proc in procs:
                stop(proc)
    finally:
        cleanup(ch, topology)


def consume_lateness(queue: str, total: int, out: Any) -> None:
    """In its own process (no GIL shared with the feeder): lateness of each arrival, ms."""
    samples: list[float] = []
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1000)
    idle = 0
    for method, p, _ in ch.consume(queue, auto_ack=True, inactivity_timeout=1):
        if method is None:
            idle += 1
            if idle > 5 or len(samples) >= total:
                break
            continue
        idle = 0
        samples.append(time.time() * 1000 - int(p.headers[h.RETRY_DUE_AT]))
        if len(samples) >= total:
            break
    conn.close()
    out.send(samples)


def lateness(
    conn: Any, uid: str, workdir: Path, rate: int, seconds: float, *, via_router: bool
) -> list[float]:
    """Feed ``rate`` messages/s for ``seconds``; lateness of each arrival in the work queue.

    ``via_router``: dead letters go to the DLQ and the router stamps ``dlq-retry-due-at`` and
    publishes them to the 1 s tier. Otherwise (the control) the feeder publishes straight
    into the tier, stamping the due time itself: the broker's own floor, no router.
    """
    name = "delay" if via_router else "control"
    topology = bench_topology(uid, "1s", name)
    names = rabbit_names(topology, topology.routes[0])
    lane = names.tiers[0].lanes[0]
    declare(conn, URL, topology_specs(topology), dry_run=False)
    total = int(rate * seconds)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    consumer = multiprocessing.Process(
        target=consume_lateness, args=(names.work_queue, total, sender)
    )
    proc = start_router(topology, workdir) if via_router else None
    try:
        consumer.start()
        time.sleep(1.5)  # router and consumer connected
        pch = conn.channel()
        route = topology.routes[0].name
        headers = {h.ORIGIN_EXCHANGE: route, h.ORIGIN_ROUTING_KEY: route}
        started = time.monotonic()
        for i in range(total):
            target = started + i / rate
            while (now := time.monotonic()) < target:
                time.sleep(min(0.001, target - now))
            if via_router:
                pch.basic_publish("", names.dlq, BODY, props({**headers, "i": i}, i))
            else:
                due = {h.RETRY_DUE_AT: int(time.time() * 1000) + lane.ttl_ms, "i": i}
                pch.basic_publish(names.retry_exchange, lane.queue, BODY, props(due, i))
        samples: list[float] = receiver.recv() if receiver.poll(seconds + 30) else []
        consumer.join(10)
    finally:
        if proc is not None:
            stop(proc)
        cleanup(conn.channel(), topology)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 2),
        "p99": round(pct(samples, 0.99), 2),
        "max": round(max(samples), 2),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_costs(
    n: int,
    shovel: float,
    shovel_cpu: dict[str, float],
    router_cpu: dict[str, float],
    *,
    split: bool,
) -> dict[str, float]:
    """CPU per message (microseconds) of each side, and what the machine allows."""
    if "broker" not in shovel_cpu or "broker" not in router_cpu:
        return {}  # the broker runs elsewhere: its CPU is not ours to read
    broker_shovel = cpu.per_message_us(shovel_cpu["broker"], n)
    broker_router = cpu.per_message_us(router_cpu["broker"], n)
    router = cpu.per_message_us(sum(v for k, v in router_cpu.items() if k != "broker"), n)
    ceiling = cpu.ceiling(broker_router, router, split=split)
    return {
        "cores": cpu.CORES,
        "broker_us_per_msg_shovel": broker_shovel,
        "broker_us_per_msg_router": broker_router,
        "router_us_per_msg": router,
        "ceiling_msgs_per_s": round(ceiling),
        "ceiling_ratio": round(ceiling / shovel, 3),
        "router_budget_us_for_1x": round(cpu.client_budget(broker_router, shovel, split=split), 1),
    }


def print_costs(costs: dict[str, float], shovel: float) -> None:
    if not costs:
        print("  CPU per message: not measured (no local RabbitMQ node found)")
        return
    print(
        f"  CPU per message: broker {costs['broker_us_per_msg_shovel']} us while shovelling; "
        f"broker {costs['broker_us_per_msg_router']} us + router {costs['router_us_per_msg']} us "
        "while routing"
    )
    print(
        f"  ceiling on these cores at these costs: {costs['ceiling_msgs_per_s']} msg/s "
        f"= {costs['ceiling_ratio']}x the shovel; 1.0x needs the router under "
        f"{costs['router_budget_us_for_1x']} us/msg with every core busy"
    )


def compare(
    args: Any, ch: Any, conn: Any, uid: str, workdir: Path, *, split: bool = False
) -> dict[str, Any]:
    """The shovel, then the router, on the same messages; rates, ratio and CPU costs."""
    shovel_meter = cpu.Meter({"broker": cpu.broker_pid()})
    shovel = shovel_rate(ch, args.n, uid, shovel_meter)
    print(f"  shovel (ack-mode on-confirm): {shovel:10.0f} msg/s", flush=True)
    router, used = router_rate(ch, conn, args.n, uid, workdir, args.prefetch, args.processes)
    print(
        f"  router x{args.processes} (confirms, prefetch {args.prefetch}): {router:6.0f} msg/s",
        flush=True,
    )
    print(f"  ratio router/shovel: {router / shovel:.2f}x (target >= 1.0x)", flush=True)
    costs = cpu_costs(args.n, shovel, shovel_meter.used, used, split=split)
    print_costs(costs, shovel)
    return {
        "shovel_msgs_per_s": round(shovel),
        "router_msgs_per_s": round(router),
        "ratio": round(router / shovel, 3),
        "cpu": costs,
    }


def cpu_only(args: Any, ch: Any, conn: Any, uid: str) -> None:
    """The router's CPU per routed message, from /proc: robust to a shared, loaded machine
    (unlike rates). ``--n`` dead letters with Celery-style headers and an x-death entry."""
    with tempfile.TemporaryDirectory() as tmp:
        rate, used = router_rate(ch, conn, args.n, uid, Path(tmp), args.prefetch)
    with contextlib.suppress(Exception):
        conn.close()
    router_s = sum(v for k, v in used.items() if k != "broker")
    result = {
        "n": args.n,
        "router_us_per_msg": cpu.per_message_us(router_s, args.n),
        "broker_us_per_msg": cpu.per_message_us(used["broker"], args.n)
        if "broker" in used
        else None,
        "router_msgs_per_s": round(rate),
    }
    print(
        f"router CPU per routed message: {result['router_us_per_msg']} us "
        f"(N={args.n}, {result['router_msgs_per_s']} msg/s)"
    )
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--prefetch", type=int, default=2000, help="the router's default")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=1, help="router processes on the same DLQ")
    parser.add_argument(
        "--no-split", action="store_true", help="skip the run with the broker on its own core"
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="only the router's CPU per routed message (no shovel, no lateness): short",
    )
    args = parser.parse_args()
    uid = "bench" + uuid.uuid4().hex[:8]
    conn = connect(URL, client_name="dlq-router bench")
    ch = conn.channel()
    if args.cpu_only:
        cpu_only(args, ch, conn, uid)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"N={args.n} messages of {len(BODY)} bytes with Celery-style headers", flush=True)
        print("shared cores (broker, router and this script on every core):", flush=True)
        shared = compare(args, ch, conn, uid, workdir)
        split: dict[str, Any] = {}
        if not args.no_split:
            with cpu.broker_on_own_core() as pinned:
                if pinned:
                    print("split cores (broker on core 0, router and this script on the rest):")
                    split = compare(args, ch, conn, uid + "s", workdir, split=True)
        samples = lateness(conn, uid, workdir, args.rate, args.seconds, via_router=True)
        control = lateness(conn, uid, workdir, args.rate, args.seconds, via_router=False)
    with contextlib.suppress(Exception):
        conn.close()
    late, floor = summary(samples), summary(control)
    print(
        f"lateness at {args.rate}/s through a 1 s tier ({len(samples)} samples): "
        f"p50 {late['p50']} ms, p99 {late['p99']} ms, max {late['max']} ms (target p99 <= 10)"
    )
    print(
        f"control, straight into the tier without the router ({len(control)} samples): "
        f"p50 {floor['p50']} ms, p99 {floor['p99']} ms, max {floor['max']} ms"
    )
    result = {
        "n": args.n,
        **shared,
        "split_cores": split,
        "lateness_ms": late,
        "lateness_samples": len(samples),
        "control_lateness_ms": floor,
        "rate_per_s": args.rate,
        "router_processes": args.processes,
        "prefetch": args.prefetch,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
