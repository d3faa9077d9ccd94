"""Fixtures of the cluster tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def cluster_session(redis_broker_cluster: bool) -> None:
    """Skip the test unless the session runs on a cluster (``make test-cluster``).

    The cluster tests run once, in that session: those that start clusters of their own
    (failover, replicas) would otherwise run again in every ``make test`` corner.
    """
    if not redis_broker_cluster:
        pytest.skip("needs the session on a Redis Cluster (--redis-broker-cluster)")
