"""TLS on both brokers, against listeners of the tests' own and a CA the session makes.

RabbitMQ: the session's second node has a TLS listener that requires a client certificate
(``verify_peer`` + ``fail_if_no_peer_cert``). Redis: a ``redis-server --tls-port`` with
``--tls-auth-clients yes``. The CA, client certificate and key come from the topology's
``tls:`` section or from URL options; without the client certificate, or without the CA
that signed the server's certificate, a command exits 2 with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
import yaml

from dlq_router.names import rabbit_names, redis_keys
from dlq_router.topology import load_topology
from tests.chaos.ledger import NON_RETRYABLE_ERROR
from tests.chaos.rabbit_node import RabbitNode, TlsFiles
from tests.chaos.test_chaos_rabbitmq import delete_topology, route_data
from tests.integration.drivers import wait_for
from tests.integration.redis_cluster import LocalRedis
from tests.integration.redis_driver import kombu_envelope
from tests.integration.router_process import RouterProcess

pytestmark = [pytest.mark.tls, pytest.mark.timeout(600)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlq_router", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tls_section(files: TlsFiles, *, client: bool = True) -> dict[str, str]:
    out = {"ca_file": str(files.ca)}
    if client:
        out |= {"cert_file": str(files.client_cert), "key_file": str(files.client_key)}
    return out


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlq-router: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ---- RabbitMQ ----------------------------------------------------------------------------


def test_rabbitmq_tls_from_topology(
    running_node: RabbitNode, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    """declare and run over amqps:// with the CA, client certificate and key in ``tls:``;
    a dead letter rejected on the plain listener comes back through the router's tier."""
    node = running_node
    url = f"amqps://guest:guest@127.0.0.1:{node.tls_port}/%2F"
    data = {"url": url, "tls": tls_section(tls_files), "routes": [route_data(uid)]}
    path = write(tmp_path / "tls.yaml", data)
    topology = load_topology(path)
    try:
        result = cli("declare", "-t", str(path))
        assert result.returncode == 0, result.stderr
        assert "amqps://guest:***@127.0.0.1" in result.stdout
        router = RouterProcess(topology, tmp_path)
        try:
            router.start(timeout=60)
            names = rabbit_names(topology, topology.routes[0])
            conn = pika.BlockingConnection(pika.URLParameters(node.url))
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish(
                    names.work_exchange,
                    names.routing_key,
                    b"x",
                    pika.BasicProperties(message_id="tls-1", delivery_mode=2),
                )
                method, _, _ = wait_for(
                    lambda: _get(ch, names.work_queue), 10, "the message in the work queue"
                )
                ch.basic_reject(method.delivery_tag, requeue=False)
                method, props, _ = wait_for(
                    lambda: _get(ch, names.work_queue), 30, "the retry back in the work queue"
                )
                assert props.message_id == "tls-1"
                assert props.headers["dlq-attempts"] == 1
                ch.basic_ack(method.delivery_tag)
            finally:
                conn.close()
            assert router.metric("dlq_router_retries_scheduled_total", route=uid, tier="100ms") == 1
            assert router.terminate() == 0
        finally:
            router.close()
    finally:
        delete_topology(node.url, topology)


def _get(ch: Any, queue: str) -> Any:
    method, props, body = ch.basic_get(queue)
    return (method, props, body) if method is not None else None


