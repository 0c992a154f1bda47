"""Benchmark: the router and replay against RabbitMQ's own shovels, in one run (issue 12).

Run (from the repository root; ``make bench-parity ARGS=...``)::

    flock /tmp/bench.lock .venv/bin/python tests/benchmarks/bench_rabbit_parity.py \\
        [--n 20000] [--repeats 3] [--layouts split,shared] [--only router,replay/replay] [--quick]

Two sections, each with three movers and N messages per measurement:

- ``router``: N *real* dead letters (published to the work queue of a route shaped like
  ``topologies/example.yaml``'s ``emails``, 5 tiers x 4 jitter lanes, then rejected by a
  consumer so that they carry the broker's own ``x-death``) leave the DLQ. Movers: the
  dynamic shovel over TCP (``amqp://guest:guest@127.0.0.1:PORT``, into the first lane
  queue), the in-node shovel (``amqp://``, a direct connection: the broker's own limit)
  and ``dlq-router run`` (into the first tier's four lane queues). Arrivals are counted
  over the lane queues.
- ``replay``: N parked messages in the route's parking queue, exactly as the router parks
  them (real dead letters run once through ``dlq-router run`` with ``max_attempts: 1``,
  read back and republished before each measurement). Movers: both shovels, parking queue
  -> work queue, and ``dlq-router replay --route R`` (the CLI, a process of its own, no
  rate cap), which sends them through the work exchange into the same work queue (no
  consumer, no length limit, no TTL). Arrivals are counted in the work queue.

Two layouts, on a RabbitMQ node of the run's own (a free loopback port, ``rabbitmq_shovel``
enabled, stopped at the end): ``split`` pins every thread of the node's ``beam.smp`` to
core 0 and this script and the mover process (router, replay) to the other cores;
``shared`` pins nobody. The machine's shared node is never touched, let alone pinned.

Rates are taken between 10 % and 90 % of the N arrivals (polled every 10 ms), with the CPU
of the broker and of the mover process (/proc) over the same interval. Configurations run
round-robin, ``--repeats`` times (layout order alternating), so drift spreads over all of
them; ratios pair each run with the TCP shovel of the same repeat, section and layout. After
every measurement every message must be accounted for: the source queue empty (ready and
unacked) and exactly N in the destination; otherwise the script stops with an error.

Prints a markdown table per section, the issue's Done-when criteria evaluated on the
medians, and one JSON line with everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cpu_meter as cpu
from bench_rabbit_attribution import (
    Broker,
    Mover,
    Process,
    Run,
    Shovel,
    bench_topology,
    cleanup,
    depth,
    fmt,
    make_dead_letters,
    own_node,
    router_mover,
    spread,
    wait_depth,
    watch,
)

from dlq_router import native
from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.declare import declare
from dlq_router.backends.rabbitmq.spec import topology_specs
from dlq_router.names import RabbitNames, rabbit_names
from dlq_router.topology import Topology

TCP, IN_NODE, ROUTER, REPLAY = "TCP shovel", "in-node shovel", "dlq-router run", "dlq-router replay"
SECTIONS = ("router", "replay")
LAYOUTS = ("split", "shared")
# The Done-when: ratios to the TCP shovel per layout, and the router's own CPU.
TARGETS = {"split": 1.0, "shared": 0.9}
ROUTER_US_MAX = 40.0


@dataclass(frozen=True)
class Config:
    section: str  # router | replay
    mover: str  # TCP | IN_NODE | ROUTER | REPLAY
    key: str  # what --only selects: "router/tcp", ...


CONFIGS = [
    Config("router", TCP, "router/tcp"),
    Config("router", IN_NODE, "router/in-node"),
    Config("router", ROUTER, "router/run"),
    Config("replay", TCP, "replay/tcp"),
    Config("replay", IN_NODE, "replay/in-node"),
    Config("replay", REPLAY, "replay/replay"),
]


@dataclass
class ParityRun(Run):
    """One measurement; ``client_cpu`` is the mover process's (none for the shovels)."""

    section: str = ""
    layout: str = ""
    mover: str = ""


# ---- summary (pure) ------------------------------------------------------------------------


