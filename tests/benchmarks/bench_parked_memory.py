"""Parked reads at scale: time and peak RSS of `parked list --limit 50`, `parked groups` and
`status` on a parking lot of N messages (default 1,000,000), on RabbitMQ and on Redis.

    .venv/bin/python tests/benchmarks/bench_parked_memory.py [--size N] [--broker rabbitmq|redis]

Each command runs as a new process (`python -m dlq_router ...`); its peak RSS comes from
wait4(). Baseline in the same run: the peak RSS of `python -m dlq_router --version` (Python
and the imports), so the figure above it is what the read itself costs. Targets: RabbitMQ
peak RSS <= 150 MB; a Redis page of 50 under 50 ms in-process (median of 7).

Filling: pipelined publishes (RabbitMQ) / pipelined HSET+ZADD (Redis) of messages shaped as
the router parks them, in five error groups. Filling 1,000,000 takes a few minutes and about
1 GB in the broker; everything is deleted afterwards. After the reads the parking queue must
still hold N messages (reads are non-destructive).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
from tests.integration.parking_support import Parked, RedisParkDriver, write_topology

BODY = b'{"to": "someone@example.com", "template": "welcome", "args": [1, 2, 3]}' * 2
ERRORS = ("ConnectionError", "TimeoutError", "ValueError", "KeyError", "SMTPException")
TARGET_RABBIT_MB = 150
DLQ_ROUTER = (sys.executable, "-m", "dlq_router")
TARGET_REDIS_PAGE_MS = 50


def topology(kind: str) -> Topology:
    uid = "benchmem" + uuid.uuid4().hex[:8]
    url = RABBIT_URL if kind == "rabbitmq" else REDIS_URL
    return parse_topology({"url": url, "routes": [route_dict(uid)]})


def parked(i: int, now: int, n: int) -> Parked:
    return Parked(f"m{i}", body=BODY, parked_at=now - (n - i), error_type=ERRORS[i % 5])


def fill_rabbit(topo: Topology, n: int) -> None:
    route = topo.routes[0]
    queue = rabbit_names(topo, route).parking
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    now = int(time.time() * 1000)
    t0 = time.monotonic()
    for i in range(n):
        m = parked(i, now, n)
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=f"task-m{i}",
            headers=m.headers(route),
        )
        ch.basic_publish("", queue, m.body, props)
        if i % 5000 == 0:
            conn.process_data_events(time_limit=0)  # let flow control and heartbeats through
        if i and i % 100_000 == 0:
            print(f"  published {i:,} ({time.monotonic() - t0:.0f} s)", flush=True)
    deadline = time.monotonic() + 600
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} did not reach {n} messages")
        time.sleep(0.5)
    conn.close()
    print(f"  filled {n:,} in {time.monotonic() - t0:.0f} s", flush=True)


def fill_redis(topo: Topology, n: int, chunk: int = 5000) -> None:
    route = topo.routes[0]
    keys = redis_keys(topo, route)
    client = redis.Redis.from_url(REDIS_URL)
    now = int(time.time() * 1000)
    t0 = time.monotonic()
    for start in range(0, n, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            m = parked(i, now, n)
            pipe.hset(keys.parked, m.id, json.dumps(RedisParkDriver.envelope(route, m)))
            pipe.zadd(keys.parked_index, {m.id: m.parked_at})
        pipe.execute()
    client.close()
    print(f"  filled {n:,} in {time.monotonic() - t0:.0f} s", flush=True)


# Runs the command and writes its peak RSS (KiB) and exit code to the fd given first. A
# process started by this (large) script would inherit its RSS high-water mark through
# fork+exec (Linux keeps the larger of the two in ru_maxrss), so a small Python in between
# starts the command and reads wait4().
_WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
os.write(int(sys.argv[1]), f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def measure(args: list[str]) -> dict[str, Any]:
    """Run ``python -m dlq_router ARGS``: seconds, peak RSS (MB) and stdout."""
    read_end, write_end = os.pipe()
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, str(write_end), *DLQ_ROUTER, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            pass_fds=(write_end,),
        )
        seconds = time.monotonic() - t0
        os.close(write_end)
        rss_kib, code = (int(x) for x in os.read(read_end, 100).split())
        os.close(read_end)
        if code != 0 or done.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{args}: exit {code}: {err.read().decode()[-500:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(rss_kib / 1024, 1),  # ru_maxrss is in KiB on Linux
        "stdout": done.stdout.decode(),
    }


def reads(kind: str, topo: Topology, n: int, path: Path) -> dict[str, Any]:
    t = ["-t", str(path)]
    baseline = measure(["--version"])
    page = measure(["parked", "list", *t, "--limit", "50"])
    assert len(page["stdout"].splitlines()) == 51, page["stdout"][:500]
    groups = measure(["parked", "groups", *t, "--json"])
    counts = [json.loads(line)["count"] for line in groups["stdout"].splitlines()]
    assert sum(counts) == n and len(counts) == len(ERRORS), counts
    status = measure(["status", *t, "--json"])
    (route,) = json.loads(status["stdout"])["routes"]
    assert route["parked"] == n, route
    assert [g["count"] for g in route["top_groups"]] == [n // len(ERRORS)] * 3, route  # all read
    out: dict[str, Any] = {"messages": n, "baseline_version_rss_mb": baseline["peak_rss_mb"]}
    for name, r in (("list_limit_50", page), ("groups", groups), ("status", status)):
        out[name] = {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}
    if kind == "redis":
        backend = open_backend(topo)
        try:
            times = []
            for _ in range(7):
                t0 = time.monotonic()
                rows = list(backend.parking.iter(p.Selector(limit=50)))
                times.append(time.monotonic() - t0)
                assert len(rows) == 50
        finally:
            backend.close()
        out["page_50_in_process_ms"] = round(statistics.median(times) * 1000, 1)
    return out


def run(kind: str, n: int) -> dict[str, Any]:
    topo = topology(kind)
    path = write_topology(topo, Path(tempfile.gettempdir()) / f"{topo.routes[0].name}.yaml")
    print(f"{kind}: filling {n:,} parked messages", flush=True)
    try:
        if kind == "rabbitmq":
            backend = RabbitBackend(topo)
            backend.declare(dry_run=False)
            backend.close()
            fill_rabbit(topo, n)
        else:
            fill_redis(topo, n)
        out = reads(kind, topo, n, path)
        if kind == "rabbitmq":  # non-destructive: every message is back in the queue
            conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
            queue = rabbit_names(topo, topo.routes[0]).parking
            depth = conn.channel().queue_declare(queue, passive=True).method.message_count
            conn.close()
            assert depth == n, depth
    finally:
        path.unlink(missing_ok=True)
        if kind == "rabbitmq":
            delete_rabbit_topology(topo)
        else:
            client = redis.Redis.from_url(REDIS_URL)
            keys = redis_keys(topo, topo.routes[0])
            client.unlink(keys.parked, keys.parked_index)  # freed in the background
            client.close()
            delete_redis_topology(topo)
    return out


def report(kind: str, r: dict[str, Any]) -> None:
    print(
        f"{kind}, {r['messages']:,} parked (baseline: --version peaks at "
        f"{r['baseline_version_rss_mb']} MB)"
    )
    for name in ("list_limit_50", "groups", "status"):
        x = r[name]
        print(f"  {name:<14} {x['seconds']:>7.2f} s   peak RSS {x['peak_rss_mb']:>6.1f} MB")
    if kind == "rabbitmq":
        worst = max(r[k]["peak_rss_mb"] for k in ("list_limit_50", "groups", "status"))
        verdict = "met" if worst <= TARGET_RABBIT_MB else "MISSED"
        print(f"  peak RSS target <= {TARGET_RABBIT_MB} MB: {verdict}")
    else:
        ms = r["page_50_in_process_ms"]
        verdict = "met" if ms < TARGET_REDIS_PAGE_MS else "MISSED"
        print(f"  page of 50 in-process: {ms} ms (target < {TARGET_REDIS_PAGE_MS} ms: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--broker", choices=("rabbitmq", "redis"), action="append")
    args = parser.parse_args()
    out = {}
    for kind in args.broker or ("rabbitmq", "redis"):
        out[kind] = run(kind, args.size)
        report(kind, out[kind])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
