"""bench_rabbit_parity.py's summary and its reading of issue 12's Done-when criteria."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The benchmark scripts import their neighbours as top-level modules (they run as scripts).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_rabbit_parity import (
    IN_NODE,
    REPLAY,
    ROUTER,
    TCP,
    ParityRun,
    done_when,
    summarise,
)


def run(section: str, layout: str, mover: str, rep: int, rate: float, **cpu: float) -> ParityRun:
    """A run that moved 1,000 messages at ``rate``; CPU given in µs per message."""
    msgs = 1000
    return ParityRun(
        f"{section}/{mover}",
        rep,
        msgs=msgs,
        seconds=msgs / rate,
        broker_cpu=cpu.get("broker_us", 10.0) * msgs / 1e6,
        client_cpu=cpu.get("mover_us", 0.0) * msgs / 1e6,
        section=section,
        layout=layout,
        mover=mover,
    )


def section_runs(
    section: str, mover: str, layout: str, tcp: list[float], own: list[float], mover_us: float
) -> list[ParityRun]:
    out = []
    for rep, (t, o) in enumerate(zip(tcp, own, strict=True)):
        out.append(run(section, layout, TCP, rep, t, broker_us=50.0))
        out.append(run(section, layout, IN_NODE, rep, 2 * t, broker_us=30.0))
        out.append(run(section, layout, mover, rep, o, broker_us=60.0, mover_us=mover_us))
    return out


def test_ratios_pair_each_run_with_the_tcp_shovel_of_its_repeat() -> None:
    # Drift: the machine gets twice as slow, the router stays at 1.1x the shovel throughout.
    runs = section_runs("router", ROUTER, "split", [1000, 2000, 500], [1100, 2200, 550], 30.0)
    row = summarise(runs)["router"]["split"][ROUTER]
    assert row["x_tcp_shovel"] == {"median": 1.1, "min": 1.1, "max": 1.1}
    assert row["x_in_node_shovel"] == {"median": 0.55, "min": 0.55, "max": 0.55}
    assert row["rate"] == {"median": 1100, "min": 550, "max": 2200}
    assert row["runs"] == 3
    assert row["broker_us"]["median"] == pytest.approx(60.0)
    assert row["mover_us"]["median"] == pytest.approx(30.0)
    tcp = summarise(runs)["router"]["split"][TCP]
    assert tcp["x_tcp_shovel"]["median"] == 1.0
    assert tcp["mover_us"] == {}  # the shovel has no process of its own


def test_each_criterion_from_the_medians() -> None:
    runs = [
        *section_runs("router", ROUTER, "split", [1000] * 3, [1000, 1010, 990], 39.0),
        *section_runs("router", ROUTER, "shared", [1000] * 3, [880, 950, 870], 40.0),
        *section_runs("replay", REPLAY, "split", [1000] * 3, [1200, 1300, 1100], 20.0),
        *section_runs("replay", REPLAY, "shared", [1000] * 3, [910, 905, 800], 20.0),
    ]
    verdict = done_when(summarise(runs))
    assert verdict["router_split_x_tcp_ge_1.0"] == {"value": 1.0, "ok": True}
    assert verdict["router_shared_x_tcp_ge_0.9"] == {"value": 0.88, "ok": False}
    assert verdict["router_us_per_msg_le_40"]["ok"] is True
    assert verdict["router_us_per_msg_le_40"]["by_layout"] == {
        "split": pytest.approx(39.0),
        "shared": pytest.approx(40.0),
    }
    assert verdict["replay_split_x_tcp_ge_1.0"]["ok"] is True
    assert verdict["replay_shared_x_tcp_ge_0.9"] == {"value": 0.905, "ok": True}
    assert verdict["all"] is False  # the router's shared median is 0.88x


def test_router_cpu_is_judged_by_its_worst_layout() -> None:
    runs = [
        *section_runs("router", ROUTER, "split", [1000], [1000], 35.0),
        *section_runs("router", ROUTER, "shared", [1000], [1000], 41.0),
    ]
    verdict = done_when(summarise(runs))
    assert verdict["router_us_per_msg_le_40"]["value"] == pytest.approx(41.0)
    assert verdict["router_us_per_msg_le_40"]["ok"] is False


def test_what_was_not_measured_is_none_and_never_passes() -> None:
    verdict = done_when(summarise(section_runs("replay", REPLAY, "split", [1000], [2000], 5.0)))
    assert verdict["replay_split_x_tcp_ge_1.0"] == {"value": 2.0, "ok": True}
    for name in ("router_split_x_tcp_ge_1.0", "router_shared_x_tcp_ge_0.9"):
        assert verdict[name] == {"value": None, "ok": None}
    assert verdict["router_us_per_msg_le_40"]["ok"] is None
    assert verdict["all"] is False
    assert done_when(summarise([]))["all"] is False


def test_without_a_tcp_shovel_run_there_is_no_ratio() -> None:
    runs = [
        r for r in section_runs("router", ROUTER, "split", [1000], [900], 30.0) if r.mover != TCP
    ]
    assert summarise(runs)["router"]["split"][ROUTER]["x_tcp_shovel"] == {}
    assert done_when(summarise(runs))["router_split_x_tcp_ge_1.0"]["ok"] is None
