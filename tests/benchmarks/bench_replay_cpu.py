"""RabbitMQ replay's own CPU per message, two code trees in alternating runs.

    flock /tmp/bench.lock .venv/bin/python tests/benchmarks/bench_replay_cpu.py \
        --before /tmp/replay-base --after . [--n 20000] [--pairs 4]

Each run is a fresh process importing ``dlq_router`` from one tree: it parks ``n`` messages
as the router writes them (``bench_parking.fill_rabbit``), replays them all
(``Selector(all=True)``) and reads its own CPU (user + system, ``/proc``) and the broker's
over the replay alone. Runs alternate before, after, before, ... so the machine's drift
hits both; the summary is the median of each side and the ratio after / before. Nothing
is pinned. Every queue it makes is unique and deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def child(root: str, n: int) -> None:
    sys.path.insert(0, str(Path(root).resolve()))
    sys.path.insert(1, str(HERE.parent))
    import cpu_meter as cpu
    import pika

    import dlq_router
    from dlq_router import parking as p
    from dlq_router.backends.rabbitmq.backend import RabbitBackend
    from dlq_router.names import rabbit_names
    from dlq_router.topology import parse_topology
    from tests.conftest import RABBIT_URL, delete_rabbit_topology, route_dict

    assert str(Path(dlq_router.__file__).resolve()).startswith(str(Path(root).resolve()))
    # Only now: bench_parking puts its own repository first on sys.path, and dlq_router must
    # already be this tree's.
    from bench_parking import fill_rabbit, wait_depth

    topo = parse_topology({"url": RABBIT_URL, "routes": [route_dict(f"rcpu{os.getpid()}")]})
    route = topo.routes[0]
    names = rabbit_names(topo, route)
    backend = RabbitBackend(topo)
    backend.declare(dry_run=False)
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    try:
        fill_rabbit(ch, names.parking, topo, n)  # parked as the router writes them
        time.sleep(1.0)
        meter = cpu.Meter({"broker": cpu.broker_pid(), "replay": os.getpid()})
        meter.start()
        t0 = time.monotonic()
        result = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        seconds = time.monotonic() - t0
        meter.stop()
        assert result.replayed == n and not result.failed, result
        wait_depth(ch, route.queue, n)
        assert ch.queue_declare(names.parking, passive=True).method.message_count == 0
    finally:
        conn.close()
        backend.close()
        delete_rabbit_topology(topo)
    out = {
        "msgs_per_s": round(n / seconds),
        "replay_us": cpu.per_message_us(meter.used["replay"], n),
        "broker_us": cpu.per_message_us(meter.used.get("broker", 0.0), n),
    }
    print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="tree to import dlq_router from")
    parser.add_argument("--after", required=True)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.pairs):
        for side in ("before", "after"):
            root = getattr(args, side)
            command = [sys.executable, str(HERE), "--before", "-", "--after", "-"]
            done = subprocess.run(
                [*command, "--n", str(args.n), "--child", root],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            runs[side].append(row)
            print(side, row, flush=True)
    summary = {}
    for key in ("replay_us", "broker_us", "msgs_per_s"):
        before = statistics.median(r[key] for r in runs["before"])
        after = statistics.median(r[key] for r in runs["after"])
        summary[key] = {"before": before, "after": after, "ratio": round(after / before, 3)}
    print(json.dumps({"n": args.n, "pairs": args.pairs, "median": summary}))


if __name__ == "__main__":
    main()