def summarise(runs: list[ParityRun]) -> dict[str, Any]:
    """Per section, layout and mover: msg/s, ratios to both shovels (paired by repeat),
    broker and mover CPU per message; medians with their range."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        for layout in LAYOUTS:
            here = [r for r in runs if r.section == section and r.layout == layout]
            if not here:
                continue
            base = {
                mover: {r.rep: r.rate for r in here if r.mover == mover and r.rate > 0}
                for mover in (TCP, IN_NODE)
            }
            rows: dict[str, Any] = {}
            for mover in dict.fromkeys(r.mover for r in here):
                rs = [r for r in here if r.mover == mover]
                row: dict[str, Any] = {
                    "runs": len(rs),
                    "rate": spread([r.rate for r in rs], 0),
                    "x_tcp_shovel": _ratios(rs, base[TCP]),
                    "x_in_node_shovel": _ratios(rs, base[IN_NODE]),
                    "broker_us": spread([r.broker_us for r in rs]),
                    "mover_us": spread([r.client_us for r in rs]) if rs[0].client_cpu else {},
                }
                rows[mover] = row
            out.setdefault(section, {})[layout] = rows
    return out


def _ratios(runs: list[ParityRun], base: dict[int, float]) -> dict[str, float]:
    ratios = [r.rate / base[r.rep] for r in runs if r.rep in base]
    return spread(ratios, 3) if ratios else {}


def done_when(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's criteria from the medians (the router's CPU: its worse layout); ``ok`` is
    None where this run did not measure a criterion, and ``all`` needs every one met."""

    def ratio(section: str, mover: str, layout: str) -> float | None:
        row = summary.get(section, {}).get(layout, {}).get(mover, {})
        value = row.get("x_tcp_shovel", {}).get("median")
        return None if value is None else float(value)

    def judged(value: float | None, ok: bool) -> dict[str, Any]:
        return {"value": value, "ok": None if value is None else ok}

    out: dict[str, Any] = {}
    for layout, target in TARGETS.items():
        value = ratio("router", ROUTER, layout)
        out[f"router_{layout}_x_tcp_ge_{target}"] = judged(value, (value or 0.0) >= target)
    router_us = {
        layout: rows[ROUTER]["mover_us"]["median"]
        for layout, rows in summary.get("router", {}).items()
        if rows.get(ROUTER, {}).get("mover_us")
    }
    worst = max(router_us.values()) if router_us else None
    out[f"router_us_per_msg_le_{ROUTER_US_MAX:g}"] = {
        **judged(worst, (worst or 0.0) <= ROUTER_US_MAX),
        "by_layout": router_us,
    }
    for layout, target in TARGETS.items():
        value = ratio("replay", REPLAY, layout)
        out[f"replay_{layout}_x_tcp_ge_{target}"] = judged(value, (value or 0.0) >= target)
    verdicts = [v["ok"] for v in out.values()]
    out["all"] = all(v is True for v in verdicts)
    return out


def print_tables(summary: dict[str, Any], verdict: dict[str, Any]) -> None:
    titles = {"router": "Routing dead letters (DLQ -> lanes)", "replay": "Replay (parking -> work)"}
    for section, layouts in summary.items():
        print(f"\n{titles[section]}\n")
        print(
            "| layout | mover | msg/s (10-90 %) | x TCP shovel | x in-node shovel | "
            "broker µs/msg | mover µs/msg |"
        )
        print("|---|---|---|---|---|---|---|")
        for layout, rows in layouts.items():
            for mover, row in rows.items():
                print(
                    f"| {layout} | {mover} | {fmt(row['rate'])} | {fmt(row['x_tcp_shovel'])} "
                    f"| {fmt(row['x_in_node_shovel'])} | {fmt(row['broker_us'])} "
                    f"| {fmt(row['mover_us'])} |"
                )
    print("\n| Done when (issue 12), from the medians | value | met |\n|---|---|---|")
    for name, v in verdict.items():
        if name != "all":
            met = {True: "yes", False: "no", None: "not measured"}[v["ok"]]
            print(f"| {name} | {'-' if v['value'] is None else v['value']} | {met} |")


# ---- pinning (our own node only) -----------------------------------------------------------


