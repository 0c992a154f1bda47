"""Throwaway RabbitMQ nodes on loopback: one per test module, or three joined in a cluster.

Each node has its own name (``chaos-<uid>-<i>@localhost``), AMQP and distribution ports,
config file, mnesia and log directories in a temp dir, and no plugins (so no management or
Prometheus listener). The shared node ``rabbit@localhost`` on 5672 is never touched: every
``rabbitmqctl`` call names its node with ``-n``, and the temp ``HOME`` holds the Erlang
cookie these nodes and their CLI calls share (the shared node's cookie is elsewhere, so a
stray command could not reach it). The server is started from ``/usr/lib/rabbitmq/bin``
directly: the ``/usr/sbin`` wrapper would ``su`` to the rabbitmq user.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

SBIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = SBIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed for the tests that start their own RabbitMQ node")
    return found


class RabbitNode:
    """One ``rabbitmq-server`` process; ``stop``/``start`` keep its data (a full restart)."""

    def __init__(
        self,
        home: Path,
        name: str,
        *,
        tls: TlsFiles | None = None,
    ) -> None:
        self.home = home
        self.name = name
        self.node = f"{name}@localhost"
        self.base = home / name
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _write_config(self) -> None:
        lines = [
            f"listeners.tcp.1 = 127.0.0.1:{self.port}",
            # guest may only log in from localhost, which 127.0.0.1 is
            "loopback_users.guest = true",
            # a loaded shared machine: do not let the disk or memory alarm block publishers
            "disk_free_limit.absolute = 1MB",
            "vm_memory_high_watermark.relative = 0.8",
        ]
        if self.tls is not None:
            lines += [
                f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self.tls.ca}",
                f"ssl_options.certfile = {self.tls.server_cert}",
                f"ssl_options.keyfile = {self.tls.server_key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
            ]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        # An empty env file: /etc/rabbitmq/rabbitmq-env.conf names the shared node.
        (self.base / "rabbitmq-env.conf").write_text("")

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k not in ("NODENAME",)
        }
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
            RABBITMQ_LOGS="-",
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self, timeout: float = 180.0) -> None:
        """Start the node (data kept from a previous run) and wait until AMQP answers."""
        self.spawn()
        self.wait_amqp(timeout)

    def spawn(self) -> None:
        """Start the server process without waiting for it."""
        log = (self.base / "server.out").open("ab")
        self.proc = subprocess.Popen(
            [_bin("rabbitmq-server")],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            start_new_session=True,
        )
        log.close()

    def wait_amqp(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.node} exited:\n{self.server_output()[-3000:]}")
            try:
                conn = pika.BlockingConnection(
                    pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")
                )
                conn.close()
                return
            except pika.exceptions.AMQPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.node}: AMQP not up after {timeout}s:\n{self.server_output()[-3000:]}"
                )
            time.sleep(0.5)

    def server_output(self) -> str:
        path = self.base / "server.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def ctl(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """``rabbitmqctl -n NODE ...`` (never the shared node)."""
        result = subprocess.run(
            [_bin("rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"rabbitmqctl -n {self.node} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def leaders(self) -> dict[str, str]:
        """Queue name -> the node that leads it (quorum queues), as this node sees it."""
        out = self.ctl("-q", "list_queues", "name", "leader", "--no-table-headers")
        pairs = (line.split("\t") for line in out.splitlines() if "\t" in line)
        return {name: leader.strip() for name, leader in pairs}

    def raft_counts(self, contains: str) -> dict[str, tuple[int, int, int]]:
        """Quorum queue name (those whose name contains ``contains``) -> (messages,
        discarded, discards checked out) from its Raft state: the last two are what it holds
        for at-least-once dead-lettering (waiting, and checked out to its dead-letter
        worker), which neither ``queue.declare``'s count nor ``messages_ready`` includes.
        (-1, -1, -1) for a queue whose leader did not answer."""
        expr = (
            "[{N, case catch ra:local_query(amqqueue:get_pid(Q), fun rabbit_fifo:overview/1)"
            " of {ok, {_, O}, _} -> {maps:get(num_messages, O, 0),"
            " maps:get(num_discarded, O, 0), maps:get(num_discard_checked_out, O, 0)};"
            " _ -> {-1, -1, -1} end}"
            ' || Q <- rabbit_amqqueue:list(<<"/">>),'
            " {resource, _, queue, N} <- [amqqueue:get_name(Q)],"
            " amqqueue:get_type(Q) =:= rabbit_quorum_queue,"
            f' binary:match(N, <<"{contains}">>) =/= nomatch].'
        )
        out = self.ctl("eval", expr, timeout=60)
        found = re.findall(r'<<"([^"]*)">>,\s*\{(-?\d+),\s*(-?\d+),\s*(-?\d+)\}', out)
        return {name: (int(m), int(d), int(c)) for name, m, d, c in found}

    def dead_letters_held(self, contains: str) -> dict[str, int]:
        """Queue name -> dead letters it holds for its dead-letter worker (``raft_counts``)."""
        return {name: d + c for name, (_m, d, c) in self.raft_counts(contains).items()}

    def move_leader(self, queue: str) -> str:
        """Hand the leadership of quorum queue ``queue`` (vhost /) to another running
        member; returns what ``ra:transfer_leadership`` answered."""
        expr = (
            f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue,'
            f' <<"{queue}">>)), {{Name, Leader}} = amqqueue:get_pid(Q),'
            " [Next | _] = [N || N <- rabbit_nodes:all_running(), N =/= Leader],"
            " ra:transfer_leadership({Name, Leader}, {Name, Next})."
        )
        return self.ctl("eval", expr, timeout=60).strip()

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_amqp()

    def stop(self) -> None:
        """A full node stop (the Erlang VM exits); the data stays for ``start``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", check=False, timeout=120)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group (beam, epmd children excepted: epmd is shared)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


