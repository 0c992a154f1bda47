"""Fixtures shared by the integration tests (the local Redis Cluster starts once per session)."""

from tests.integration.redis_cluster import redis_cluster_url

__all__ = ["redis_cluster_url"]
