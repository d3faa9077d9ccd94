"""Waiting for replicas: what ``publish()`` promises across a failover.

Redis replicates asynchronously: a master that crashes right after answering an XADD
may take the entry with it, and the replica promoted in its place never saw it. With
``REDIS_BROKER["WAIT_REPLICAS"] = N``, ``publish()`` sends ``WAIT N timeout`` on the
same connection right after its XADD and returns only once N replicas hold the entry;
a failover promotes one of them (Redis Cluster and Sentinel prefer the replica with
the most data), so an entry whose ``publish()`` returned survives losing its master.
Fewer acknowledgements within ``WAIT_TIMEOUT_MS`` raise ``WriteRefused``: the entry is
on the master but not promised.

A write that failed with the connection (the master died mid-call) is sent again, at
most a few times while the cluster promotes a replica: it carries the same
``event_id``, so a consumer can tell the rare duplicate apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from .conf import BrokerConfig
from .connection import CONNECTION_ERRORS, is_cluster, pack_commands, write_refused

#: Seconds a write keeps trying while a cluster promotes a replica (cluster-node-timeout
#: plus an election: about 2 s with a 1 s node timeout).
FAILOVER_WINDOW = 10.0
#: Cluster errors that mean "the slot map changed or is changing": refresh it and retry.
_MOVING: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
)


def _checked(acks: Any, wanted: int, key: str) -> None:
    if int(acks) < wanted:
        raise write_refused(
            redis.exceptions.ReadOnlyError(
                f"WAIT: {int(acks)} of {wanted} replicas acknowledged within the timeout"
            ),
            f"stream {key!r} (WAIT_REPLICAS={wanted})",
        )


def xadd_and_wait(
    client: Any, config: BrokerConfig, key: str, adds: Sequence[Sequence[Any]]
) -> list[Any]:
    """Run ``XADD key *args`` for each of ``adds``, then ``WAIT``, on one connection;
    return the entry ids."""
    wait = ("WAIT", config.wait_replicas, config.wait_timeout_ms)
    deadline = time.monotonic() + FAILOVER_WINDOW
    delay = 0.05
    while True:
        try:
            node_client = (
                client.get_redis_connection(client.get_node_from_key(key))
                if is_cluster(client)
                else client
            )
            pipe = node_client.pipeline(transaction=False)
            for args in adds:
                pipe.execute_command("XADD", key, *args)
            pipe.execute_command(*wait)
            *ids, acks = pipe.execute()
            ids = list(ids)
            break
        except _MOVING:
            if not is_cluster(client) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            client.nodes_manager.initialize()
    _checked(acks, config.wait_replicas, key)
    return list(ids)


async def axadd_and_wait(
    client: Any, config: BrokerConfig, key: str, adds: Sequence[Sequence[Any]]
) -> list[Any]:
    """Async twin of :func:`xadd_and_wait`."""
    wait = ("WAIT", config.wait_replicas, config.wait_timeout_ms)
    deadline = time.monotonic() + FAILOVER_WINDOW
    delay = 0.05
    while True:
        try:
            commands = [("XADD", key, *args) for args in adds]
            if is_cluster(client):
                *ids, acks = await _anode_exchange(client, key, [*commands, wait])
            else:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute_command(*wait)
                *ids, acks = await pipe.execute()
            break
        except _MOVING:
            if not is_cluster(client) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            await client.nodes_manager.initialize()
    _checked(acks, config.wait_replicas, key)
    return ids


async def _anode_exchange(client: Any, key: str, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` on one connection of the node serving ``key`` and read replies.

    The asyncio cluster client has no per-node pipeline that keeps one connection, and
    ``WAIT`` counts the writes of its own connection only.
    """
    await client.initialize()  # a new client learns the slot map on first use
    node = client.get_node_from_key(key)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(pack_commands(conn, commands))
        replies = [await conn.read_response() for _ in commands]
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        node.release(conn)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies
