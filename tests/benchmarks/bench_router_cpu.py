"""The RabbitMQ router's own CPU per dead letter, two code trees in alternating runs.

    flock /tmp/bench.lock .venv/bin/python tests/benchmarks/bench_router_cpu.py \
        --before /tmp/before --after . [--n 20000] [--pairs 4]

Each run routes ``n`` real dead letters (published to the work queue of a route shaped like
``topologies/example.yaml``'s ``emails``, five tiers of four jitter lanes, then rejected by
a consumer so that the broker writes its own ``x-death``) with ``dlq-router run`` from one
tree (run by that tree's own ``.venv/bin/python``: make install there first) into the first
tier's lanes, and
reads the router's CPU (user + system, ``/proc``) between 10 % and 90 % moved, as
``bench_rabbit_parity.py`` does. Runs alternate before, after, before, ... on the machine's
RabbitMQ, so drift hits both sides; the summary is the median of each side and the ratio
after / before. Nothing is pinned. Every queue it makes is unique and deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import cpu_meter as cpu
import yaml
from bench_rabbit_attribution import bench_topology, depth, make_dead_letters
from bench_rabbit_router import cleanup

from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.declare import declare
from dlq_router.backends.rabbitmq.spec import topology_specs
from dlq_router.names import rabbit_names

URL = os.environ.get("DLQ_ROUTER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def python(tree: Path) -> Path:
    return tree.resolve() / ".venv" / "bin" / "python"


def one_run(tree: Path, n: int, workdir: Path) -> dict[str, float]:
    """Route ``n`` dead letters with ``tree``'s router: its µs/msg and msg/s (10-90 %)."""
    uid = "rcpu" + uuid.uuid4().hex[:8]
    topology = bench_topology(uid, URL)
    names = rabbit_names(topology, topology.routes[0])
    lanes = [lane.queue for lane in names.tiers[0].lanes]
    conn = connect(URL, client_name="dlq-router bench router cpu")
    ch = conn.channel()
    declare(conn, URL, topology_specs(topology), dry_run=False)
    proc = None
    try:
        make_dead_letters(ch, names, n)
        path = workdir / f"{uid}.yaml"
        path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))
        env = {k: v for k, v in os.environ.items() if k != "DLQ_ROUTER_URL"}  # (it would
        # override the topology's url)
        with (workdir / f"{uid}.log").open("wb") as log:
            cmd = [str(python(tree)), "-m", "dlq_router", "run", "-t", str(path)]
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree.resolve()
            )
        marks: list[tuple[float, int, float]] = []
        deadline = time.monotonic() + 300
        while len(marks) < 2:
            moved = sum(depth(ch, q) for q in lanes)
            if moved >= n * (0.1 if not marks else 0.9):
                marks.append((time.monotonic(), moved, cpu.cpu_seconds(proc.pid)))
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{tree}: {moved} of {n} moved")
            time.sleep(0.01)
        (t1, m1, c1), (t2, m2, c2) = marks
        while sum(depth(ch, q) for q in lanes) < n:  # every dead letter arrives
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tree}: not all {n} arrived")
            time.sleep(0.05)
        return {"us_per_msg": (c2 - c1) / (m2 - m1) * 1e6, "msgs_per_s": (m2 - m1) / (t2 - t1)}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        cleanup(ch, topology)
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a tree with dlq_router/")
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    for tree in (args.before, args.after):
        if not (tree / "dlq_router" / "__init__.py").is_file():
            parser.error(f"{tree} holds no dlq_router/")
        if not python(tree).is_file():
            parser.error(f"{tree} has no .venv: run `make install` there first")
        probe = (
            "import dlq_router; print(dlq_router.__file__)\n"
            "try:\n    from dlq_router import native; print(native.describe())\n"
            "except ImportError:\n    print('pure Python (a tree before dlq_router.native)')"
        )
        found, hot_path = subprocess.run(
            [str(python(tree)), "-c", probe],
            cwd=tree.resolve(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        if not Path(found).resolve().is_relative_to(tree.resolve()):
            parser.error(f"{python(tree)} imports {found}, not {tree}'s dlq_router")
        print(f"{tree}: {hot_path}", flush=True)
    sides: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for side in ("before", "after"):
                run = one_run(getattr(args, side), args.n, Path(tmp))
                sides[side].append(run)
                print(
                    f"[{pair}] {side:6} {run['us_per_msg']:6.1f} us/msg "
                    f"{run['msgs_per_s']:7.0f} msg/s",
                    flush=True,
                )
    med = {s: statistics.median(r["us_per_msg"] for r in runs) for s, runs in sides.items()}
    print(
        f"router CPU per dead letter, median of {args.pairs}: before {med['before']:.1f} us, "
        f"after {med['after']:.1f} us, after/before {med['after'] / med['before']:.2f}x"
    )
    print(
        json.dumps(
            {
                "benchmark": "router_cpu",
                "n": args.n,
                "pairs": args.pairs,
                "load_avg": [round(load, 2), round(os.getloadavg()[0], 2)],
                "median_us": {s: round(v, 1) for s, v in med.items()},
                "ratio": round(med["after"] / med["before"], 3),
                "runs": sides,
            }
        )
    )


if __name__ == "__main__":
    main()
