"""Broker instances of the chaos tests' own, started once per session and always torn down.

``rabbit_node``: a second RabbitMQ node on free loopback ports with a plain and a TLS
listener (``tls_files``: a self-signed CA, server and client certificates). Tests may stop
and restart it; each leaves it running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.rabbit_node import RabbitNode, TlsFiles, local_node


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def rabbit_node(tls_files: TlsFiles) -> Iterator[RabbitNode]:
    with local_node(tls=tls_files) as node:
        yield node


@pytest.fixture
def running_node(rabbit_node: RabbitNode) -> RabbitNode:
    """The session's node, started again if an earlier test left it stopped."""
    if rabbit_node.proc is None or rabbit_node.proc.poll() is not None:
        rabbit_node.start()
    return rabbit_node
