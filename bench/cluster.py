"""What the benchmarks' ``--cluster`` modes share: the two private servers, names placed
on chosen masters, and the CPU the Redis processes spend.

A ``--cluster`` run starts a private single ``redis-server`` and, beside it, a private
Redis Cluster (``RedisClusterServer``), and runs the same work on both, so their ratio
is measured on one machine in one run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from redis_broker.naming import key_slot
from redis_broker.testing import RedisClusterServer, RedisServer

#: Clock ticks per second of /proc/<pid>/stat's CPU times.
_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def single_and_cluster(
    masters: int = 3, replicas: int = 0
) -> Iterator[tuple[str, RedisClusterServer]]:
    """Start a private single Redis and a private cluster; yield the single URL and the
    cluster (``.url``, ``.master_of``), and stop both after."""
    with RedisServer() as single, RedisClusterServer(masters, replicas) as cluster:
        yield single.url, cluster


def client(url: str, *, cluster: bool) -> Any:
    """Return a raw sync client of ``url``: a cluster client on a cluster."""
    if cluster:
        return redis.cluster.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def async_client(url: str, *, cluster: bool) -> Any:
    """Return a raw asyncio client of ``url``: a cluster client on a cluster."""
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url)
    return redis.asyncio.Redis.from_url(url)


def slot_owners(cluster: RedisClusterServer) -> list[int]:
    """Return the port of the master serving each of the 16384 slots (CLUSTER SLOTS)."""
    owners = [0] * 16384
    node = redis.Redis(port=cluster.ports[0])
    try:
        for start, end, master, *_replicas in node.execute_command("CLUSTER", "SLOTS"):
            owners[start : end + 1] = [int(master[1])] * (end - start + 1)
    finally:
        node.close()
    return owners


def names_by_master(cluster: RedisClusterServer, prefix: str, count: int = 3) -> list[str]:
    """Return ``count`` names under ``prefix`` whose slots (``naming.key_slot``) are
    served by different masters, round robin when ``count`` exceeds the masters."""
    owners = slot_owners(cluster)
    ports = sorted(set(owners))
    names: list[str] = []
    for n in range(100_000):
        name = f"{prefix}{n}"
        if owners[key_slot(name)] == ports[len(names) % len(ports)]:
            names.append(name)
            if len(names) == count:
                return names
    raise RuntimeError("no spread of names found")


def names_on_one_master(prefix: str, count: int = 3) -> list[str]:
    """Return ``count`` names that share one hash tag, so one master serves them all."""
    return [f"{{{prefix}}}{n}" for n in range(count)]


def masters(cluster: RedisClusterServer) -> list[RedisServer]:
    """Return the cluster's running master nodes."""
    found = []
    for server in cluster.servers:
        if server.process is None:
            continue
        node = redis.Redis(port=server.port)
        try:
            if node.info("replication")["role"] == "master":
                found.append(server)
        finally:
            node.close()
    return found


def cpu_seconds(servers: Sequence[RedisServer]) -> list[float]:
    """Return the CPU seconds (user + system) each server process has used so far."""
    seconds = []
    for server in servers:
        assert server.process is not None
        with open(f"/proc/{server.process.pid}/stat") as stat:
            # The command name may hold spaces; the fields after its ")" are fixed.
            fields = stat.read().rsplit(")", 1)[1].split()
        seconds.append((int(fields[11]) + int(fields[12])) / _TICKS)
    return seconds
