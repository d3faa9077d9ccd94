"""Helpers of the relay tests: send, receive and subscribe on a test socket."""

from __future__ import annotations

import json
from typing import Any

import redis
from channels.testing import WebsocketCommunicator

from redis_broker.connection import is_cluster
from tests.helpers import subprocess_env


async def send(socket: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    """Send one JSON frame."""
    await socket.send_to(text_data=json.dumps(frame))


async def receive(socket: WebsocketCommunicator, within: float = 5) -> dict[str, Any]:
    """Return the next frame, decoded."""
    return json.loads(await socket.receive_from(timeout=within))  # type: ignore[no-any-return]


async def subscribe(socket: WebsocketCommunicator, channel: str, **extra: Any) -> dict[str, Any]:
    """Subscribe and return the ``subscribed`` frame (Redis has confirmed by then)."""
    await send(socket, {"action": "subscribe", "channel": channel, **extra})
    frame = await receive(socket)
    assert frame == {"type": "subscribed", "channel": channel}, frame
    return frame


def subscribers(client: Any, channel: str) -> int:
    """Return how many connections listen to ``channel`` (a Redis channel name):
    ``PUBSUB NUMSUB`` on one node, ``PUBSUB SHARDNUMSUB`` on the channel's shard on a
    cluster, where the relay subscribes with SSUBSCRIBE."""
    if is_cluster(client):
        node = client.get_node_from_key(channel)
        reply = client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    else:
        reply = client.execute_command("PUBSUB NUMSUB", channel)
    [(_name, count)] = reply
    return int(count)


def single_node(url: str) -> dict[str, Any]:
    """Return the ``REDIS_BROKER`` keys for a private single Redis at ``url``, which a
    test restarts or pauses: ``CLUSTER`` is off even when the session runs on a cluster
    (tests/cluster has the cluster's versions of those tests)."""
    return {"URL": url, "CLUSTER": False}


def single_node_env(url: str) -> dict[str, str]:
    """Return the environment of a child process (daphne) using the single Redis at ``url``."""
    return subprocess_env(REDIS_URL=url, REDIS_CLUSTER="0")


def kill_pubsub_clients(client: Any) -> int:
    """Kill every Pub/Sub connection on ``client``'s Redis (every master of a cluster,
    where the relay holds one per shard); return how many."""
    if not is_cluster(client):
        return int(client.client_kill_filter(_type="pubsub"))
    killed = 0
    for node in client.get_primaries():
        with redis.Redis(host=node.host, port=node.port) as shard:
            killed += int(shard.client_kill_filter(_type="pubsub"))
    return killed
