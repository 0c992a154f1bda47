"""Benchmark: the broker's CPU per dead letter moved, by mover and by wire choice.

Run (brokers up, from the repository root)::

    .venv/bin/python tests/benchmarks/bench_rabbit_attribution.py [--n 15000] [--repeats 3]

Every configuration moves N *real* dead letters (published to the work queue of a route
shaped like ``topologies/example.yaml``'s ``emails``, five tiers of four jitter lanes, then
rejected by a consumer so that the broker writes its own ``x-death``) from the DLQ into the
first tier's lane queues (1 h TTL, so they stay). The configurations:

- baselines: the dynamic shovel over TCP (``amqp://user:pass@host:5672``), the in-node
  shovel (``amqp://``, a direct connection: the broker's own limit), and ``dlq-router run``
  itself;
- ``rabbit_wire_client.py`` doing what the router does on the wire (window 2,000,
  mandatory, retry exchange, random lane, ``dlq-*`` headers added, ``x-death`` stripped,
  one ``multiple`` ack per confirmed run, one socket write per ioloop turn), then the same
  with exactly one of those choices switched, and with all of them switched to what the
  shovel does.

Rates are taken from 10 % to 90 % moved (arrivals in the lane queues, polled every 10 ms),
and the CPU of the broker (``beam.smp``, /proc) and of the client over the same interval,
per message. The configurations run round-robin, ``--repeats`` times, so drift spreads over
all of them; the script prints medians and spreads, a markdown table of each factor's
share of the broker's extra CPU per message, and one JSON line. It never pins CPUs.

By default it starts a RabbitMQ node of its own on a free loopback port
(``tests/chaos/rabbit_node.py``, ``rabbitmq_shovel`` enabled) and stops it at the end, so the
broker's CPU is this run's alone; ``--shared-node`` measures the machine's node instead
(``DLQ_ROUTER_URL``), whose CPU includes every other client's traffic. Everything it creates
(queues, exchanges, shovel parameters) has a unique name and is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cpu_meter as cpu
import pika
import yaml

from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.declare import declare
from dlq_router.backends.rabbitmq.spec import ExchangeSpec, QueueSpec, topology_specs
from dlq_router.names import RabbitNames, rabbit_names
from dlq_router.topology import Topology, parse_topology

URL = os.environ.get("DLQ_ROUTER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
HERE = Path(__file__).resolve().parent
BODY = b"\x80\x04" + os.urandom(254)  # 256 opaque bytes (a pickle-ish body)
POLL = 0.01

# What the router does on the wire, and what the shovel does instead.
ROUTER_WIRE: dict[str, Any] = {
    "mandatory": True,
    "exchange": "retry",
    "lanes": 4,
    "add_dlq": True,
    "strip_x_death": True,
    "window": 2000,
    "ack": "run",
    "coalesce": True,
    "channels": "one",
}
SHOVEL_WIRE: dict[str, Any] = {
    "mandatory": False,
    "exchange": "default",
    "lanes": 1,
    "add_dlq": False,
    "strip_x_death": False,
    "window": 1000,  # the shovel's src-prefetch-count default
    "ack": "run",  # the shovel acks with the confirm's own multiple flag
    "coalesce": True,
    "channels": "one",
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # tcp_shovel | direct_shovel | router | client
    factor: str = ""  # the one wire choice this case switches, for the attribution table
    change: str = ""
    wire: dict[str, Any] = field(default_factory=dict)


ROUTER_LIKE = "client: router's wire"
CASES = [
    Case("TCP shovel", "tcp_shovel"),
    Case("in-node shovel", "direct_shovel"),
    Case("dlq-router run", "router"),
    Case(ROUTER_LIKE, "client", wire=ROUTER_WIRE),
    Case(
        "client: shovel's wire",
        "client",
        "all of them",
        "every choice below as the shovel makes it",
        SHOVEL_WIRE,
    ),
    Case("- mandatory", "client", "mandatory", "mandatory off", {"mandatory": False}),
    Case(
        "- default exchange",
        "client",
        "retry exchange (direct, 20 bindings)",
        "default exchange, straight to the lane queue",
        {"exchange": "default"},
    ),
    Case("- dlq headers", "client", "dlq-* headers added", "none added", {"add_dlq": False}),
    Case("- x-death kept", "client", "x-death stripped", "x-death kept", {"strip_x_death": False}),
    Case("- one lane", "client", "4 jitter lanes (random)", "one lane queue", {"lanes": 1}),
    Case("- window 1000", "client", "window 2,000", "window 1,000 (shovel)", {"window": 1000}),
    Case(
        "- ack each",
        "client",
        "one multiple ack per confirmed run",
        "one ack per message",
        {"ack": "each"},
    ),
    Case(
        "- write per frame",
        "client",
        "one socket write per ioloop turn",
        "pika's write per frame (confirm batching follows)",
        {"coalesce": False},
    ),
    Case(
        "+ channel per lane",
        "client",
        "one channel publishes to every lane",
        "a publishing channel per lane (not the shovel's: a candidate fix)",
        {"channels": "per_key"},
    ),
]


@dataclass
class Run:
    case: str
    rep: int
    msgs: int = 0  # moved between the 10 % and 90 % marks
    seconds: float = 0.0
    broker_cpu: float = 0.0
    client_cpu: float = 0.0
    background_cores: float = 0.0  # the broker's CPU just before, nothing of ours moving
    leftover: int = 0
    client: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.msgs / self.seconds if self.seconds else 0.0

    @property
    def broker_us(self) -> float:
        return self.broker_cpu / self.msgs * 1e6 if self.msgs else 0.0

    @property
    def broker_us_net(self) -> float:
        """Minus the broker's background CPU measured just before (others' traffic)."""
        used = self.broker_cpu - self.background_cores * self.seconds
        return used / self.msgs * 1e6 if self.msgs else 0.0

    @property
    def client_us(self) -> float:
        return self.client_cpu / self.msgs * 1e6 if self.msgs else 0.0


# ---- broker helpers -----------------------------------------------------------------------


def depth(ch: Any, queue: str) -> int:
    count: int = ch.queue_declare(queue, passive=True).method.message_count
    return count


def wait_depth(ch: Any, queue: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while depth(ch, queue) != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} has {depth(ch, queue)} messages, expected {n}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Broker:
    """The node measured: its AMQP URL, its Erlang VM's OS pid, and rabbitmqctl for it."""

    url: str
    pid: int
    ctl: Callable[..., str]
    own: bool