def test_rabbitmq_tls_from_url_options(
    running_node: RabbitNode, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    """The same files as URL options (``--url amqps://...?ca_file=&cert_file=&key_file=``)."""
    node = running_node
    path = write(tmp_path / "t.yaml", {"routes": [route_data(uid)]})
    f = tls_section(tls_files)
    url = (
        f"amqps://guest:guest@127.0.0.1:{node.tls_port}/%2F"
        f"?ca_file={f['ca_file']}&cert_file={f['cert_file']}&key_file={f['key_file']}"
    )
    topology = load_topology(path, url)
    try:
        result = cli("declare", "-t", str(path), "--url", url)
        assert result.returncode == 0, result.stderr
        result = cli("parked", "list", "-t", str(path), "--url", url, "--json")
        assert result.returncode == 0, result.stderr
    finally:
        delete_topology(node.url, topology)


def test_rabbitmq_tls_needs_the_client_certificate(
    running_node: RabbitNode, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{running_node.tls_port}/%2F"
    data = {"url": url, "tls": tls_section(tls_files, client=False), "routes": [route_data(uid)]}
    line = one_line_error(cli("declare", "-t", str(write(tmp_path / "t.yaml", data))))
    assert "amqps://guest:***@127.0.0.1" in line


def test_rabbitmq_tls_checks_the_server_certificate(
    running_node: RabbitNode, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    """Without our CA the server's certificate is not trusted (the system CAs are used)."""
    url = f"amqps://guest:guest@127.0.0.1:{running_node.tls_port}/%2F"
    tls = {"cert_file": str(tls_files.client_cert), "key_file": str(tls_files.client_key)}
    data = {"url": url, "tls": tls, "routes": [route_data(uid)]}
    line = one_line_error(cli("declare", "-t", str(write(tmp_path / "t.yaml", data))))
    assert "certificate" in line.lower(), line


# ---- Redis -------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tls_files: TlsFiles) -> Iterator[LocalRedis]:
    """A redis-server with only a TLS port, which requires a client certificate."""
    server = LocalRedis(())
    args = (
        "--port", "0",
        "--tls-port", str(server.port),
        "--tls-cert-file", str(tls_files.server_cert),
        "--tls-key-file", str(tls_files.server_key),
        "--tls-ca-cert-file", str(tls_files.ca),
        "--tls-auth-clients", "yes",
        "--save", "",
        "--appendonly", "no",
    )  # fmt: skip
    server.proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--dir", server.tmp, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = _tls_client(server.port, tls_files)
        wait_for(lambda: _ping(client), 20, "redis-server with TLS")
        client.close()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.tmp, ignore_errors=True)


def _tls_client(port: int, files: TlsFiles) -> redis.Redis:
    return redis.Redis(
        port=port,
        ssl=True,
        ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.client_cert),
        ssl_keyfile=str(files.client_key),
    )


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_redis_tls_from_topology(
    tls_redis: LocalRedis, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    data = {"url": url, "tls": tls_section(tls_files), "routes": [route_data(uid)]}
    path = write(tmp_path / "t.yaml", data)
    topology = load_topology(path)
    result = cli("declare", "-t", str(path))
    assert result.returncode == 0, result.stderr
    router = RouterProcess(topology, tmp_path)
    try:
        router.start(timeout=60)
        keys = redis_keys(topology, topology.routes[0])
        client = _tls_client(tls_redis.port, tls_files)
        env = kombu_envelope(
            b"x", exchange=uid, routing_key=uid, headers={"dlq-error-type": NON_RETRYABLE_ERROR},
            content_type="text/plain", content_encoding="utf-8", properties={"message_id": "t1"},
        )  # fmt: skip
        client.lpush(keys.dlq, json.dumps(env))
        wait_for(lambda: client.hlen(keys.parked) == 1, 20, "the dead letter parked")
        client.close()
        assert router.terminate() == 0
    finally:
        router.close()


def test_redis_tls_url_options_and_refusals(
    tls_redis: LocalRedis, tls_files: TlsFiles, tmp_path: Path, uid: str
) -> None:
    f = tls_section(tls_files)
    base = f"rediss://127.0.0.1:{tls_redis.port}/0"
    path = write(tmp_path / "t.yaml", {"url": base, "routes": [route_data(uid)]})
    url = f"{base}?ca_file={f['ca_file']}&cert_file={f['cert_file']}&key_file={f['key_file']}"
    result = cli("declare", "-t", str(path), "--url", url, "--dry-run")
    assert result.returncode == 0, result.stderr
    # no client certificate: the server refuses the handshake
    one_line_error(cli("declare", "-t", str(path), "--url", f"{base}?ca_file={f['ca_file']}"))
    # no CA: the server's certificate is not trusted
    no_ca = f"{base}?cert_file={f['cert_file']}&key_file={f['key_file']}"
    line = one_line_error(cli("declare", "-t", str(path), "--url", no_ca))
    assert "certificate" in line.lower(), line
