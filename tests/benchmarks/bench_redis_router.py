"""Redis router benchmarks, each a ratio against a baseline measured in the same run.

    .venv/bin/python tests/benchmarks/bench_redis_router.py [--quick]

1. mover throughput      move.lua batches vs plain pipelined LPUSH of the same payloads
                         (target >= 0.5x)
2. routing rate          claim + policy + route.lua vs a bare batched RPOP/decode/ZADD loop
                         with no policy (target >= 0.8x)
3. delay accuracy        lateness of arrival in the work list vs dlq-retry-due-at, 1000
                         retries/s through a router subprocess (target p99 <= 10 ms)
4. memory                router process RSS with 1,000,000 retries waiting (target <= 100 MB)

Uses unique keys on the shared Redis (REDIS_URL, default redis://127.0.0.1:6379/0) and
deletes them. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dlq_router.backends.base import RouterContext  # noqa: E402
from dlq_router.backends.redis.connection import connect, script  # noqa: E402
from dlq_router.backends.redis.mover import SEQ_SPAN, Mover  # noqa: E402
from dlq_router.backends.redis.router import Claimer  # noqa: E402
from dlq_router.metrics import Metrics  # noqa: E402
from dlq_router.names import redis_keys  # noqa: E402
from dlq_router.topology import Topology, parse_topology  # noqa: E402

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH = 500


def envelope(i: int, queue: str) -> str:
    """A Celery-protocol-2-sized kombu envelope (about 700 bytes)."""
    body = base64.b64encode(json.dumps([[i], {"to": "a@example.com"}, {}]).encode()).decode()
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": "app.send_email", "id": uuid.uuid4().hex,
                "shadow": None, "eta": None, "expires": None, "group": None,
                "group_index": None, "retries": 0, "timelimit": [None, None],
                "root_id": uuid.uuid4().hex, "parent_id": None, "argsrepr": f"({i},)",
                "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": False,
                "dlq-error-type": "ConnectionError", "dlq-error-message": "SMTP down",
            },
            "properties": {
                "correlation_id": uuid.uuid4().hex, "reply_to": uuid.uuid4().hex,
                "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        }
    )  # fmt: skip


def topology(name: str, delays: list[str], max_attempts: int = 5) -> Topology:
    route = {"name": name, "retry": {"delays": delays, "max_attempts": max_attempts}}
    return parse_topology({"url": URL, "routes": [route]}, source="<bench>")


def cleanup(client: redis.Redis, topo: Topology, *extra: str) -> None:
    k = redis_keys(topo, topo.routes[0])
    names = [
        k.work,
        k.dlq,
        k.inflight,
        k.claims,
        k.retry,
        k.seq,
        k.parked,
        k.parked_index,
        k.topology,
    ]
    client.unlink(*names, *[f"{k.work}\x06\x16{s}" for s in (3, 6, 9)], *extra)


def bench_mover(client: redis.Redis, n: int) -> dict[str, float]:
    topo = topology("bench-mv-" + uuid.uuid4().hex[:8], ["1s"])
    k = redis_keys(topo, topo.routes[0])
    payloads = [envelope(i, k.work) for i in range(n)]
    baseline_list = k.work + ":baseline"
    try:
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            pipe = client.pipeline(transaction=False)
            for p in payloads[i : i + BATCH]:
                pipe.lpush(baseline_list, p)
            pipe.execute()
        baseline = n / (time.perf_counter() - t0)
        client.unlink(baseline_list)

        for i in range(0, n, 5000):
            client.zadd(k.retry, {"0" + p: j + i for j, p in enumerate(payloads[i : i + 5000])})
        ctx = RouterContext(metrics=Metrics())
        mover = Mover(topo, ctx, priorities=True)
        move = script(client, "move")
        t0 = time.perf_counter()
        mover.move_due(move)
        rate = n / (time.perf_counter() - t0)
        assert client.llen(k.work) == n and client.zcard(k.retry) == 0
    finally:
        cleanup(client, topo, baseline_list)
    return {"mover_per_s": rate, "lpush_per_s": baseline, "ratio": rate / baseline}


def bench_routing(client: redis.Redis, n: int) -> dict[str, float]:
    topo = topology("bench-rt-" + uuid.uuid4().hex[:8], ["1h"])
    k = redis_keys(topo, topo.routes[0])
    payloads = [envelope(i, k.work) for i in range(n)]

    def fill() -> None:
        for i in range(0, n, 5000):
            client.lpush(k.dlq, *payloads[i : i + 5000])

    try:
        # Baseline: batched RPOP, decode, re-encode, ZADD; no lease, no policy.
        fill()
        t0 = time.perf_counter()
        seq = 0
        while True:
            items = client.rpop(k.dlq, 200)
            if not items:
                break
            members = {}
            for raw in items:
                env = json.loads(raw)
                env["headers"]["dlq-attempts"] = 1
                seq += 1
                members["0" + json.dumps(env)] = seq
            client.zadd(k.retry, members)
        baseline = n / (time.perf_counter() - t0)
        client.unlink(k.retry)

        fill()
        ctx = RouterContext(metrics=Metrics())
        claimer = Claimer(topo, ctx, Mover(topo, ctx, priorities=True))
        claim, route = script(client, "claim"), script(client, "route")
        rk = claimer.routes[0]
        t0 = time.perf_counter()
        while claimer.claim_route(rk, claim, route):
            pass
        rate = n / (time.perf_counter() - t0)
        assert client.zcard(k.retry) == n and client.zcard(k.inflight) == 0
    finally:
        cleanup(client, topo)
    return {"router_per_s": rate, "bare_loop_per_s": baseline, "ratio": rate / baseline}


class RouterProcess:
    def __init__(self, topo: Topology, tmp: Path) -> None:
        path = tmp / f"{topo.routes[0].name}.json"
        path.write_text(json.dumps(topo.model_dump(mode="json")))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        declare = [sys.executable, "-m", "dlq_router", "declare", "-t", str(path)]
        subprocess.run(declare, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dlq_router", "run", "-t", str(path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        """User + system CPU seconds the router has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_delay(client: redis.Redis, rate: int, seconds: float, tmp: Path) -> dict[str, float]:
    topo = topology("bench-dl-" + uuid.uuid4().hex[:8], ["100ms"], max_attempts=2)
    k = redis_keys(topo, topo.routes[0])
    n = int(rate * seconds)
    lateness: list[float] = []

    def consume() -> None:
        with redis.Redis.from_url(URL) as c:
            while len(lateness) < n:
                got = c.brpop([k.work], timeout=5)
                if got is None:
                    return
                arrived = time.time() * 1000
                due = json.loads(got[1])["headers"]["dlq-retry-due-at"]
                lateness.append(arrived - due)

    router = RouterProcess(topo, tmp)
    try:
        time.sleep(1.5)  # router start-up
        consumer = threading.Thread(target=consume)
        consumer.start()
        cpu_before = router.cpu_s()
        start = time.perf_counter()
        for i in range(n):  # paced: message i leaves at start + i / rate
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            client.lpush(k.dlq, envelope(i, k.work))
        consumer.join(30)
        cpu = (router.cpu_s() - cpu_before) / (time.perf_counter() - start)
    finally:
        router.stop()
        cleanup(client, topo)
    if len(lateness) < n:
        raise RuntimeError(f"only {len(lateness)} of {n} retries came back")
    return {
        "retries": n,
        "rate_per_s": rate,
        "p50_ms": percentile(lateness, 50),
        "p99_ms": percentile(lateness, 99),
        "max_ms": max(lateness),
        "min_ms": min(lateness),
        "router_cpu_share": cpu,
    }


