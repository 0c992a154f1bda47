"""Pick the backend for a topology's URL. Broker clients are imported lazily, here only."""

from __future__ import annotations

from dlq_router.backends.base import Backend
from dlq_router.topology import Topology


def open_backend(topology: Topology) -> Backend:
    """Connect to the topology's broker; raises ``BrokerUnavailable`` with a one-line reason."""
    if topology.kind == "rabbitmq":
        from dlq_router.backends.rabbitmq.backend import RabbitBackend

        return RabbitBackend(topology)
    from dlq_router.backends.redis.backend import RedisBackend

    return RedisBackend(topology)