def shared_ctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True)
    return done.stdout


@contextlib.contextmanager
def shared_node() -> Iterator[Broker]:
    """The machine's RabbitMQ (``DLQ_ROUTER_URL``): other clients' traffic counts too."""
    plugins = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "rabbitmq_shovel"], capture_output=True, text=True
    )
    if "rabbitmq_shovel " not in plugins.stdout:
        print("enabling rabbitmq_shovel ...", flush=True)
        subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_shovel"], check=True)
    yield Broker(URL, cpu.erlang_pid(shared_ctl("eval", "os:getpid().")), shared_ctl, own=False)


@contextlib.contextmanager
def own_node() -> Iterator[Broker]:
    """A RabbitMQ node of this run's own on a free loopback port (tests/chaos/rabbit_node.py,
    with rabbitmq_shovel enabled), stopped whatever happens: its CPU is this run's alone."""
    sys.path.insert(0, str(HERE.parents[1]))
    from tests.chaos.rabbit_node import RabbitNode, rabbit_home

    with rabbit_home() as home:
        node = RabbitNode(home, f"bench-{uuid.uuid4().hex[:8]}")
        (node.base / "enabled_plugins").write_text("[rabbitmq_shovel].\n")
        try:
            print(f"starting RabbitMQ node {node.node} on 127.0.0.1:{node.port} ...", flush=True)
            node.start()
            pid = cpu.erlang_pid(node.ctl("eval", "os:getpid()."))
            yield Broker(node.url, pid, node.ctl, own=True)
        finally:
            with contextlib.suppress(Exception):
                node.stop()
            node.kill()


