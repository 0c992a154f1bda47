"""``run --probes`` (or DLQ_ROUTER_PROBES=1): /healthz and /readyz reachable from outside the
container (bound to 0.0.0.0), readiness following the broker connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TopologyFactory, route_dict
from tests.integration.router_process import RouterProcess


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_probes_flag_serves_health_on_all_interfaces(
    kind: str, make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology(kind, routes=[route_dict(uid)])
    from dlq_router.backends import open_backend

    backend = open_backend(topology)
    backend.declare(dry_run=False)
    backend.close()
    router = RouterProcess(topology, tmp_path, args=("--probes",)).start()
    try:
        assert router.get("/healthz") == (200, "ok\n")
        assert router.get("/readyz") == (200, "ready\n")
        assert f"metrics on http://0.0.0.0:{router.metrics_port}/metrics" in router.output
        assert "dlq_router_ready 1.0" in router.get("/metrics")[1]
    finally:
        router.close()


def test_probes_from_environment(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    from dlq_router.backends import open_backend

    backend = open_backend(topology)
    backend.declare(dry_run=False)
    backend.close()
    monkeypatch.setenv("DLQ_ROUTER_PROBES", "1")  # the router process inherits it
    router = RouterProcess(topology, tmp_path).start()
    try:
        assert f"http://0.0.0.0:{router.metrics_port}/" in router.output
        assert router.get("/readyz")[0] == 200
    finally:
        router.close()