class Pins:
    """``split``: the node's every thread on core 0, this script (and so the movers it starts)
    on the others; ``shared``: nobody pinned. Restored to every core on the way out."""

    def __init__(self, broker: Broker) -> None:
        if not broker.own:
            raise RuntimeError("pinning is only for a node of this run's own")
        self.pid = broker.pid
        self.everything = set(range(cpu.CORES))

    def apply(self, layout: str) -> None:
        broker, mine = ({0}, self.everything - {0}) if layout == "split" else (self.everything,) * 2
        for tid in cpu._threads(self.pid):  # again each time: a thread may have been added
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(tid, broker)
        os.sched_setaffinity(0, mine)

    def mover(self, pid: int, layout: str) -> None:
        """Inherited from this script already; set again so the intent is explicit."""
        os.sched_setaffinity(pid, self.everything - {0} if layout == "split" else self.everything)

    def restore(self) -> None:
        with contextlib.suppress(OSError):
            self.apply("shared")


# ---- the two sections' queues --------------------------------------------------------------


@dataclass
class Section:
    """One route on the node: where the N messages start and where they are counted."""

    name: str
    uid: str
    topology: Topology
    names: RabbitNames
    workdir: Path
    source: str
    dests: list[str]
    stock: list[tuple[Any, bytes]] = field(default_factory=list)  # parked messages to refill


def router_section(broker: Broker, root: Path) -> Section:
    uid = "par" + uuid.uuid4().hex[:8]
    topo = bench_topology(uid, broker.url)
    names = rabbit_names(topo, topo.routes[0])
    lanes = [lane.queue for lane in names.tiers[0].lanes]
    return Section("router", uid, topo, names, _dir(root / "router"), names.dlq, lanes)


def replay_section(broker: Broker, root: Path) -> Section:
    uid = "park" + uuid.uuid4().hex[:8]
    topo = bench_topology(uid, broker.url, max_attempts=1)  # every dead letter parks
    names = rabbit_names(topo, topo.routes[0])
    return Section(
        "replay", uid, topo, names, _dir(root / "replay"), names.parking, [names.work_queue]
    )


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def settle(broker: Broker, queue: str, timeout: float = 60.0) -> None:
    """Wait until ``queue`` holds nothing, unacknowledged messages included (only the
    broker's own tooling shows those): the mover has acked everything it moved."""
    deadline = time.monotonic() + timeout
    while True:
        out = broker.ctl("-q", "list_queues", "name", "messages", "--no-table-headers")
        counts = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        left = int(counts.get(queue, "-1").strip())
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} still holds {left} messages (ready + unacked)")
        time.sleep(0.2)


def account(ch: Any, sec: Section, n: int, label: str) -> None:
    """Every message accounted for, or the run stops here."""
    left = depth(ch, sec.source)
    arrived = sum(depth(ch, q) for q in sec.dests)
    if left != 0 or arrived != n:
        raise RuntimeError(
            f"{label}: {arrived} of {n} arrived and {left} left in {sec.source} "
            "(expected exactly all of them moved, once)"
        )


def park_stock(ch: Any, sec: Section, n: int) -> None:
    """N real dead letters through ``dlq-router run`` into the parking queue, then read back
    (properties and body as the router wrote them) to refill it before each replay run."""
    make_dead_letters(ch, sec.names, n)
    router = router_mover(sec.topology, sec.workdir)
    try:
        deadline = time.monotonic() + 300
        while depth(ch, sec.names.parking) < n:
            if time.monotonic() > deadline or not router.alive():
                raise RuntimeError(f"the router parked {depth(ch, sec.names.parking)} of {n}")
            time.sleep(0.05)
    finally:
        router.stop()
    if depth(ch, sec.names.dlq) != 0 or depth(ch, sec.names.parking) != n:
        raise RuntimeError("parking the stock left dead letters behind or parked some twice")
    ch.basic_qos(prefetch_count=1000)
    for method, props, body in ch.consume(sec.names.parking, inactivity_timeout=30):
        if method is None:
            raise RuntimeError(f"the parking queue stopped delivering after {len(sec.stock)}")
        sec.stock.append((props, body))
        if len(sec.stock) % 500 == 0 or len(sec.stock) == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if len(sec.stock) == n:
            break
    ch.cancel()
    wait_depth(ch, sec.names.parking, 0)


def fill_parking(ch: Any, sec: Section) -> None:
    for i, (props, body) in enumerate(sec.stock, 1):
        ch.basic_publish(sec.names.parking_exchange, sec.names.parking, body, props)
        if i % 2000 == 0:
            ch.connection.process_data_events(time_limit=0)
    wait_depth(ch, sec.names.parking, len(sec.stock))