def bench_topology(uid: str, url: str, max_attempts: int = 6) -> Topology:
    """``topologies/example.yaml``'s ``emails`` shape (5 tiers x 4 jitter lanes) with delays
    long enough that nothing expires during the run (``max_attempts=1``: every dead letter
    is parked)."""
    route = {
        "name": uid,
        "exchange": uid,
        "retry": {
            "delays": ["1h", "2h", "3h", "4h", "5h"],
            "max_attempts": max_attempts,
            "jitter": 0.1,
            "jitter_lanes": 4,
        },
    }
    return parse_topology({"url": url, "routes": [route]}, source="<bench>")


def celery_props(i: int) -> pika.BasicProperties:
    task_id = f"{uuid.UUID(int=i)}"
    headers = {
        "lang": "py",
        "task": "tasks.send_email",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "retries": 0,
        "origin": "gen1@bench",
    }
    return pika.BasicProperties(
        headers=headers,
        message_id=f"m-{i}",
        content_type="application/x-python-serialize",
        content_encoding="binary",
        delivery_mode=2,
    )


def make_dead_letters(ch: Any, names: RabbitNames, n: int) -> None:
    """N messages into the work queue, then rejected: the broker dead-letters each into the
    DLQ with its own ``x-death`` (reason ``rejected``)."""
    for i in range(n):
        ch.basic_publish(names.work_exchange, names.routing_key, BODY, celery_props(i))
    wait_depth(ch, names.work_queue, n)
    ch.basic_qos(prefetch_count=1000)
    for seen, (method, _props, _body) in enumerate(
        ch.consume(names.work_queue, inactivity_timeout=30), 1
    ):
        if method is None:
            raise RuntimeError(f"the work queue stopped delivering after {seen - 1} of {n}")
        if seen % 500 == 0 or seen == n:
            ch.basic_nack(method.delivery_tag, multiple=True, requeue=False)
        if seen == n:
            break
    ch.cancel()
    wait_depth(ch, names.dlq, n)


# ---- movers -------------------------------------------------------------------------------


class Mover:
    """Starts one configuration's mover; ``pid`` is its process when it has its own."""

    pid: int | None = None

    def alive(self) -> bool:
        return True

    def stop(self) -> None: ...

    def report(self) -> dict[str, Any]:
        return {}


