"""dlq-router against Celery's own retries, every contender measured in one run.

    .venv/bin/python tests/benchmarks/bench_celery.py [--quick] [--json] [--only 1,2,...]

Contenders (the same task code, ``celery_bench_app.py``, and a real prefork ``celery worker``
subprocess for each; see ``celery_contenders.py``):

  1   Celery ``self.retry(countdown=600)`` on RabbitMQ, classic queue
  2   Celery native delayed delivery on RabbitMQ, quorum queue (Celery >= 5.5)
  3   Celery ``self.retry(countdown=600)`` on Redis
  3b  the same with kombu's ``visibility_timeout`` below the countdown
  4   dlq-router on RabbitMQ (``dlq_router.celery.configure`` + ``dlq-router declare``/``run``)
  5   dlq-router on Redis

Scenario "wait": N tasks (10,000; ``--quick`` 1,000) fail once with a 10-minute backoff.
While their retries wait: the worker's RSS, the messages it holds unacked (read from the
broker), where the N retries are (read from the broker), the time 1,000 fresh tasks take,
and a worker restart (SIGTERM, start): time until it runs a task again, and whether any
waiting retry was lost or duplicated. Checks: every one of the N ran exactly once (none
came back early), the N retries were all held somewhere, the fresh tasks ran.

Scenario "exactly three": 1,000 tasks fail twice, then succeed (backoff 5 s, then 10 s).
Counts tasks that ran exactly 3 times, duplicate runs, and tasks that never finished.

A contender that cannot run here is a row saying why. Prints a table; ``--json`` adds one
JSON line per contender and scenario, then one for the run. Exit code 0 when every check
passed, 1 when a check failed (the table says which), 2 on bad arguments.

Uses its own vhost per RabbitMQ contender (``rabbitmqctl add_vhost``/``delete_vhost``) and
its own key names on the shared Redis; deletes exactly what it made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402

from tests.benchmarks.celery_bench_app import build_app  # noqa: E402
from tests.benchmarks.celery_bench_stats import rabbitmqctl, tree_rss_kib  # noqa: E402
from tests.benchmarks.celery_contenders import (  # noqa: E402
    CONTENDERS,
    REDIS_URL,
    Instance,
    Spec,
    unavailable,
)

WAIT_BACKOFF = 600.0  # the 10-minute backoff
CORRECT_BACKOFF = [5.0, 10.0]
TASK = "bench_celery.work"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class TimedOut(Exception):
    pass


def wait_for(what: str, check: Callable[[], bool], timeout: float, every: float = 0.25) -> float:
    """Seconds until ``check()`` holds; raises TimedOut after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimedOut(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - started


def wait_progress(what: str, count: Callable[[], int], target: int, stall: float) -> float:
    """Seconds until ``count()`` reaches ``target``. Waits as long as it keeps moving (N =
    10,000 takes minutes on a busy machine); raises TimedOut after ``stall`` s without any
    progress."""
    started = last_move = time.monotonic()
    last = -1
    while (value := count()) < target:
        now = time.monotonic()
        if value != last:
            last, last_move = value, now
        elif now - last_move > stall:
            raise TimedOut(f"{what}: stuck at {value}/{target} for {stall:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


@dataclass
class Row:
    key: str
    label: str
    scenario: str
    status: str = "ok"  # ok | cannot run | error | check failed
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


class Run:
    """One contender in one scenario: owns its Instance and cleans it up."""

    def __init__(self, spec: Spec, args: argparse.Namespace, run_id: str, scenario: str) -> None:
        backoff = [WAIT_BACKOFF] if scenario == "wait" else CORRECT_BACKOFF
        self.inst = Instance(spec, run_id, scenario, backoff)
        self.args = args
        self.app = None
        self.probes = 0
        self.rss_peak = (0, 0)

    def publish(self, prefix: str, count: int, fails: int) -> None:
        assert self.app is not None
        with self.app.producer_or_acquire() as producer:
            for i in range(count):
                self.app.send_task(TASK, args=[f"{prefix}-{i}", fails], producer=producer)

    def sample_rss(self) -> tuple[int, int]:
        worker = self.inst.worker
        rss = tree_rss_kib(worker.pid) if worker is not None else (0, 0)
        self.rss_peak = (max(self.rss_peak[0], rss[0]), max(self.rss_peak[1], rss[1]))
        return rss

    def probe(self, timeout: float) -> float:
        """Publish one task that succeeds; seconds until a worker ran it."""
        self.probes += 1
        want = self.probes
        started = time.monotonic()
        self.publish(f"probe{want}", 1, 0)
        worker = self.inst.worker

        def ran() -> bool:
            if worker is not None and worker.poll() is not None:
                raise RuntimeError(f"the worker exited: {self.inst.log_tail()}")
            return self.inst.done(f"probe{want}") >= 1

        wait_for("worker runs a task", ran, timeout)
        return time.monotonic() - started

    def start(self) -> float:
        self.inst.setup()
        self.app = build_app(self.inst.env())
        self.inst.start_worker(self.args.concurrency)
        return self.probe(self.args.timeout)

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        self.inst.cleanup()


def held_total(held: dict[str, int]) -> int:
    return sum(v for k, v in held.items() if k != "parked")


def scenario_wait(run: Run, n: int, fresh: int) -> Row:
    spec, inst, timeout = run.inst.spec, run.inst, run.args.timeout
    row = Row(spec.key, spec.label, "wait")
    f = row.figures
    f["n"], f["fresh"], f["timeout_s"] = n, fresh, timeout
    f["worker_start_s"] = round(run.start(), 2)
    idle = run.sample_rss()
    f["rss_idle_mb"] = round(idle[0] / 1024, 1)

    log(f"[{spec.key}] publishing {n} tasks that fail once (countdown {WAIT_BACKOFF:g} s)")
    t0 = time.monotonic()
    run.publish("n", n, 1)
    f["publish_s"] = round(time.monotonic() - t0, 2)

    def failed_once() -> int:
        run.sample_rss()
        return inst.runs_seen() - run.probes

    f["all_failed_s"] = round(wait_progress("N tasks ran once", failed_once, n, timeout), 1)

    def all_held() -> bool:
        held = inst.held()
        return held_total(held) == n and held.get("DLQ", 0) == 0

    try:
        wait_for("N retries held", all_held, timeout, 1.0)
    except TimedOut as exc:
        row.reason = str(exc)
    # Let the worker take in what it will (Celery keeps taking countdown tasks in): settled
    # when its unacked count is N or has not moved for the settle time.
    last, since = -1, time.monotonic()
    settle_start = time.monotonic()
    while time.monotonic() - settle_start < run.args.settle:
        unacked = inst.held().get("worker (unacked)", 0)
        if unacked >= n:
            break
        if unacked != last:
            last, since = unacked, time.monotonic()
        elif time.monotonic() - since > 5:
            break
        time.sleep(1)
    held = inst.held()
    snapshot_at = time.monotonic()
    rss = run.sample_rss()
    f["held"] = held
    f["unacked"] = held.get("worker (unacked)", 0)
    f["rss_mb"] = round(rss[0] / 1024, 1)
    f["rss_tree_mb"] = round(rss[1] / 1024, 1)
    if inst.router is not None:
        f["router_rss_mb"] = round(tree_rss_kib(inst.router.pid)[1] / 1024, 1)
    row.checks["N retries all held somewhere"] = held_total(held) == n

    log(f"[{spec.key}] {fresh} fresh tasks while the retries wait")
    run.publish("fresh", fresh, 0)

    def fresh_done() -> bool:
        run.sample_rss()
        return inst.done("fresh") >= fresh

    try:
        f["fresh_s"] = round(wait_for("fresh tasks", fresh_done, timeout, 0.2), 2)
    except TimedOut:
        # An outcome, not a broken run: the fresh tasks queue behind retries the worker has
        # not taken in yet. The intake rate says how long they would wait.
        f["fresh_s"] = None
        f["fresh_timeout_s"] = timeout
    f["fresh_done"] = inst.done("fresh")
    held_after = inst.held()
    f["unacked_after_fresh"] = held_after.get("worker (unacked)", 0)
    window = time.monotonic() - snapshot_at
    f["intake_per_s"] = round((f["unacked_after_fresh"] - f["unacked"]) / window, 2)
    ahead = held.get("work queue (ready)", 0)
    if f["fresh_s"] is None and ahead and f["intake_per_s"] > 0:
        # At the measured intake, when the worker would reach the first fresh task.
        f["fresh_start_estimate_s"] = round(ahead / f["intake_per_s"])
    f["rss_peak_mb"] = round(run.rss_peak[0] / 1024, 1)
    f["rss_tree_peak_mb"] = round(run.rss_peak[1] / 1024, 1)

    log(f"[{spec.key}] restart: SIGTERM the worker, start a new one")
    assert inst.worker is not None
    t2 = time.monotonic()
    f["shutdown_s"] = round(inst.stop(inst.worker), 2)
    inst.start_worker(run.args.concurrency)
    try:
        run.probe(timeout)
        f["restart_to_work_s"] = round(time.monotonic() - t2, 2)
    except TimedOut:
        f["restart_to_work_s"] = None

    # Lost or duplicated by the restart: what the broker holds, once it is stable again,
    # against the N retries plus whatever fresh tasks and probe have not run yet.
    def expected() -> int:
        pending_probe = 0 if inst.done(f"probe{run.probes}") else 1
        return n + fresh - inst.done("fresh") + pending_probe

    def back_to_n() -> bool:
        return held_total(inst.held()) == expected()

    with contextlib.suppress(TimedOut):
        wait_for("N retries held after the restart", back_to_n, 60, 1.0)
    after, want = inst.held(), expected()
    f["held_after_restart"] = after
    f["lost_by_restart"] = max(0, want - held_total(after))
    f["duplicated_by_restart"] = max(0, held_total(after) - want)

    runs, done = inst.counters()
    main_runs = [v for k, v in runs.items() if k.startswith("n-")]
    f["ran_early"] = sum(1 for v in main_runs if v > 1)
    row.checks["each of the N ran once and waited"] = len(main_runs) == n and f["ran_early"] == 0
    f["scenario_s"] = round(time.monotonic() - t0, 1)
    if f["ran_early"] and f["scenario_s"] > WAIT_BACKOFF:
        row.reason = (
            f"the scenario took {f['scenario_s']:.0f} s, longer than the {WAIT_BACKOFF:g} s "
            "countdown: retries came due during it; use a smaller --n"
        )
    # A fresh time is only reported when every fresh task recorded its own run.
    row.checks["fresh tasks ran"] = f["fresh_s"] is None or done.get("fresh", 0) >= fresh
    return row


def scenario_exactly_three(run: Run, m: int) -> Row:
    spec, inst = run.inst.spec, run.inst
    row = Row(spec.key, spec.label, "three")
    f = row.figures
    f["m"], f["backoff_s"] = m, CORRECT_BACKOFF
    if spec.short_visibility_timeout:
        f["visibility_timeout_s"] = inst.visibility_timeout()
    run.start()
    log(f"[{spec.key}] {m} tasks that fail twice, then succeed")
    t0 = time.monotonic()
    run.publish("c", m, 2)

    def finished() -> bool:
        runs, _ = inst.counters()
        return sum(1 for k, v in runs.items() if k.startswith("c-") and v >= 3) >= m

    try:
        f["finished_s"] = round(wait_for("M tasks finished", finished, run.args.timeout, 1.0), 1)
    except TimedOut:
        f["finished_s"] = None
    # Late duplicates come after the longest countdown (or kombu's restore sweep).
    time.sleep(max(CORRECT_BACKOFF) + 5)
    runs, _ = inst.counters()
    counts = [runs.get(f"c-{i}", 0) for i in range(m)]
    f["exactly_3"] = sum(1 for c in counts if c == 3)
    f["tasks_duplicated"] = sum(1 for c in counts if c > 3)
    f["duplicate_runs"] = sum(c - 3 for c in counts if c > 3)
    f["not_finished"] = sum(1 for c in counts if c < 3)
    f["runs_histogram"] = {str(k): counts.count(k) for k in sorted(set(counts))}
    f["held_at_end"] = {k: v for k, v in inst.held().items() if v}
    f["elapsed_s"] = round(time.monotonic() - t0, 1)
    row.checks["tasks were published and ran"] = sum(counts) >= m
    return row


def outcome(row: Row) -> str:
    failed = [name for name, ok in row.checks.items() if not ok]
    return (
        f"{row.status}"
        + (f": {'; '.join(failed)}" if failed else "")
        + (f" ({row.reason})" if row.reason else "")
    )


def run_one(
    spec: Spec, args: argparse.Namespace, run_id: str, scenario: str, body: Callable[[Run], Row]
) -> Row:
    reason = unavailable(spec)
    if reason is not None:
        return Row(spec.key, spec.label, scenario, status="cannot run", reason=reason)
    run = Run(spec, args, run_id, scenario)
    try:
        row = body(run)
        if not all(row.checks.values()):
            row.status = "check failed"
        return row
    except Exception as exc:  # one contender's failure is a row, not the end of the run
        tail = run.inst.log_tail()
        why = f"{type(exc).__name__}: {exc}" + (f" (worker log: {tail})" if tail else "")
        return Row(spec.key, spec.label, scenario, status="error", reason=why)
    finally:
        run.close()


# -- output -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
    }
    try:
        info["rabbitmq"] = rabbitmqctl("version").strip()
    except Exception as exc:
        info["rabbitmq"] = f"unknown ({exc})"
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
            info["redis"] = client.info("server")["redis_version"]
    except Exception as exc:
        info["redis"] = f"unknown ({exc})"
    return info


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:g} s" if isinstance(value, float) else str(value)


