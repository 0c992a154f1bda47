"""Topology validation: every bad file gets the exact field path and a clear reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dlq_router.durations import format_duration_ms, parse_duration_ms
from dlq_router.errors import TopologyError
from dlq_router.names import rabbit_names, redis_keys, tier_lanes
from dlq_router.topology import load_topology, parse_topology
from dlq_router.urls import broker_kind, redact_text, redact_url

ROOT = Path(__file__).resolve().parents[2]


def base(**route: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": "emails", "retry": {"delays": ["1s", "10s"], "max_attempts": 3}}
    r.update(route)
    return {"url": "amqp://guest:guest@127.0.0.1:5672/%2F", "routes": [r]}


def problems(data: Any) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(data, "t.yaml")
    assert str(info.value).startswith("t.yaml: ")
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("10s", 10_000),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1.5s", 1500),
        (500, 500),
    ],
)
def test_durations(text: Any, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["10x", "", "s", "-1s", "0s", True, 1.5, None])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(bad)


def test_format_duration_is_shortest_exact() -> None:
    assert [format_duration_ms(x) for x in (1000, 90_000, 1500, 3_600_000)] == [
        "1s",
        "90s",
        "1500ms",
        "1h",
    ]


def test_example_files_validate() -> None:
    for path in sorted((ROOT / "topologies").glob("*.yaml")):
        topo = load_topology(path)
        assert topo.routes


def test_defaults_queue_and_routing_key_from_name() -> None:
    topo = parse_topology(base())
    route = topo.routes[0]
    assert (route.queue, route.routing_key, route.exchange) == ("emails", "emails", "")
    assert route.retry.delays == [1000, 10_000]


def test_bad_duration_names_the_exact_path() -> None:
    data = base(retry={"delays": ["1s", "10s", "10x"], "max_attempts": 3})
    assert problems(data) == [
        "routes[0].retry.delays[2]: '10x' is not a duration (use e.g. 500ms, 10s, 1m, 1h, 1d)"
    ]


def test_unknown_key_is_refused() -> None:
    data = base(retries=3)
    assert problems(data) == ["routes[0].retries: unknown key"]


def test_empty_tier_list() -> None:
    (msg,) = problems(base(retry={"delays": [], "max_attempts": 3}))
    assert msg.startswith("routes[0].retry.delays: ") and "at least 1" in msg


def test_non_increasing_tiers() -> None:
    (msg,) = problems(base(retry={"delays": ["10s", "10s"], "max_attempts": 3}))
    assert msg.startswith("routes[0].retry.delays: delays must increase strictly")


def test_max_attempts_below_one() -> None:
    (msg,) = problems(base(retry={"delays": ["1s"], "max_attempts": 0}))
    assert msg.startswith("routes[0].retry.max_attempts: ")


def test_duplicate_route_names() -> None:
    data = base()
    data["routes"].append(
        {"name": "emails", "queue": "other", "retry": {"delays": ["1s"], "max_attempts": 1}}
    )
    (msg,) = problems(data)
    assert msg == "routes: routes[1] repeats the name 'emails' of routes[0]"


def test_tier_ttl_above_rabbitmq_limit() -> None:
    (msg,) = problems(base(retry={"delays": ["1s", "60d"], "max_attempts": 3}))
    assert msg.startswith("routes[0].retry: ") and "x-message-ttl limit" in msg


def test_at_least_once_requires_reject_publish() -> None:
    (msg,) = problems(base(queue_type="quorum", overflow="drop-head"))
    assert "at-least-once needs overflow: reject-publish" in msg
    topo = parse_topology(base(queue_type="quorum"))
    assert topo.routes[0].dead_letter_strategy == "at-least-once"
    assert topo.routes[0].overflow == "reject-publish"


def test_dead_letter_strategy_only_for_quorum() -> None:
    (msg,) = problems(base(dead_letter_strategy="at-most-once"))
    assert "only applies to queue_type: quorum" in msg


def test_bad_url_scheme_and_names() -> None:
    data = base(name="bad{name}")
    data["url"] = "http://x"
    found = problems(data)
    assert any(p.startswith("url: unsupported broker URL scheme 'http'") for p in found)
    assert any(p.startswith("routes[0].name: ") for p in found)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError, match=r"nope\.yaml: No such file"):
        load_topology(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(TopologyError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_topology(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(TopologyError, match="expected a mapping"):
        load_topology(scalar)


def test_url_override_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("url: amqp://a/\nroutes: [{name: q, retry: {delays: [1s], max_attempts: 1}}]\n")
    assert load_topology(path).url == "amqp://a/"
    monkeypatch.setenv("DLQ_ROUTER_URL", "redis://env:6379/0")
    assert load_topology(path).url == "redis://env:6379/0"
    assert load_topology(path, url="amqp://cli/").url == "amqp://cli/"


def test_derived_names_and_lanes() -> None:
    topo = parse_topology(
        {
            **base(
                retry={"delays": ["1s", "10s"], "max_attempts": 3, "jitter": 0.1, "jitter_lanes": 3}
            ),
            "prefix": "app",
        }
    )
    n = rabbit_names(topo, topo.routes[0])
    assert (n.dlx, n.dlq, n.retry_exchange, n.parking) == (
        "app.emails.dlx",
        "app.emails.dlq",
        "app.emails.retry",
        "app.emails.parked",
    )
    assert [lane.queue for lane in n.tiers[1].lanes] == [
        "app.emails.retry.10s.0",
        "app.emails.retry.10s.1",
        "app.emails.retry.10s.2",
    ]
    assert [lane.ttl_ms for lane in n.tiers[1].lanes] == [9000, 10000, 11000]
    plain = parse_topology(base())
    assert rabbit_names(plain, plain.routes[0]).tiers[0].lanes[0].queue == "emails.retry.1s"
    assert tier_lanes(plain.routes[0].retry, 1) == (10_000,)
    keys = redis_keys(topo, topo.routes[0])
    assert (keys.work, keys.dlq, keys.retry) == ("emails", "app:{emails}:dlq", "app:{emails}:retry")


def test_urls() -> None:
    assert broker_kind("amqps://h") == "rabbitmq"
    assert broker_kind("redis+cluster://h:7000") == "redis"
    assert redact_url("amqp://u:s3cret@h:5672/v") == "amqp://u:***@h:5672/v"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    url = "amqp://u:s3cret@h/"
    assert "s3cret" not in redact_text(f"failed {url} with s3cret", url)