def bench_memory(client: redis.Redis, waiting: int, tmp: Path) -> dict[str, float]:
    topo = topology("bench-mem-" + uuid.uuid4().hex[:8], ["1h"])
    k = redis_keys(topo, topo.routes[0])
    # Small envelopes keep the shared Redis near 200 MB; the router never reads them anyway.
    small = '0{"body":"e30=","headers":{"n":%d},"properties":{"delivery_tag":"%d"}}'
    due = (int(time.time() * 1000) + 3_600_000) * SEQ_SPAN
    try:
        for i in range(0, waiting, 10_000):
            client.zadd(k.retry, {small % (j, j): due + j for j in range(i, i + 10_000)})
        assert client.zcard(k.retry) == waiting
        router = RouterProcess(topo, tmp)
        try:
            time.sleep(2)
            peak = 0.0
            # Route dead letters while the million wait, and sample RSS meanwhile.
            for _ in range(20):
                client.lpush(k.dlq, *[envelope(j, k.work) for j in range(200)])
                time.sleep(0.1)
                peak = max(peak, router.rss_mb())
            deadline = time.monotonic() + 10
            while client.llen(k.dlq) and time.monotonic() < deadline:
                time.sleep(0.1)
            peak = max(peak, router.rss_mb())
            routed = client.zcard(k.retry) - waiting
        finally:
            router.stop()
    finally:
        cleanup(client, topo)
    return {"waiting": waiting, "router_rss_mb": peak, "routed_meanwhile": routed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    client = connect(URL, client_name="dlq-router-bench")
    assert isinstance(client, redis.Redis)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["mover"] = bench_mover(client, 100_000 // scale)
        m = out["mover"]
        print(
            f"mover throughput   {m['mover_per_s']:>10,.0f}/s  vs pipelined LPUSH "
            f"{m['lpush_per_s']:,.0f}/s  ratio {m['ratio']:.2f}x (target >= 0.5x)"
        )
        out["routing"] = bench_routing(client, 50_000 // scale)
        r = out["routing"]
        print(
            f"routing rate       {r['router_per_s']:>10,.0f}/s  vs bare claim/decode/ZADD "
            f"{r['bare_loop_per_s']:,.0f}/s  ratio {r['ratio']:.2f}x (target >= 0.8x)"
        )
        out["delay"] = bench_delay(client, 1000, 10 / scale, Path(tmp))
        d = out["delay"]
        print(
            f"delay accuracy     {d['retries']} retries at {d['rate_per_s']}/s: lateness "
            f"p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.1f} ms "
            f"(target p99 <= 10 ms); router CPU {d['router_cpu_share']:.0%} of a core"
        )
        out["memory"] = bench_memory(client, 1_000_000 // scale, Path(tmp))
        mem = out["memory"]
        print(
            f"router memory      RSS {mem['router_rss_mb']:.1f} MB with {mem['waiting']:,} "
            f"retries waiting ({mem['routed_meanwhile']} routed meanwhile; target <= 100 MB)"
        )
    out["targets_met"] = {
        "mover": m["ratio"] >= 0.5,
        "routing": r["ratio"] >= 0.8,
        "delay_p99": d["p99_ms"] <= 10,
        "memory": mem["router_rss_mb"] <= 100,
    }
    client.close()
    print(json.dumps({"benchmark": "redis_router", **out}))


if __name__ == "__main__":
    main()