# ---- movers --------------------------------------------------------------------------------


class Replay(Process):
    """``dlq-router replay --route R --json``: exits by itself once everything is confirmed."""

    def __init__(self, sec: Section) -> None:
        path = sec.workdir / "topology.yaml"  # written by router_mover for the stock
        route = sec.topology.routes[0].name
        cmd = [sys.executable, "-m", "dlq_router", "replay", "-t", str(path), "--route", route]
        super().__init__([*cmd, "--json"], sec.workdir / "replay.log")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)
        super().stop()

    def report(self) -> dict[str, Any]:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                if isinstance(result, dict) and "replayed" in result:
                    if self.proc.returncode != 0:
                        break
                    return result
        raise RuntimeError(f"replay exited {self.proc.returncode}: {lines[-3:]}")


class StartingShovel(Mover):
    """A shovel whose parameter is set in a thread while the caller already watches, so that
    no early arrival is missed. (Measured: ``rabbitmqctl`` exits 10-30 ms before the first
    message arrives, so the CLI's own CPU stays outside the 10-90 % window.)"""

    def __init__(self, broker: Broker, sec: Section, mover: str) -> None:
        uri = broker.url.replace("/%2F", "") if mover == TCP else "amqp://"
        name = f"{sec.uid}-{'tcp' if mover == TCP else 'direct'}"  # what cleanup() clears
        self.shovel: Shovel | None = None
        self.error: BaseException | None = None

        def make() -> None:
            try:
                self.shovel = Shovel(broker, name, uri, sec.names, sec.source, sec.dests[0])
            except BaseException as exc:  # re-raised by started()
                self.error = exc

        self.thread = threading.Thread(target=make, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.error is None

    def started(self) -> None:
        self.thread.join(120)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.thread.join(120)
        if self.shovel is not None:
            self.shovel.stop()


# ---- one measurement -----------------------------------------------------------------------


def measure(
    cfg: Config, layout: str, rep: int, ch: Any, sec: Section, n: int, broker: Broker, pins: Pins
) -> ParityRun:
    run = ParityRun(cfg.key, rep, section=cfg.section, layout=layout, mover=cfg.mover)
    if sec.name == "router":
        make_dead_letters(ch, sec.names, n)
    else:
        fill_parking(ch, sec)
    pins.apply(layout)
    time.sleep(0.5)  # let the broker finish writing them
    before = cpu.cpu_seconds(broker.pid)
    time.sleep(1.0)
    run.background_cores = cpu.cpu_seconds(broker.pid) - before
    pids = {"broker": broker.pid}
    mover: Mover
    if cfg.mover in (TCP, IN_NODE):
        mover = StartingShovel(broker, sec, cfg.mover)
    else:
        mover = router_mover(sec.topology, sec.workdir) if cfg.mover == ROUTER else Replay(sec)
        assert mover.pid is not None
        pins.mover(mover.pid, layout)
        pids["client"] = mover.pid
    try:
        watch(ch, sec.dests, n, pids, mover, run)
        if isinstance(mover, StartingShovel):
            mover.started()
        if isinstance(mover, Replay):
            mover.proc.wait(120)  # it exits once everything is confirmed and acked
        settle(broker, sec.source)
    finally:
        mover.stop()
    if cfg.mover == REPLAY:
        result = mover.report()
        if result.get("replayed") != n or result.get("failed"):
            raise RuntimeError(f"replay reported {result}, expected {n} replayed")
    if "client" in pids and not run.client_cpu:
        raise RuntimeError(f"{cfg.key}: the mover's CPU was not read at both marks")
    account(ch, sec, n, f"{cfg.key} ({layout}, repeat {rep})")
    for q in sec.dests:
        ch.queue_purge(q)
    return run


# ---- main ----------------------------------------------------------------------------------


def selected(only: str) -> list[Config]:
    if not only:
        return list(CONFIGS)
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    known = {c.key for c in CONFIGS} | set(SECTIONS)
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {sorted(known)}")
    chosen = {c.key for c in CONFIGS if c.key in tokens or c.section in tokens}
    chosen |= {f"{c.split('/')[0]}/tcp" for c in chosen}  # every ratio is to the TCP shovel
    return [c for c in CONFIGS if c.key in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="split,shared", help="split, shared or both")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections (router, replay) or configurations "
        f"({', '.join(c.key for c in CONFIGS)}); the TCP shovel always runs",
    )
    parser.add_argument("--quick", action="store_true", help="N=5000, 1 repeat (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 5000, 1
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or set(layouts) - set(LAYOUTS):
        raise SystemExit(f"--layouts: choose from {', '.join(LAYOUTS)}")
    if "split" in layouts and cpu.CORES < 2:
        raise SystemExit("the split layout needs at least 2 cores")
    configs = selected(args.only)
    # The subprocesses read DLQ_ROUTER_URL before their topology file: it must not send
    # them to the machine's node.
    os.environ.pop("DLQ_ROUTER_URL", None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    load_start = os.getloadavg()
    started = time.monotonic()
    with own_node() as broker:
        version = _version(broker)
        runs = run_all(args, configs, layouts, broker)
    summary = summarise(runs)
    verdict = done_when(summary)
    print_tables(summary, verdict)
    print(
        json.dumps(
            {
                "benchmark": "rabbit_parity",
                "n": args.n,
                "repeats": args.repeats,
                "layouts": layouts,
                "cores": cpu.CORES,
                "rabbitmq": version,
                "commit": _commit(),
                "hot_path": native.describe(),  # the movers run this venv's dlq_router too
                "load_avg_start": [round(x, 2) for x in load_start],
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                "seconds": round(time.monotonic() - started),
                "summary": summary,
                "done_when": verdict,
                "runs": [raw(r) for r in runs],
            }
        )
    )


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _version(broker: Broker) -> str:
    with contextlib.suppress(Exception):
        return broker.ctl("-q", "eval", "rabbit_misc:version().").strip().strip('"')
    return "?"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def run_all(
    args: Any, configs: list[Config], layouts: list[str], broker: Broker
) -> list[ParityRun]:
    pins = Pins(broker)
    conn = connect(broker.url, client_name="dlq-router bench parity")
    ch = conn.channel()
    runs: list[ParityRun] = []
    print(
        f"N={args.n} per measurement, {args.repeats} repeats, layouts {'/'.join(layouts)}, "
        f"{len(configs)} configurations, on a node of its own (pid {broker.pid}, "
        f"{broker.url.split('@')[-1]}); {cpu.CORES} cores; load average "
        f"{os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        sections = {
            s.name: s
            for s in (router_section(broker, Path(tmp)), replay_section(broker, Path(tmp)))
            if any(c.section == s.name for c in configs)
        }
        try:
            for sec in sections.values():
                declare(conn, broker.url, topology_specs(sec.topology), dry_run=False)
            if "replay" in sections:
                t0 = time.monotonic()
                park_stock(ch, sections["replay"], args.n)
                print(
                    f"parked {args.n} real dead letters with dlq-router run "
                    f"({time.monotonic() - t0:.0f} s); they refill the parking queue",
                    flush=True,
                )
            total = args.repeats * len(layouts) * len(configs)
            for rep in range(args.repeats):
                order = layouts if rep % 2 == 0 else layouts[::-1]
                for layout in order:
                    for cfg in configs:
                        run = measure(
                            cfg, layout, rep, ch, sections[cfg.section], args.n, broker, pins
                        )
                        runs.append(run)
                        print(
                            f"[{len(runs)}/{total}] rep {rep} {layout:6} {cfg.section:6} "
                            f"{cfg.mover:17} {run.rate:7.0f} msg/s  broker {run.broker_us:6.1f} "
                            f"us/msg  mover {run.client_us:6.1f} us/msg  (window "
                            f"{run.msgs / args.n:.0%}, background {run.background_cores:.2f} "
                            f"cores)",
                            flush=True,
                        )
        finally:
            pins.restore()
            for sec in sections.values():
                cleanup(conn, broker, sec.topology, sec.uid)
    return runs


def raw(r: ParityRun) -> dict[str, Any]:
    return {
        "section": r.section,
        "layout": r.layout,
        "mover": r.mover,
        "rep": r.rep,
        "rate": round(r.rate),
        "broker_us": round(r.broker_us, 1),
        "mover_us": round(r.client_us, 1),
        "background_cores": round(r.background_cores, 2),
        "msgs": r.msgs,
        "seconds": round(r.seconds, 3),
    }


if __name__ == "__main__":
    main()
