"""Parking-lot benchmarks, each against a baseline measured in the same run.

    .venv/bin/python tests/benchmarks/bench_parking.py [--quick]

1. RabbitMQ replay rate vs RabbitMQ's own shovel (dynamic, ack-mode on-confirm) moving the
   same number of the same messages queue to queue (target: replay >= 0.8x shovel), with
   every process free to use every core, then with the local RabbitMQ node confined to
   core 0 and this script (the replay) on the others; both with CPU per message.
2. Redis replay rate (target >= 20,000 msg/s), next to pipelined LPUSH of the same envelopes.
3. `parked list --limit 50` on 1,000,000 parked messages on Redis (target < 200 ms).
4. A full listing of 100,000 parked messages on RabbitMQ (a snapshot reads the whole queue).

Prints the figures, then one JSON line. Every queue/key it makes is unique and deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import cpu_meter as cpu
import pika
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.backends.rabbitmq.backend import RabbitBackend
from dlq_router.names import rabbit_names, redis_keys
from dlq_router.topology import Topology, parse_topology
from tests.conftest import (
    RABBIT_URL,
    REDIS_URL,
    delete_rabbit_topology,
    delete_redis_topology,
    route_dict,
)
from tests.integration.parking_support import (
    Parked,
    RedisParkDriver,
    cli,
    write_topology,
)

BODY = b'{"to": "someone@example.com", "template": "welcome", "args": [1, 2, 3]}' * 2


def topology(kind: str) -> Topology:
    uid = "bench" + uuid.uuid4().hex[:8]
    return parse_topology(
        {"url": RABBIT_URL if kind == "rabbitmq" else REDIS_URL, "routes": [route_dict(uid)]}
    )


def wait_depth(ch: Any, queue: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} did not reach {n} messages")
        time.sleep(0.02)


def fill_rabbit(ch: Any, queue: str, topo: Topology, n: int) -> None:
    """n parked messages as the router writes them (headers from policy.park_headers)."""
    route = topo.routes[0]
    now = int(time.time() * 1000)
    for i in range(n):
        m = Parked(f"m{i}", body=BODY, parked_at=now + i)
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=f"task-m{i}",
            headers=m.headers(route),
        )
        ch.basic_publish("", queue, m.body, props)
        if i % 5000 == 0:
            ch.connection.process_data_events(time_limit=0)
    wait_depth(ch, queue, n)


def bench_rabbit_replay_vs_shovel(n: int, *, split: bool = False) -> dict[str, Any]:
    topo = topology("rabbitmq")
    route = topo.routes[0]
    names = rabbit_names(topo, route)
    backend = RabbitBackend(topo)
    backend.declare(dry_run=False)
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    src, dst = names.parking + ".shovel-src", names.parking + ".shovel-dst"
    shovel = f"{route.name}-bench"
    try:
        # Shovel baseline: same messages, parking-like queue to work-like queue.
        ch.queue_declare(src, durable=True)
        ch.queue_declare(dst, durable=True)
        fill_rabbit(ch, src, topo, n)
        shovel_cpu = cpu.Meter({"broker": cpu.broker_pid()})
        value = json.dumps(
            {
                "src-protocol": "amqp091",
                "src-uri": "amqp://",
                "src-queue": src,
                "dest-protocol": "amqp091",
                "dest-uri": "amqp://",
                "dest-queue": dst,
                "ack-mode": "on-confirm",
                "src-delete-after": "queue-length",
            }
        )
        subprocess.Popen(
            ["rabbitmqctl", "-q", "set_parameter", "shovel", shovel, value],
            stdout=subprocess.DEVNULL,
        )
        # Timed from the first moved message (the shovel's own start-up is not counted).
        while ch.queue_declare(dst, passive=True).method.message_count == 0:
            time.sleep(0.002)
        shovel_cpu.start()
        t0 = time.monotonic()
        wait_depth(ch, dst, n)
        shovel_s = time.monotonic() - t0
        shovel_cpu.stop()
        subprocess.run(
            ["rabbitmqctl", "-q", "clear_parameter", "shovel", shovel],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        # dlq-router replay: snapshot read + publish with confirms + ack, end to end.
        fill_rabbit(ch, names.parking, topo, n)
        replay_cpu = cpu.Meter({"broker": cpu.broker_pid(), "replay": os.getpid()})
        replay_cpu.start()
        t0 = time.monotonic()
        result = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        replay_s = time.monotonic() - t0
        replay_cpu.stop()
        assert result.replayed == n, result
        wait_depth(ch, route.queue, n)
    finally:
        for q in (src, dst):
            ch.queue_delete(q)
        conn.close()
        backend.close()
        delete_rabbit_topology(topo)
    out = {
        "shovel_msgs_per_s": n / shovel_s,
        "replay_msgs_per_s": n / replay_s,
        "ratio": shovel_s / replay_s,
    }
    if "broker" in shovel_cpu.used and "broker" in replay_cpu.used:
        broker = cpu.per_message_us(replay_cpu.used["broker"], n)
        client = cpu.per_message_us(replay_cpu.used["replay"], n)
        ceiling = cpu.ceiling(broker, client, split=split)
        out["cpu"] = {
            "cores": cpu.CORES,
            "broker_us_per_msg_shovel": cpu.per_message_us(shovel_cpu.used["broker"], n),
            "broker_us_per_msg_replay": broker,
            "replay_us_per_msg": client,
            "ceiling_msgs_per_s": round(ceiling),
            "ceiling_ratio": round(ceiling * shovel_s / n, 3),
        }
    return out


def bench_rabbit_full_listing(n: int) -> dict[str, float]:
    topo = topology("rabbitmq")
    names = rabbit_names(topo, topo.routes[0])
    backend = RabbitBackend(topo)
    backend.declare(dry_run=False)
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    try:
        fill_rabbit(ch, names.parking, topo, n)
        t0 = time.monotonic()
        rows = list(backend.parking.iter(p.Selector(limit=50)))
        list_s = time.monotonic() - t0
        assert len(rows) == 50
        assert ch.queue_declare(names.parking, passive=True).method.message_count == n
    finally:
        conn.close()
        backend.close()
        delete_rabbit_topology(topo)
    return {"messages": n, "seconds": list_s, "msgs_per_s": n / list_s}


def redis_envelopes(topo: Topology, n: int, start: int = 0) -> list[tuple[str, int, str]]:
    route = topo.routes[0]
    now = int(time.time() * 1000)
    out = []
    for i in range(start, start + n):
        m = Parked(f"m{i}", body=BODY, parked_at=now - (start + n - i))
        out.append((m.id, m.parked_at, json.dumps(RedisParkDriver.envelope(route, m))))
    return out


def fill_redis(client: redis.Redis, topo: Topology, n: int, chunk: int = 5000) -> None:
    keys = redis_keys(topo, topo.routes[0])
    for start in range(0, n, chunk):
        pipe = client.pipeline(transaction=False)
        for msg_id, at, env in redis_envelopes(topo, min(chunk, n - start), start):
            pipe.hset(keys.parked, msg_id, env)
            pipe.zadd(keys.parked_index, {msg_id: at})
        pipe.execute()


def bench_redis_replay(n: int) -> dict[str, float]:
    topo = topology("redis")
    client = redis.Redis.from_url(REDIS_URL)
    scratch = f"{{{topo.routes[0].queue}}}:bench-lpush"
    try:
        envs = [e for _, _, e in redis_envelopes(topo, n)]
        t0 = time.monotonic()
        for start in range(0, n, 500):
            pipe = client.pipeline(transaction=False)
            for env in envs[start : start + 500]:
                pipe.lpush(scratch, env)
            pipe.execute()
        lpush_s = time.monotonic() - t0
        client.unlink(scratch)

        fill_redis(client, topo, n)
        backend = open_backend(topo)
        try:
            t0 = time.monotonic()
            result = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
            replay_s = time.monotonic() - t0
        finally:
            backend.close()
        assert result.replayed == n and client.llen(topo.routes[0].queue) == n
    finally:
        client.unlink(scratch)
        client.close()
        delete_redis_topology(topo)
    return {
        "replay_msgs_per_s": n / replay_s,
        "lpush_msgs_per_s": n / lpush_s,
        "ratio_vs_lpush": lpush_s / replay_s,
    }


def bench_redis_list(n: int, tmp: Path) -> dict[str, float]:
    topo = topology("redis")
    client = redis.Redis.from_url(REDIS_URL)
    keys = redis_keys(topo, topo.routes[0])
    try:
        fill_redis(client, topo, n)
        path = write_topology(topo, tmp / f"{topo.routes[0].name}.yaml")
        times = []
        for _ in range(7):
            t0 = time.monotonic()
            result = cli("parked", "list", "-t", path, "--limit", "50")
            times.append(time.monotonic() - t0)
            assert result.exit_code == 0 and len(result.stdout.splitlines()) == 51
        exe = str(Path(sys.executable).parent / "dlq-router")
        t0 = time.monotonic()
        subprocess.run(
            [exe, "parked", "list", "-t", str(path), "--limit", "50"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        process_s = time.monotonic() - t0
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import dlq_router.cli"], check=True)
        startup_s = time.monotonic() - t0
    finally:
        client.unlink(keys.parked, keys.parked_index)  # UNLINK: freed in the background
        client.close()
        path.unlink(missing_ok=True)
    return {
        "messages": n,
        "median_ms": statistics.median(times) * 1000,
        "process_ms": process_s * 1000,
        "python_import_ms": startup_s * 1000,
    }


def print_replay(label: str, r: dict[str, Any]) -> None:
    print(
        f"RabbitMQ replay, {label}: {r['replay_msgs_per_s']:,.0f} msg/s   shovel (on-confirm) "
        f"{r['shovel_msgs_per_s']:,.0f} msg/s   ratio {r['ratio']:.2f}x (target >= 0.8x)",
        flush=True,
    )
    if "cpu" in r:
        c = r["cpu"]
        print(
            f"  CPU per message: broker {c['broker_us_per_msg_shovel']} us while shovelling; "
            f"broker {c['broker_us_per_msg_replay']} us + replay {c['replay_us_per_msg']} us "
            f"while replaying; ceiling on these cores {c['ceiling_ratio']}x the shovel",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes (smoke run)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    tmp = Path("/tmp")
    out: dict[str, Any] = {}

    r = out["rabbitmq_replay_vs_shovel"] = bench_rabbit_replay_vs_shovel(20_000 // scale)
    print_replay("shared cores", r)
    with cpu.broker_on_own_core() as pinned:
        if pinned:
            r = out["rabbitmq_replay_vs_shovel_split_cores"] = bench_rabbit_replay_vs_shovel(
                20_000 // scale, split=True
            )
            print_replay("split cores (broker on core 0)", r)
    r = out["redis_replay"] = bench_redis_replay(100_000 // scale)
    print(
        f"Redis replay      {r['replay_msgs_per_s']:>9,.0f} msg/s   pipelined LPUSH "
        f"{r['lpush_msgs_per_s']:,.0f} msg/s   ratio {r['ratio_vs_lpush']:.2f}x "
        "(target >= 20,000 msg/s)"
    )
    r = out["redis_list_limit_50"] = bench_redis_list(1_000_000 // scale, tmp)
    print(
        f"Redis list --limit 50 on {r['messages']:,} parked: {r['median_ms']:.1f} ms "
        f"(median of 7, in-process; target < 200 ms); as a new process "
        f"{r['process_ms']:.0f} ms, of which Python start + imports {r['python_import_ms']:.0f} ms"
    )
    r = out["rabbitmq_full_listing"] = bench_rabbit_full_listing(100_000 // scale)
    print(
        f"RabbitMQ listing of {r['messages']:,} parked: {r['seconds']:.2f} s "
        f"({r['msgs_per_s']:,.0f} msg/s read and returned in place)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