class TlsFiles:
    """A self-signed CA with a server and a client certificate, made with ``openssl``."""

    def __init__(self, where: Path) -> None:
        self.dir = where
        where.mkdir(parents=True, exist_ok=True)
        self.ca = where / "ca.pem"
        self.ca_key = where / "ca.key"
        self.server_cert = where / "server.pem"
        self.server_key = where / "server.key"
        self.client_cert = where / "client.pem"
        self.client_key = where / "client.key"
        self._make()

    def _openssl(self, *args: str) -> None:
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, timeout=60, cwd=self.dir
        )

    def _make(self) -> None:
        if shutil.which("openssl") is None:
            pytest.fail("openssl is needed to make the test CA")
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=dlq-router test CA",
            "-keyout", str(self.ca_key), "-out", str(self.ca),
        )  # fmt: skip
        ext = self.dir / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for name, cert, key in (
            ("localhost", self.server_cert, self.server_key),
            ("dlq-router client", self.client_cert, self.client_key),
        ):
            csr = self.dir / f"{key.stem}.csr"
            self._openssl(
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(key), "-out", str(csr),
            )  # fmt: skip
            self._openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
                "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", "2",
                "-extfile", str(ext), "-out", str(cert),
            )  # fmt: skip
        for path in self.dir.iterdir():
            path.chmod(0o644)


@contextlib.contextmanager
def rabbit_home() -> Iterator[Path]:
    """A temp HOME holding a fresh Erlang cookie for the nodes of one fixture."""
    home = Path(tempfile.mkdtemp(prefix="dlq-router-rabbit-"))
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def node_name(index: int = 0) -> str:
    return f"chaos-{uuid.uuid4().hex[:8]}-{index}"


@contextlib.contextmanager
def local_node(*, tls: TlsFiles | None = None) -> Iterator[RabbitNode]:
    """One RabbitMQ node of its own; stopped and killed (by pid) whatever happens."""
    with rabbit_home() as home:
        node = RabbitNode(home, node_name(), tls=tls)
        try:
            node.start()
            yield node
        finally:
            with contextlib.suppress(Exception):
                node.stop()
            node.kill()


@contextlib.contextmanager
def local_cluster(size: int = 3) -> Iterator[list[RabbitNode]]:
    """``size`` nodes joined into one cluster (``join_cluster``), all torn down afterwards."""
    with rabbit_home() as home:
        prefix = uuid.uuid4().hex[:8]
        nodes = [RabbitNode(home, f"chaos-{prefix}-{i}") for i in range(size)]
        try:
            for node in nodes:  # all at once: the VMs boot in parallel
                node.spawn()
            for node in nodes:
                node.wait_amqp()
            for node in nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", nodes[0].node)
                node.ctl("start_app")
                node.wait_amqp()
            yield nodes
        finally:
            for node in nodes:
                with contextlib.suppress(Exception):
                    node.stop()
                node.kill()
