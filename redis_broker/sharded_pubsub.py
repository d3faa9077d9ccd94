"""Sharded Pub/Sub on a Redis Cluster: one connection per shard, read as one.

On a cluster, ``PUBLISH`` is copied to every node over the cluster bus, so its cost
grows with the cluster, not with the subscribers. Sharded Pub/Sub (Redis 7) keeps a
channel on the shard that owns its hash slot: ``SPUBLISH`` goes to that shard only and
``SSUBSCRIBE`` listens there. A process that subscribes channels living on several
shards therefore needs one connection per shard (never one per channel): redis-py's
cluster Pub/Sub (``RedisCluster.pubsub()``) keeps exactly that, one per master that
owns a subscribed channel.

Its reader, ``get_sharded_message()`` without a target node, polls those connections in
turn, each for the whole timeout, so a quiet shard would hold back the others' messages
by up to the timeout times the number of shards. :class:`ShardedPubSub` gives each
shard's connection a reader task of its own (``get_sharded_message(target_node=...)``)
feeding one queue, so :meth:`ShardedPubSub.get_message` returns whatever arrives first,
from any shard, and answers the calls the relay hub and the channel consumers make on a
plain ``PubSub``.

A failure on any shard's connection is raised by ``get_message``: the caller drops the
whole thing and subscribes again, as it does on one node, so it can tell its users
what may have been missed. With ``watchdog``, each reader PINGs its own shard after that
much silence and fails with :class:`WatchdogTimeout` when the PONG does not come within
as long: a half-open connection to one shard is found even while the others are busy.

Patterns have no sharded form (there is no ``SPSUBSCRIBE``: a pattern may match channels
in every slot), so nothing here subscribes patterns.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

#: Errors after which subscribing again can work on a cluster, besides a lost connection:
#: a cluster that is down or moving slots (CLUSTERDOWN, MOVED, ASK, TRYAGAIN), or whose
#: startup nodes did not answer (``RedisClusterException``, also "slot not covered").
CLUSTER_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)


class WatchdogTimeout(ConnectionError):
    """A Pub/Sub connection did not answer a PING in time: treat it as dead."""


class ShardedPubSub:
    """SSUBSCRIBE through redis-py's cluster Pub/Sub; one reader task per shard.

    Build it on a cluster client of its own (``build_async_client(config,
    retries=False)``), which :meth:`aclose` closes; call :meth:`connect`, then
    :meth:`subscribe` and :meth:`get_message` as on a plain ``PubSub``. Messages keep
    Redis's types: ``smessage`` for a message, ``ssubscribe``/``sunsubscribe`` for
    confirmations.
    """

    def __init__(self, client: redis.asyncio.Redis, *, watchdog: float | None = None) -> None:
        # ``connection.build_async_client`` types every client as ``Redis``.
        self.client = cast(redis.asyncio.cluster.RedisCluster, client)
        self.pubsub: Any = self.client.pubsub()
        self._watchdog = watchdog
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def shards(self) -> frozenset[str]:
        """Return the shards (``host:port`` of their masters) holding a connection now."""
        return frozenset(self.pubsub.node_pubsub_mapping)

    async def connect(self) -> None:
        """Read the cluster's slot map, so that SSUBSCRIBE knows where each channel
        lives; raises the connection error when no node answers."""
        await self.client.initialize()

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE ``channels``, each on its shard; confirmations arrive as messages.

        Opens the connection to a shard, and starts its reader, when its first channel
        is subscribed.
        """
        try:
            await self.pubsub.ssubscribe(*channels)
        finally:
            self._start_readers()  # also when one shard failed: the others' confirmations

    async def unsubscribe(self, *channels: str) -> None:
        """SUNSUBSCRIBE ``channels``; a shard left with none closes its connection."""
        await self.pubsub.sunsubscribe(*channels)

    def fail(self, exc: BaseException) -> None:
        """Make the next :meth:`get_message` raise ``exc``: a command failed on a shard's
        connection, so what that shard confirmed is in doubt (nothing awaits)."""
        self._queue.put_nowait(exc)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        """Return the next message from any shard, or None after ``timeout`` seconds.

        Raises what a shard's reader failed with (a lost connection, a watchdog timeout).
        ``timeout`` is an argument, as in redis-py's ``PubSub.get_message``, so callers
        read either kind the same way.
        """
        self._start_readers()
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the readers, close every shard's connection, then the client."""
        self._closed = True
        readers = list(self._readers.values())
        self._readers.clear()
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.pubsub.aclose()
        finally:
            await aclose_cluster_client(self.client)

    # ------------------------------------------------------------------ readers

    def _start_readers(self) -> None:
        """Start a reader for each shard connection that has none (nothing awaits)."""
        if self._closed:
            return
        for name in self.pubsub.node_pubsub_mapping:
            task = self._readers.get(name)
            if task is not None and not task.done():
                continue
            node = self.client.get_node(node_name=name)
            if node is None:  # gone from the slot map: nobody would read its connection
                self.fail(ConnectionError(f"shard {name} is no longer in the slot map"))
                continue
            self._readers[name] = asyncio.get_running_loop().create_task(
                self._read(name, node), name=f"redis_broker.sharded_pubsub.{name}"
            )

    async def _read(self, name: str, node: Any) -> None:
        """Queue the messages of one shard until its connection is closed or fails."""
        interval = self._watchdog
        loop = asyncio.get_running_loop()
        ping_sent: float | None = None
        mapping = self.pubsub.node_pubsub_mapping
        try:
            # redis-py drops a shard's entry once its last channel is unsubscribed.
            while name in mapping:
                message = await self.pubsub.get_sharded_message(
                    target_node=node, timeout=interval or 1.0
                )
                if message is None:
                    if interval is None:
                        continue
                    now = loop.time()
                    if ping_sent is not None and now - ping_sent >= interval:
                        raise WatchdogTimeout(f"shard {name}: no PONG within {interval} s")
                    shard = mapping.get(name)
                    if ping_sent is None and shard is not None:
                        await shard.ping()
                        ping_sent = now
                    continue
                ping_sent = None
                if message["type"] != "pong":
                    self._queue.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the caller decides: reconnect, or give up loudly
            self._queue.put_nowait(exc)


async def aclose_cluster_client(client: redis.asyncio.cluster.RedisCluster) -> None:
    """Close ``client``, also when its ``initialize()`` failed or was cancelled.

    redis-py's ``aclose()`` does nothing until a first ``initialize()`` succeeded, yet
    ``initialize()`` opens a connection to a startup node before it can fail (a cluster
    that is down, a slot map that does not cover every slot): a reconnect loop would
    leave one such connection to the garbage collector per failed attempt.
    """
    await client.aclose()
    manager = client.nodes_manager
    for node in (*manager.startup_nodes.values(), *manager.nodes_cache.values()):
        with contextlib.suppress(Exception):
            await node.disconnect()
