"""Worker heartbeats: which ``runconsumers`` processes are alive, one per consumer name.

Each worker process claims its consumer name when it starts, in the same round trip as
its first PING, and refreshes the claim every ``CONSUMERS["HEARTBEAT_INTERVAL"]``
seconds. The claim is a hash ``redis-broker:worker:<name>`` (``token``, ``info``) that
expires three intervals after the last beat, so a process killed with ``kill -9`` drops
out by itself. A sorted set ``redis-broker:workers`` lists the names, scored by when
their claim expires, so other processes can list the live workers without SCAN.

This gives two guarantees:

* a second live process with the same ``--consumer-name`` is refused at start (two
  processes with one name would share one pending list and handle each other's
  in-flight entries), while a process restarted under its old name after a crash
  waits for the dead one's claim to expire instead of failing;
* any process can tell which workers are alive and what they serve
  (:func:`live_workers`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from .connection import is_cluster
from .exceptions import ConsumerNameInUse, MalformedEntry
from .naming import worker_key, workers_key
from .wire import loads, reply_text

#: A claim expires after this many missed heartbeats.
MISSED_BEATS = 3

# Write the claim unless another process's token holds it; return that holder's info.
_CLAIM = """
local holder = redis.call('HGET', KEYS[1], 'token')
if holder and holder ~= ARGV[1] then
  return redis.call('HGET', KEYS[1], 'info') or ''
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'info', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""

# Delete the claim only if it is still ours.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a live worker said about itself in its last heartbeat."""

    name: str
    host: str
    pid: int
    started_at: float  # epoch seconds
    beat_at: float  # epoch seconds of the last heartbeat
    consumers: list[dict[str, Any]]  # {"kind", "name", "stream", "group", "in_flight",
    # "oldest_call_s", "progress_age_s", "live", "ready", "problem"} per consumer
    in_flight: int
    oldest_call_s: float | None
    #: The worker's own verdicts at its last beat (``health.py``); None from a worker
    #: that predates them.
    live: bool | None = None
    ready: bool | None = None
    problems: tuple[str, ...] = ()


def decode_info(raw: Any) -> WorkerInfo | None:
    """Return the info of a heartbeat (its ``info`` field), or None when it is not ours."""
    try:
        value = loads(raw, what="heartbeat")
        return WorkerInfo(
            name=str(value["name"]),
            host=str(value["host"]),
            pid=int(value["pid"]),
            started_at=float(value["started_at"]),
            beat_at=float(value["beat_at"]),
            consumers=list(value.get("consumers", [])),
            in_flight=int(value.get("in_flight", 0)),
            oldest_call_s=value.get("oldest_call_s"),
            live=value.get("live"),
            ready=value.get("ready"),
            problems=tuple(str(p) for p in value.get("problems", ())),
        )
    except (MalformedEntry, TypeError, KeyError, ValueError):
        return None


class Heartbeat:
    """The claim of one worker process on its consumer name, kept alive by ``beat()``.

    ``describe`` returns the live part of the info (``consumers``, ``in_flight``,
    ``oldest_call_s``); it is called for every beat.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        name: str,
        interval: float,
        describe: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.name = name
        self.interval = interval
        self.ttl_ms = max(1, int(interval * MISSED_BEATS * 1000))
        self.describe = describe
        self.key = worker_key(prefix, name)
        self.token = uuid.uuid4().hex
        self.started_at = time.time()
        self.held = False  # claimed by this process (and not released)
        self.lost = False  # another process took the name over

    def _info(self) -> str:
        info = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "beat_at": time.time(),
            "interval": self.interval,
            **self.describe(),
        }
        return json.dumps(info, separators=(",", ":"))

    async def _write(self, *, ping: bool = False) -> Any:
        """Write the claim (and the index entry); return the holder's info on a clash."""
        pipe = self.client.pipeline(transaction=False)
        if ping and not is_cluster(self.client):  # a cluster pipeline takes no PING; the
            pipe.ping()  # EVAL below reaches the node all the same
        pipe.eval(_CLAIM, 1, self.key, self.token, self._info(), self.ttl_ms)
        expires = time.time() + self.ttl_ms / 1000
        pipe.zadd(workers_key(self.prefix), {self.name: expires})
        replies = await pipe.execute()
        return replies[-2]

    async def claim(self) -> None:
        """PING and claim the name in one round trip; raise ``ConsumerNameInUse`` on a clash.

        When another process holds the name, wait while its claim may still be a dead
        process's (up to the claim's lifetime): a beat from it means it is alive.
        """
        holder = await self._write(ping=True)
        if holder is None:
            self.held = True
            return
        first = decode_info(holder)
        deadline = time.monotonic() + self.ttl_ms / 1000 + self.interval
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, self.interval / 4))
            holder = await self._write()
            if holder is None:
                self.held = True
                return  # the dead holder's claim expired
            now = decode_info(holder)
            if first is None or now is None or now.beat_at != first.beat_at:
                first = now
                break  # it beat: alive
        raise ConsumerNameInUse(_in_use_message(self.name, first))

    async def beat(self) -> None:
        """Refresh the claim; log nothing, raise Redis errors (the caller retries)."""
        holder = await self._write()
        self.lost = holder is not None

    async def release(self) -> None:
        """Drop the claim and the index entry, if the claim is still ours."""
        pipe = self.client.pipeline(transaction=False)
        pipe.eval(_RELEASE, 1, self.key, self.token)
        pipe.zrem(workers_key(self.prefix), self.name)
        await pipe.execute()
        self.held = False


def _in_use_message(name: str, holder: WorkerInfo | None) -> str:
    who = "another live worker"
    if holder is not None:
        age = max(0.0, time.time() - holder.beat_at)
        who = f"a live worker on {holder.host} (pid {holder.pid}, heartbeat {age:.1f} s ago)"
    return (
        f"The consumer name {name!r} is in use by {who}. Two processes with one name "
        "would handle each other's in-flight entries: give this one another "
        "--consumer-name (the default, <host>-<pid>, is unique), or stop the other one."
    )


async def live_workers(client: redis.asyncio.Redis, prefix: str) -> list[WorkerInfo]:
    """Return the workers whose heartbeat has not expired, by name.

    Also forgets index entries whose claim expired long ago, so the index stays small.
    """
    index = workers_key(prefix)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", now - 3600)
    pipe.zrangebyscore(index, now, "+inf")
    _, names = await pipe.execute()
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(worker_key(prefix, reply_text(name)), "info")
    found = [decode_info(raw) for raw in await pipe.execute() if raw is not None]
    return sorted((info for info in found if info is not None), key=lambda info: info.name)
