"""What each relay process says about itself in Redis, for the admin inspector.

Every server process running the relay (its hub, one per process) keeps one small
record: its sockets, how many each user has open, how many browser sockets each channel
has, and its error counters. The hub counts sockets as they connect, subscribe and leave
(never per message) and writes the record from a task of its own: at most once every
:data:`STATUS_MIN_GAP` seconds while sockets come and go, and every
:data:`STATUS_INTERVAL` seconds anyway to keep it alive. A Redis outage only delays the
record; sockets never wait for it.

The conventions are those of the workers' heartbeats (``redis_broker/heartbeat.py``):
the record is JSON text at ``<KEY_PREFIX>redis-broker:relay:<process>`` that expires
:data:`MISSED_WRITES` intervals after its last write, so a killed process drops out by
itself, and the sorted set ``<KEY_PREFIX>redis-broker:relays`` lists the processes,
scored by when their record expires, so a reader needs no SCAN. Lists in the record are
bounded (:data:`MAX_USERS` users and :data:`MAX_CHANNELS` channels with the most
sockets), and so are reads (:data:`MAX_PROCESSES` processes, two pipelined round trips).

The record, one JSON object::

    {"process": "web1-4242-1a2b3c", "host": "web1", "pid": 4242,
     "started_at": 1700000000.0, "written_at": 1700000042.5, "interval": 5.0,
     "sockets": 3, "anonymous": 0,
     "users": [{"id": "7", "name": "alice", "sockets": 2}, ...], "users_total": 2,
     "channels": [{"channel": "chat.lobby", "sockets": 3}, ...], "channels_total": 1,
     "errors": {"rate_limited": 12, "too_large": 1, "forbidden": 0, ...},
     "overflows": 0}

``errors`` counts the error frames sent since the process started, by code;
``overflows`` the sockets closed with 4008 because they fell behind.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio

from ..exceptions import MalformedEntry
from ..naming import relay_key, relays_key
from ..wire import loads, reply_text

#: Seconds between two writes of a process's record when nothing changed.
STATUS_INTERVAL = 5.0
#: Seconds at least between two writes while sockets come and go (one write per burst).
STATUS_MIN_GAP = 1.0
#: A record expires after this many intervals without a write.
MISSED_WRITES = 3
#: Users, channels and processes a record or a read holds at most (the biggest first).
MAX_USERS = 100
MAX_CHANNELS = 100
MAX_PROCESSES = 100


@dataclass(frozen=True, slots=True)
class UserSockets:
    """How many relay sockets one logged-in user has open."""

    id: str  # the user's pk, as text
    name: str  # ``get_username()``
    sockets: int


@dataclass(frozen=True, slots=True)
class ChannelSockets:
    """How many browser sockets are subscribed to one channel."""

    channel: str  # without KEY_PREFIX
    sockets: int


@dataclass(frozen=True, slots=True)
class RelayProcess:
    """One relay process's record, as it last wrote it."""

    process: str  # host-pid-token, unique per hub
    host: str
    pid: int
    started_at: float  # epoch seconds
    written_at: float  # epoch seconds of the last write
    sockets: int
    anonymous: int  # sockets of users who are not logged in
    users: tuple[UserSockets, ...]  # the users with the most sockets, at most MAX_USERS
    users_total: int  # distinct logged-in users with a socket
    channels: tuple[ChannelSockets, ...]  # the channels with the most sockets
    channels_total: int
    rate_limited: int  # error frames sent, by code, since the process started
    too_large: int
    forbidden: int
    bad_request: int
    unavailable: int
    overflows: int  # sockets closed with 4008 (they fell behind)

    @property
    def truncated(self) -> bool:
        """Return True when the record lists only the biggest of its users or channels."""
        return self.users_total > len(self.users) or self.channels_total > len(self.channels)

    @property
    def started(self) -> datetime:
        """Return when the process's hub started, as an aware datetime."""
        return datetime.fromtimestamp(self.started_at, tz=UTC)

    @property
    def written(self) -> datetime:
        """Return when the record was last written, as an aware datetime."""
        return datetime.fromtimestamp(self.written_at, tz=UTC)

    @property
    def age(self) -> int:
        """Return how many seconds ago the record was written (0 when just now)."""
        return max(0, int(time.time() - self.written_at))


@dataclass(frozen=True, slots=True)
class RelayOverview:
    """Every live relay process, and their sockets added up per user and per channel."""

    processes: tuple[RelayProcess, ...]  # by host and pid
    users: tuple[UserSockets, ...]  # most sockets first, at most MAX_USERS
    channels: tuple[ChannelSockets, ...]  # most sockets first, at most MAX_CHANNELS
    sockets: int
    rate_limited: int
    too_large: int
    forbidden: int
    overflows: int
    truncated: bool  # more processes than read, or a process listed only its biggest


# --- Writing (the hub) ---------------------------------------------------------------------


