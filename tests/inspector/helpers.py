"""Helpers of the inspector tests: the seeded names, every page, URLs, Redis snapshots,
real worker heartbeats and relay status records."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from django.urls import reverse

from redis_broker.conf import get_config
from redis_broker.consumers.channels import ChannelWorker
from redis_broker.consumers.lists import ListWorker
from redis_broker.consumers.registry import ChannelConsumerSpec, ListConsumerSpec
from redis_broker.heartbeat import Heartbeat
from redis_broker.naming import dead_letter_name
from redis_broker.relay.status import encode_status, write_status

STREAM = "orders"
GROUP = "billing"
#: The dead-letter stream of STREAM: "orders:dlq", or "{orders}:dlq" on a cluster.
DLQ = dead_letter_name(STREAM, ":dlq")
LIST = "jobs"
#: A worker of LIST that died (no heartbeat) with items in its processing list.
DEAD_WORKER = "w-dead"


#: Every read-only inspector page, as (URL name, kwargs).
PAGES = [
    ("broker_changelist", {}),
    ("stream", {"stream": STREAM}),
    ("groups", {"stream": STREAM}),
    ("pending", {"stream": STREAM, "group": GROUP}),
    ("dead_letters", {"stream": STREAM}),
    ("pubsub", {}),
    ("outbox", {}),
    ("lists", {}),
    ("workers", {}),
    ("search", {"stream": STREAM}),
]
#: The live console's JSON endpoints, as (URL name, kwargs).
LIVE = [("overview_live", {}), ("workers_live", {})]


def url(name: str, **kwargs: str) -> str:
    """Return the URL of an inspector view on the default admin site."""
    return reverse(f"admin:redis_broker_{name}", kwargs=kwargs or None)


@dataclass
class Seeded:
    """What the ``seeded`` fixture put in Redis."""

    ids: list[str]  # entries of STREAM, oldest first
    pending: list[str]  # ids pending in GROUP (delivered to consumer "c1")
    dead: list[str]  # ids of DLQ entries, oldest first
    dead_event_ids: list[str]  # their event_id fields
    items: list[str]  # the elements waiting in LIST, head first
    taken: list[str]  # the elements in DEAD_WORKER's processing list of LIST, oldest first


def async_client(url: str) -> redis.asyncio.Redis:
    """Return a plain asyncio client of the session's Redis: a cluster client on a cluster."""
    if get_config().cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url)  # type: ignore[return-value]
    return redis.asyncio.Redis.from_url(url)


def raw_client(url: str) -> redis.Redis:
    """Return a plain client with bytes replies, as the app's: a cluster client on a cluster."""
    if get_config().cluster:
        return redis.cluster.RedisCluster.from_url(url)  # type: ignore[return-value]
    return redis.Redis.from_url(url)


def connected_clients(client: redis.Redis) -> int:
    """Return the clients connected to Redis: summed over the masters of a cluster."""
    if isinstance(client, redis.cluster.RedisCluster):
        infos = client.info(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        return sum(int(info["connected_clients"]) for info in infos.values())
    return int(client.info()["connected_clients"])


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Return everything the inspector's actions could change, for before/after equality."""
    state: dict[str, Any] = {}
    for key in sorted(client.scan_iter(_type="list")):
        state[key] = client.lrange(key, 0, -1)
    for key in sorted(client.scan_iter(_type="set")):
        state[key] = client.smembers(key)
    for key in sorted(client.scan_iter(_type="stream")):
        groups = client.xinfo_groups(key)
        state[key] = {
            "entries": client.xrange(key),
            "groups": {
                g["name"]: {
                    "last": g["last-delivered-id"],
                    "pending": [
                        (p["message_id"], p["consumer"], p["times_delivered"])
                        for p in client.xpending_range(key, g["name"], "-", "+", 1000)
                    ],
                    "consumers": sorted(c["name"] for c in client.xinfo_consumers(key, g["name"])),
                }
                for g in groups
            },
        }
    return state


def handle(message: Any, **parts: Any) -> None:
    """Stand in for a consumer's handler: the heartbeats only describe it."""


def list_spec(list_name: str = LIST, name: str = "run_job") -> ListConsumerSpec:
    """Return a ``@list_consumer`` spec of ``list_name``."""
    return ListConsumerSpec(func=handle, name=name, list=list_name)


def channel_spec(pattern: str, name: str) -> ChannelConsumerSpec:
    """Return a ``@channel_consumer`` spec of ``pattern``."""
    return ChannelConsumerSpec(func=handle, name=name, pattern=pattern)


def beat(
    url: str,
    name: str,
    *specs: ListConsumerSpec | ChannelConsumerSpec,
    interval: float = 60.0,
) -> None:
    """Claim worker ``name``'s heartbeat, as ``runconsumers`` does, describing ``specs``.

    A real ``Heartbeat`` and the real workers' descriptions write it, so the tests read
    exactly what a worker process writes. It expires after three ``interval``s.
    """
    config = get_config()
    workers = [
        ListWorker(spec, config=config, consumer=name)
        if isinstance(spec, ListConsumerSpec)
        else ChannelWorker(spec, config=config)
        for spec in specs
    ]

    def describe() -> dict[str, Any]:
        consumers = [worker.describe_for_heartbeat() for worker in workers]
        return {"consumers": consumers, "in_flight": 0, "oldest_call_s": None}

    async def claim() -> None:
        client = async_client(url)
        try:
            heartbeat = Heartbeat(
                client, prefix=config.key_prefix, name=name, interval=interval, describe=describe
            )
            await heartbeat.claim()
        finally:
            await client.aclose()

    asyncio.run(claim())


def write_relay_status(redis_url: str, process: str, **counts: Any) -> None:
    """Write one relay process's record with the real writer, as a hub does."""
    record = encode_status(
        process=process,
        host="web1",
        pid=4242,
        started_at=1_700_000_000.0,
        sockets=counts.get("sockets", 3),
        anonymous=0,
        users=Counter(counts.get("users", {("7", "alice"): 2, ("8", "bob"): 1})),
        channels=counts.get("channels", {"chat.lobby": 3}),
        errors={"rate_limited": 12, "too_large": 4, "forbidden": 1},
        overflows=0,
    )

    async def write() -> None:
        client = async_client(redis_url)
        try:
            await write_status(client, "", process, record)
        finally:
            await client.aclose()

    asyncio.run(write())