class Shovel(Mover):
    """A dynamic shovel, by default from the DLQ into the first lane queue."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        uri: str,
        names: RabbitNames,
        src: str | None = None,
        dest: str | None = None,
    ) -> None:
        self.name = name
        self.ctl = broker.ctl
        definition = {
            "src-protocol": "amqp091",
            "src-uri": uri,
            "src-queue": src or names.dlq,
            "dest-protocol": "amqp091",
            "dest-uri": uri,
            "dest-queue": dest or names.tiers[0].lanes[0].queue,
            "ack-mode": "on-confirm",
            "src-delete-after": "never",
        }
        self.ctl("set_parameter", "shovel", name, json.dumps(definition))

    def stop(self) -> None:
        self.ctl("clear_parameter", "shovel", self.name)


class Process(Mover):
    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self.out = log.open("wb")
        # Without DLQ_ROUTER_URL: it would override the node of its own in the topology.
        env = {k: v for k, v in os.environ.items() if k != "DLQ_ROUTER_URL"}
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


class WireClient(Process):
    def __init__(
        self, url: str, wire: dict[str, Any], names: RabbitNames, n: int, log: Path
    ) -> None:
        lanes = [lane.queue for lane in names.tiers[0].lanes][: wire["lanes"]]
        cfg = {
            "url": url,
            "queue": names.dlq,
            "n": n,
            "route": names.work_queue,
            "exchange": names.retry_exchange if wire["exchange"] == "retry" else "",
            "keys": lanes,
            **{k: v for k, v in wire.items() if k not in ("exchange", "lanes")},
        }
        client = str(HERE / "rabbit_wire_client.py")
        super().__init__([sys.executable, client, json.dumps(cfg)], log)

    def stop(self) -> None:
        # It exits by itself once every message is confirmed and acked.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)
        super().stop()

    def report(self) -> dict[str, Any]:
        lines = self.log.read_text().strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"wire client failed: {lines[-1:] or self.proc.returncode}")
        out: dict[str, Any] = json.loads(lines[-1])
        return out


def router_mover(topology: Topology, workdir: Path) -> Process:
    path = workdir / "topology.yaml"
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "dlq_router", "run", "-t", str(path)]
    return Process(cmd, workdir / "router.log")


# ---- one measured run ---------------------------------------------------------------------


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):  # a client that already exited
            out[name] = cpu.cpu_seconds(pid)
    return out


def watch(ch: Any, lanes: list[str], n: int, pids: dict[str, int], mover: Mover, run: Run) -> None:
    """Poll the lane queues; read CPU and the clock at the 10 % and 90 % marks."""
    marks: list[tuple[float, int, dict[str, float]]] = []
    deadline = time.monotonic() + 300
    while True:
        moved = sum(depth(ch, q) for q in lanes)
        now = time.monotonic()
        if len(marks) < 2 and moved >= n * (0.1 if not marks else 0.9):
            marks.append((now, moved, cpu_now(pids)))
        if moved >= n:
            break
        if now > deadline or not mover.alive():
            if now <= deadline and sum(depth(ch, q) for q in lanes) >= n:
                continue  # a mover that exits once done finished between the two reads
            raise RuntimeError(f"{run.case}: {moved} of {n} moved ({mover.__class__.__name__})")
        time.sleep(POLL)
    (t1, c1, cpu1), (t2, c2, cpu2) = marks
    run.msgs, run.seconds = c2 - c1, t2 - t1
    run.broker_cpu = cpu2["broker"] - cpu1["broker"]
    if "client" in cpu1 and "client" in cpu2:
        run.client_cpu = cpu2["client"] - cpu1["client"]


def measure(
    case: Case,
    rep: int,
    ch: Any,
    topology: Topology,
    names: RabbitNames,
    n: int,
    broker: Broker,
    workdir: Path,
    uid: str,
) -> Run:
    run = Run(case.name, rep)
    lanes = [lane.queue for lane in names.tiers[0].lanes]
    make_dead_letters(ch, names, n)
    time.sleep(1.0)  # let the broker finish writing them
    before = cpu.cpu_seconds(broker.pid)
    time.sleep(1.0)
    run.background_cores = cpu.cpu_seconds(broker.pid) - before
    mover: Mover
    tcp_uri = broker.url.replace("/%2F", "")  # the shovel's URI form for the default vhost
    if case.kind == "tcp_shovel":
        mover = Shovel(broker, f"{uid}-tcp", tcp_uri, names)
    elif case.kind == "direct_shovel":
        mover = Shovel(broker, f"{uid}-direct", "amqp://", names)
    elif case.kind == "router":
        mover = router_mover(topology, workdir)
    else:
        wire = {**ROUTER_WIRE, **case.wire}
        mover = WireClient(broker.url, wire, names, n, workdir / f"client-{rep}.log")
    pids = {"broker": broker.pid}
    if mover.pid is not None:
        pids["client"] = mover.pid
    try:
        watch(ch, lanes, n, pids, mover, run)
    finally:
        mover.stop()
    run.client = mover.report()
    run.leftover = depth(ch, names.dlq)
    for q in [names.dlq, *lanes]:
        ch.queue_purge(q)
    return run


# ---- summary ------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def fmt(s: dict[str, float]) -> str:
    if not s:
        return "-"
    return f"{s['median']:g} ({s['min']:g} to {s['max']:g})"


def summarise(runs: list[Run], cases: list[Case]) -> dict[str, Any]:
    by: dict[str, list[Run]] = {c.name: [r for r in runs if r.case == c.name] for c in cases}
    tcp = {r.rep: r for r in by["TCP shovel"]}
    out: dict[str, Any] = {"cases": {}, "factors": []}
    for c in cases:
        rs = by[c.name]
        if not rs:
            continue
        row: dict[str, Any] = {
            "rate": spread([r.rate for r in rs], 0),
            "ratio_vs_tcp_shovel": spread([r.rate / tcp[r.rep].rate for r in rs], 3),
            "broker_us": spread([r.broker_us for r in rs]),
            "broker_us_net": spread([r.broker_us_net for r in rs]),
            "background_cores": spread([r.background_cores for r in rs], 2),
            "leftover": max(r.leftover for r in rs),
        }
        if c.kind in ("router", "client"):
            row["client_us"] = spread([r.client_us for r in rs])
        if c.kind == "client":
            for key in ("confirm_frames_per_msg", "ack_frames_per_msg"):
                row[key] = spread([r.client[key] for r in rs], 3)
        out["cases"][c.name] = row
    ref = {r.rep: r for r in by.get(ROUTER_LIKE, [])}
    out["extra_vs_tcp_shovel_us"] = _gap(ref, tcp)
    out["wire_gap_us"] = _gap(ref, {r.rep: r for r in by.get("client: shovel's wire", [])})
    for c in cases:
        if not c.factor or c.name not in out["cases"]:
            continue
        deltas = [ref[r.rep].broker_us - r.broker_us for r in by[c.name] if r.rep in ref]
        if not deltas:
            continue
        d = spread(deltas)
        out["factors"].append(
            {
                "case": c.name,
                "factor": c.factor,
                "changed_to": c.change,
                "broker_us": out["cases"][c.name]["broker_us"],
                "saving_us": d,
                "share_of_extra": _share(d, out["extra_vs_tcp_shovel_us"]),
                "share_of_wire_gap": _share(d, out["wire_gap_us"]),
            }
        )
    return out


def _gap(ref: dict[int, Run], other: dict[int, Run]) -> dict[str, float]:
    """Broker µs/msg of the router-wire client minus ``other``'s, paired by repeat."""
    gaps = [ref[rep].broker_us - other[rep].broker_us for rep in ref if rep in other]
    return spread(gaps) if gaps else {}