def where(held: dict[str, int]) -> str:
    parts = [f"{k} {v}" for k, v in held.items() if v and k != "parked"]
    return ", ".join(parts) or "nowhere"


def run_timeout(row: Row) -> float:
    return float(row.figures.get("timeout_s", 0))


def wait_cells(row: Row) -> list[str]:
    f = row.figures
    if row.status in ("cannot run", "error"):
        return [f"{row.status}: {row.reason}"]
    fresh = (
        _s(f["fresh_s"])
        if f["fresh_s"] is not None
        else f"not done in {f['fresh_timeout_s']:g} s ({f['fresh_done']}/{f['fresh']} ran;"
        f" worker took in {f['intake_per_s']:g} retries/s"
        + (
            f", would reach them in ~{f['fresh_start_estimate_s'] / 60:.0f} min)"
            if "fresh_start_estimate_s" in f
            else ")"
        )
    )
    rss = f"{f['rss_mb']} MB (idle {f['rss_idle_mb']}, peak {f['rss_peak_mb']})"
    if "router_rss_mb" in f:
        rss += f" + router {f['router_rss_mb']} MB"
    restart = (
        _s(f["restart_to_work_s"])
        if f["restart_to_work_s"] is not None
        else f"not in {run_timeout(row):g} s"
    ) + f" (shutdown {_s(f['shutdown_s'])})"
    lost_dup = f"{f['lost_by_restart']} / {f['duplicated_by_restart']}"
    checks = (
        "ok"
        if row.status == "ok"
        else "FAILED: " + "; ".join(k for k, v in row.checks.items() if not v)
    ) + (f" ({row.reason})" if row.reason else "")
    return [rss, str(f["unacked"]), where(f["held"]), fresh, restart, lost_dup, checks]