def encode_status(
    *,
    process: str,
    host: str,
    pid: int,
    started_at: float,
    sockets: int,
    anonymous: int,
    users: Counter[tuple[str, str]],
    channels: Mapping[str, int],
    errors: Mapping[str, int],
    overflows: int,
) -> str:
    """Return the JSON text of a process's record (the biggest users and channels only)."""
    top_channels = heapq.nlargest(MAX_CHANNELS, channels.items(), key=lambda item: item[1])
    record = {
        "process": process,
        "host": host,
        "pid": pid,
        "started_at": started_at,
        "written_at": time.time(),
        "interval": STATUS_INTERVAL,
        "sockets": sockets,
        "anonymous": anonymous,
        "users": [
            {"id": pk, "name": name, "sockets": count}
            for (pk, name), count in users.most_common(MAX_USERS)
        ],
        "users_total": len(users),
        "channels": [{"channel": name, "sockets": count} for name, count in top_channels],
        "channels_total": len(channels),
        "errors": dict(errors),
        "overflows": overflows,
    }
    return json.dumps(record, separators=(",", ":"))


async def write_status(client: redis.asyncio.Redis, prefix: str, process: str, record: str) -> None:
    """Write a process's record with its expiry, and its index entry, in one round trip."""
    ttl = STATUS_INTERVAL * MISSED_WRITES
    pipe = client.pipeline(transaction=False)
    pipe.set(relay_key(prefix, process), record, px=int(ttl * 1000))
    pipe.zadd(relays_key(prefix), {process: time.time() + ttl})
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception):
            raise reply  # Redis's own words, without the pipeline's copy of the record


async def delete_status(client: redis.asyncio.Redis, prefix: str, process: str) -> None:
    """Remove a process's record and index entry (its hub closed)."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(relay_key(prefix, process))
    pipe.zrem(relays_key(prefix), process)
    await pipe.execute()


# --- Reading (the inspector) ---------------------------------------------------------------


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


def decode_status(raw: Any) -> RelayProcess | None:
    """Return the record in ``raw``, or None when it is not one (another version, garbage)."""
    try:
        value = loads(raw, what="relay status")
        errors = value.get("errors") or {}
        return RelayProcess(
            process=str(value["process"]),
            host=str(value["host"]),
            pid=int(value["pid"]),
            started_at=float(value["started_at"]),
            written_at=float(value["written_at"]),
            sockets=int(value["sockets"]),
            anonymous=_int(value.get("anonymous")),
            users=tuple(
                UserSockets(id=str(u["id"]), name=str(u["name"]), sockets=int(u["sockets"]))
                for u in value.get("users", [])[:MAX_USERS]
            ),
            users_total=_int(value.get("users_total")),
            channels=tuple(
                ChannelSockets(channel=str(c["channel"]), sockets=int(c["sockets"]))
                for c in value.get("channels", [])[:MAX_CHANNELS]
            ),
            channels_total=_int(value.get("channels_total")),
            rate_limited=_int(errors.get("rate_limited")),
            too_large=_int(errors.get("too_large")),
            forbidden=_int(errors.get("forbidden")),
            bad_request=_int(errors.get("bad_request")),
            unavailable=_int(errors.get("unavailable")),
            overflows=_int(value.get("overflows")),
        )
    except (MalformedEntry, TypeError, KeyError, ValueError, AttributeError):
        return None


def read_relays(client: redis.Redis, *, prefix: str, limit: int = MAX_PROCESSES) -> RelayOverview:
    """Return the live relay processes' records, and their sums per user and channel.

    Two pipelined round trips whatever the number of processes (at most ``limit`` are
    read); index entries whose record expired long ago are forgotten on the way.
    """
    index = relays_key(prefix)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", now - 3600)
    pipe.zrangebyscore(index, now, "+inf", start=0, num=limit + 1)
    _, names = pipe.execute()
    more = len(names) > limit
    processes: list[RelayProcess] = []
    if names:
        pipe = client.pipeline(transaction=False)
        for name in names[:limit]:
            pipe.get(relay_key(prefix, reply_text(name, "replace")))
        for raw in pipe.execute():
            found = decode_status(raw) if raw is not None else None
            if found is not None:
                processes.append(found)
    processes.sort(key=lambda p: (p.host, p.pid, p.process))
    users: Counter[tuple[str, str]] = Counter()
    channels: Counter[str] = Counter()
    for p in processes:
        for user in p.users:
            users[(user.id, user.name)] += user.sockets
        for channel in p.channels:
            channels[channel.channel] += channel.sockets
    # Most sockets first, then by name, so the page does not reshuffle between reloads.
    top_users = sorted(users.items(), key=lambda item: (-item[1], item[0][1]))[:MAX_USERS]
    top_channels = sorted(channels.items(), key=lambda item: (-item[1], item[0]))[:MAX_CHANNELS]
    return RelayOverview(
        processes=tuple(processes),
        users=tuple(UserSockets(id=pk, name=name, sockets=n) for (pk, name), n in top_users),
        channels=tuple(ChannelSockets(channel=name, sockets=n) for name, n in top_channels),
        sockets=sum(p.sockets for p in processes),
        rate_limited=sum(p.rate_limited for p in processes),
        too_large=sum(p.too_large for p in processes),
        forbidden=sum(p.forbidden for p in processes),
        overflows=sum(p.overflows for p in processes),
        truncated=more or any(p.truncated for p in processes),
    )