def _share(saving: dict[str, float], total: dict[str, float]) -> float | None:
    """A factor's median saving as a share of a median gap; None when there is no gap."""
    whole = total.get("median", 0.0)
    return round(saving["median"] / whole, 2) if whole > 0 else None


def print_tables(summary: dict[str, Any]) -> None:
    print(
        "\n| configuration | msg/s (10-90 %) | x TCP shovel | broker µs/msg | "
        "broker µs/msg, background removed | client µs/msg | confirms/msg | acks/msg |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in summary["cases"].items():
        client = fmt(row["client_us"]) if "client_us" in row else "-"
        conf = fmt(row["confirm_frames_per_msg"]) if "confirm_frames_per_msg" in row else "-"
        acks = fmt(row["ack_frames_per_msg"]) if "ack_frames_per_msg" in row else "-"
        print(
            f"| {name} | {fmt(row['rate'])} | {fmt(row['ratio_vs_tcp_shovel'])} | "
            f"{fmt(row['broker_us'])} | {fmt(row['broker_us_net'])} | {client} | {conf} | {acks} |"
        )
    print(
        "\nbroker's extra CPU per message with the router's wire: "
        f"vs the TCP shovel {fmt(summary['extra_vs_tcp_shovel_us'])} µs, "
        f"vs the client with the shovel's wire {fmt(summary['wire_gap_us'])} µs"
    )
    print(
        "\n| factor (router's choice) | switched to | broker µs/msg | saving µs/msg "
        "| share of the gap to the shovel's wire | share of the extra over the TCP shovel |"
    )
    print("|---|---|---|---|---|---|")
    for f in summary["factors"]:
        print(
            f"| {f['factor']} | {f['changed_to']} | {fmt(f['broker_us'])} | "
            f"{fmt(f['saving_us'])} | {_pct(f['share_of_wire_gap'])} | "
            f"{_pct(f['share_of_extra'])} |"
        )


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


# ---- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15000, help="dead letters per configuration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="comma-separated configuration names (default: all)"
    )
    parser.add_argument(
        "--shared-node",
        action="store_true",
        help="measure the machine's RabbitMQ (DLQ_ROUTER_URL) instead of a node of its own",
    )
    args = parser.parse_args()
    # Every ratio is against the TCP shovel, every saving against the router-wire client.
    wanted = {"TCP shovel", ROUTER_LIKE, *args.only.split(",")} if args.only else None
    cases = [c for c in CASES if wanted is None or c.name in wanted]
    # Started in the background, a script inherits SIGINT ignored: make both signals clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    with shared_node() if args.shared_node else own_node() as broker:
        runs = run_all(args, cases, broker)
    summary = summarise(runs, cases)
    print_tables(summary)
    print(
        json.dumps(
            {
                "benchmark": "rabbit_attribution",
                "n": args.n,
                "repeats": args.repeats,
                "own_node": broker.own,
                "load_avg_end": round(os.getloadavg()[0], 1),
                **summary,
                "runs": [raw(r) for r in runs],
            }
        )
    )


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_all(args: Any, cases: list[Case], broker: Broker) -> list[Run]:
    uid = "attr" + uuid.uuid4().hex[:8]
    topology = bench_topology(uid, broker.url)
    names = rabbit_names(topology, topology.routes[0])
    conn = connect(broker.url, client_name="dlq-router bench attribution")
    ch = conn.channel()
    runs: list[Run] = []
    where = "a node of its own" if broker.own else "the shared node"
    print(
        f"N={args.n} dead letters of {len(BODY)} B per configuration, {args.repeats} repeats, "
        f"{len(cases)} configurations, on {where} (pid {broker.pid}); {cpu.CORES} cores shared "
        f"with everything else; load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    declare(conn, broker.url, topology_specs(topology), dry_run=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            warm = next(c for c in CASES if c.name == ROUTER_LIKE)
            measure(warm, -1, ch, topology, names, args.n // 3, broker, workdir, uid)
            for rep in range(args.repeats):
                for case in cases:
                    run = measure(case, rep, ch, topology, names, args.n, broker, workdir, uid)
                    runs.append(run)
                    print(
                        f"[{rep}] {case.name:24} {run.rate:7.0f} msg/s  broker "
                        f"{run.broker_us:6.1f} us/msg (background {run.background_cores:.2f} "
                        f"cores)  client {run.client_us:6.1f} us/msg  left {run.leftover}",
                        flush=True,
                    )
                    time.sleep(1.0)
    finally:
        cleanup(conn, broker, topology, uid)
    return runs


def raw(r: Run) -> dict[str, Any]:
    return {
        "case": r.case,
        "rep": r.rep,
        "rate": round(r.rate),
        "broker_us": round(r.broker_us, 1),
        "broker_us_net": round(r.broker_us_net, 1),
        "client_us": round(r.client_us, 1),
        "background_cores": round(r.background_cores, 2),
        "msgs": r.msgs,
        "seconds": round(r.seconds, 3),
        "leftover": r.leftover,
        **{k: v for k, v in r.client.items() if k.endswith("per_msg") or k == "returns"},
    }


def cleanup(conn: Any, broker: Broker, topology: Topology, uid: str) -> None:
    for name in (f"{uid}-tcp", f"{uid}-direct"):
        with contextlib.suppress(Exception):  # already cleared after its run
            broker.ctl("clear_parameter", "shovel", name)
    with contextlib.suppress(Exception):
        ch = conn.channel() if conn.is_open else connect(broker.url).channel()
        for spec in topology_specs(topology):
            if isinstance(spec, QueueSpec):
                ch.queue_delete(spec.name)
            elif isinstance(spec, ExchangeSpec):
                ch.exchange_delete(spec.name)
    with contextlib.suppress(Exception):
        conn.close()


if __name__ == "__main__":
    main()