def three_cells(row: Row) -> list[str]:
    f = row.figures
    if row.status in ("cannot run", "error"):
        return [f"{row.status}: {row.reason}"]
    stuck = f"{f['not_finished']}"
    if f["not_finished"] and f["held_at_end"]:
        stuck += f" (held: {where(f['held_at_end'])})"
    return [f"{f['exactly_3']}/{f['m']}", f"{f['duplicate_runs']} ({f['tasks_duplicated']} tasks)",
            stuck, _s(f["finished_s"])]  # fmt: skip


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000 (a tenth)")
    parser.add_argument("--n", type=int, help="tasks whose retries wait (default 10,000)")
    parser.add_argument("--fresh", type=int, default=1000, help="fresh tasks (default 1,000)")
    parser.add_argument("--m", type=int, default=1000, help="tasks of the exactly-three scenario")
    parser.add_argument("--only", help="comma-separated contender keys, e.g. 1,3b,5")
    parser.add_argument("--scenario", choices=["wait", "three", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes (2)")
    parser.add_argument("--timeout", type=float, help="seconds per phase (default 300, quick 180)")
    parser.add_argument("--settle", type=float, default=60, help="max s for the worker to settle")
    parser.add_argument("--json", action="store_true", help="also print JSON lines")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (1000 if args.quick else 10_000)
    if args.timeout is None:
        args.timeout = 180.0 if args.quick else 300.0
    specs = CONTENDERS
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = set(wanted) - {s.key for s in CONTENDERS}
        if unknown:
            parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
        specs = [s for s in CONTENDERS if s.key in wanted]
    if n < 1 or args.fresh < 1 or args.m < 1:
        parser.error("--n, --fresh and --m must be at least 1")

    run_id = uuid.uuid4().hex[:8]
    info = machine()
    info["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    log(f"run {run_id}: N={n}, fresh={args.fresh}, M={args.m}; {json.dumps(info)}")
    rows: list[Row] = []
    for spec in specs:
        if args.scenario in ("wait", "both"):
            rows.append(
                run_one(spec, args, run_id, "wait", lambda r: scenario_wait(r, n, args.fresh))
            )
            log(f"[{spec.key}] wait: {outcome(rows[-1])}")
        if args.scenario in ("three", "both"):
            rows.append(
                run_one(spec, args, run_id, "three", lambda r: scenario_exactly_three(r, args.m))
            )
            log(f"[{spec.key}] three: {outcome(rows[-1])}")

    print(f"\nN = {n:,} retries waiting (countdown {WAIT_BACKOFF:g} s), {args.fresh:,} fresh tasks;"
          f" {info['cores']} cores, load {info['loadavg_at_start']:.2f} at start;"
          f" Celery {info['celery']}, kombu {info['kombu']}, RabbitMQ {info['rabbitmq']},"
          f" Redis {info['redis']}\n")  # fmt: skip
    wait_rows = [r for r in rows if r.scenario == "wait"]
    if wait_rows:
        print(table(
            ["#", "contender", "worker RSS while the N wait", "unacked in worker",
             "where the N retries are (broker)", f"{args.fresh:,} fresh tasks",
             "restart: back to work", "restart: lost / dup", "checks"],
            [[r.key, r.label, *wait_cells(r)] for r in wait_rows],
        ))  # fmt: skip
    three_rows = [r for r in rows if r.scenario == "three"]
    if three_rows:
        print(f"\n{args.m:,} tasks that fail twice, then succeed (backoff "
              f"{', '.join(f'{b:g} s' for b in CORRECT_BACKOFF)}):\n")  # fmt: skip
        print(table(
            ["#", "contender", "ran exactly 3 times", "duplicate runs", "never finished",
             "time to finish"],
            [[r.key, r.label, *three_cells(r)] for r in three_rows],
        ))  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
        print(json.dumps({"run": run_id, "n": n, "fresh": args.fresh, "m": args.m, **info}))
    return 0 if all(r.status in ("ok", "cannot run") for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.SubprocessError as exc:
        print(f"bench_celery: error: {exc}", file=sys.stderr)
        sys.exit(1)
