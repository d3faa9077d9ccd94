"""The per-process Pub/Sub hub: one Redis connection feeding every local WebSocket.

Sockets register *subscriptions* with the hub; the hub subscribes a Redis channel when
its first local subscription arrives and unsubscribes after the last one leaves. Each
message read from Redis is turned into a frame once and offered to every local socket's
bounded queue, so a slow browser only ever fills its own queue.

redis-py's asyncio Pub/Sub neither reconnects on its own in a way the relay can see, nor
notices a half-open connection. So the hub owns both: a reconnect loop with exponential
backoff and jitter, and a watchdog PING that must be answered within ``PING_INTERVAL``.
After a reconnect every channel is subscribed again; durable channels replay what each
socket missed from their capped stream, and the others get a ``gap`` frame, because
messages sent while the hub was away are gone for them.

On a Redis Cluster the hub subscribes with SSUBSCRIBE (``sharded_pubsub.py``): one
connection per shard that owns a subscribed channel, each with its own watchdog. A lost
shard counts as a lost hub: every channel is subscribed again and told as above, since
a failover may also have moved channels between shards.

The hub also keeps the process's relay status in Redis (``status.py``): sockets are
counted as they register, subscribe and leave, never per message, and a task of its own
writes the record, so a Redis outage delays it and nothing else.

A subscription on a durable channel starts in *buffering* mode: live messages are held
while the stream is read, then the buffer is merged behind the replayed entries, dropping
any whose id was already replayed. The merge happens without an ``await`` in between,
so no message can slip through the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import redis.asyncio
from redis.exceptions import ResponseError

from .. import tracing, wire
from ..backoff import Backoff
from ..conf import BrokerConfig, get_config
from ..connection import (
    CONNECTION_ERRORS,
    REDIS_ERRORS,
    build_async_client,
    explain,
    get_async_redis,
    mask_url,
)
from ..exceptions import MalformedEntry
from ..naming import prefixed, unprefixed
from ..publishing import is_durable
from ..sharded_pubsub import CLUSTER_RETRY_ERRORS, ShardedPubSub, WatchdogTimeout
from ..wire import entry_id_key
from .frames import control_frame, message_frame
from .status import STATUS_INTERVAL, STATUS_MIN_GAP, delete_status, encode_status, write_status

logger = logging.getLogger("redis_broker.relay")

#: Backoff of the reconnect loop, in seconds: first delay and cap (full jitter on top).
RECONNECT_BASE = 0.05
RECONNECT_CAP = 2.0
#: Entries read per XRANGE page while replaying a durable channel.
REPLAY_PAGE = 500
#: Failures of a command after which the hub reconnects (or retries a replay).
RECONNECT_ERRORS = CONNECTION_ERRORS + CLUSTER_RETRY_ERRORS
#: Messages fanned out between two yields to the event loop during a burst: each socket's
#: sender then wakes once for up to this many frames, not once per frame (bench/relay.py:
#: 8.9 -> 6.9 us of CPU per frame, saturated). At most a quarter of SEND_QUEUE_SIZE.
FAN_OUT_BURST = 16


class FrameSink(Protocol):
    """What the hub needs from a socket: a non-blocking way to queue one text frame."""

    def offer(self, text: str) -> bool:
        """Queue ``text``; return False (and close the socket) when the queue is full."""

    def overflow(self) -> None:
        """Close the socket because it cannot keep up."""


@dataclasses.dataclass(eq=False)
class Subscription:
    """One socket's interest in one channel, and where that socket is in the channel."""

    sink: FrameSink
    channel: str
    durable: bool
    since: str | None = None
    last_id: str | None = None  # last durable entry this socket was given
    live: bool = False  # False: live messages are buffered until the catch-up is done
    announced: bool = False  # the "subscribed" frame was sent
    buffer: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    closed: bool = False

    def deliver(self, text: str, entry_id: str | None) -> None:
        """Give one live message to the socket, or buffer it while catching up."""
        if not self.live:
            self.buffer.append((text, entry_id))
            return
        if entry_id is not None:
            if self.last_id is not None and entry_id_key(entry_id) <= entry_id_key(self.last_id):
                return  # already replayed from the stream
            self.last_id = entry_id
        self.sink.offer(text)


@dataclasses.dataclass
class HubStats:
    """Counters of one hub, for logs, tests and the benchmark."""

    messages: int = 0  # messages read from Redis
    deliveries: int = 0  # frames offered to sockets
    replayed: int = 0  # durable entries replayed from streams
    gaps: int = 0  # gap frames sent
    reconnects: int = 0  # successful connections after the first
    overflows: int = 0  # sockets closed because their queue was full
    malformed: int = 0  # messages and replayed entries dropped because undecodable
    errors: Counter[str] = dataclasses.field(default_factory=Counter)  # error frames by code


class Hub:
    """One Pub/Sub connection (one per shard on a cluster) shared by every socket on
    this event loop.

    Use :func:`get_hub` rather than building one: the point is that there is only one.
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        config = config or get_config()
        # The hub retries and health-checks by itself; redis-py doing it too would
        # resubscribe behind the hub's back and hide the gap it must report.
        self._config = dataclasses.replace(config, retries=0, health_check_interval=0)
        self._prefix = config.key_prefix
        self._ping_interval = config.websocket.ping_interval
        self._buffer_limit = config.websocket.send_queue_size
        self._burst = max(1, min(FAN_OUT_BURST, self._buffer_limit // 4))
        self._channels: dict[str, set[Subscription]] = {}
        self._pending: dict[str, int] = {}  # SUBSCRIBEs sent and not yet confirmed
        self._active: set[str] = set()  # confirmed on the current connection
        self._lock = asyncio.Lock()
        self._client: redis.asyncio.Redis | None = None
        self._pubsub: Any = None
        self._generation = 0  # bumped on every (re)connection
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.connected = asyncio.Event()
        self.stats = HubStats()
        # The process's status (status.py): who is connected, kept up to date without
        # touching the per-message path, written by the reporter task.
        self.process = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._started_at = time.time()
        self._sockets: dict[FrameSink, tuple[str, str] | None] = {}  # sink -> (pk, name)
        self._users: Counter[tuple[str, str]] = Counter()
        self._changed = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def channels(self) -> frozenset[str]:
        """Return the channels this hub is subscribed to (without the key prefix)."""
        return frozenset(self._channels)

    def register(self, sink: FrameSink, user: Any) -> None:
        """Count an open socket and its user in the process's status (nothing awaits)."""
        if self._closed:
            return
        who = None
        if user is not None and getattr(user, "is_authenticated", False):
            who = (str(user.pk), str(user.get_username()))
            self._users[who] += 1
        self._sockets[sink] = who
        self._changed.set()
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(
                self._report(), name="redis_broker.relay.status"
            )
            self._reporter.add_done_callback(self._reader_done)

    def unregister(self, sink: FrameSink) -> None:
        """Forget a closed socket in the process's status (nothing awaits)."""
        if sink not in self._sockets:
            return
        who = self._sockets.pop(sink)
        if who is not None:
            self._users[who] -= 1
            if self._users[who] <= 0:
                del self._users[who]
        self._changed.set()

    def count_error(self, code: str) -> None:
        """Count an error frame sent to a socket, for the process's status (nothing awaits)."""
        self.stats.errors[code] += 1
        self._changed.set()

    async def subscribe(
        self, sink: FrameSink, channel: str, since: str | None = None
    ) -> Subscription:
        """Register ``sink`` on ``channel``; frames follow once Redis has confirmed.

        The sink first receives ``subscribed``, then (durable channels with ``since``)
        the entries after ``since``, then live messages, each exactly once.
        """
        if self._closed:
            raise RuntimeError("the hub is closed")
        self._ensure_running()
        sub = Subscription(sink=sink, channel=channel, durable=is_durable(channel), since=since)
        async with self._lock:
            subs = self._channels.setdefault(channel, set())
            first = not subs
            subs.add(sub)
            self._changed.set()
            if first:
                await self._send_subscribe([channel])
            elif channel in self._active:
                self._spawn(self._activate(sub, self._generation))
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub``; unsubscribe its channel in Redis when no local socket needs it."""
        sub.closed = True
        async with self._lock:
            subs = self._channels.get(sub.channel)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            self._changed.set()
            if subs:
                return
            del self._channels[sub.channel]
            self._active.discard(sub.channel)
            pubsub = self._pubsub
            if pubsub is not None:
                try:
                    await pubsub.unsubscribe(prefixed(self._prefix, sub.channel))
                except RECONNECT_ERRORS as exc:
                    self._broken(pubsub, exc)

    async def unsubscribe_all(self, subs: Iterable[Subscription]) -> None:
        """Forget several subscriptions (a socket going away)."""
        for sub in list(subs):
            await self.unsubscribe(sub)

    async def aclose(self) -> None:
        """Stop the reader and close the connection (tests; server shutdown)."""
        self._closed = True
        self._changed.set()  # the status writer ends even if a cancellation got lost
        tasks = [t for t in (self._task, self._reporter, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop_connection()
        self._channels.clear()
        if self._reporter is not None:
            # Best effort: a record left behind expires by itself within its TTL.
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(1.0):
                    await delete_status(get_async_redis(), self._prefix, self.process)

    # ------------------------------------------------------------------ connection

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="redis_broker.relay.hub"
            )
            self._task.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # _run and _report only end by cancellation; else it is a bug
            logger.error("The relay hub's task %s stopped", task.get_name(), exc_info=exc)

    # ------------------------------------------------------------------ status

    def _status(self) -> str:
        """Return the process's status record now (see ``status.py``)."""
        return encode_status(
            process=self.process,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            sockets=len(self._sockets),
            anonymous=sum(1 for who in self._sockets.values() if who is None),
            users=self._users,
            channels={channel: len(subs) for channel, subs in self._channels.items()},
            errors=self.stats.errors,
            overflows=self.stats.overflows,
        )

    async def _report(self) -> None:
        """Write the status every STATUS_INTERVAL s, and soon after sockets come or go.

        Writes are at least STATUS_MIN_GAP s apart, so a burst of connections costs one.
        A failing write is logged once, with the reason, until one succeeds again.
        """
        # The loop also ends on ``_closed``: a cancellation that reaches redis-py while it
        # connects can be lost (seen with Python 3.11), and aclose() would wait forever.
        failing = False
        while not self._closed:
            self._changed.clear()
            try:
                client = get_async_redis()
                record = self._status()
                async with asyncio.timeout(STATUS_INTERVAL):
                    await write_status(client, self._prefix, self.process, record)
            except REDIS_ERRORS as exc:  # TimeoutError too: a write that hangs
                if not failing:
                    logger.warning(
                        "Cannot write the relay's status to Redis at %s (%s: %s); sockets are "
                        "not affected, and the write is retried every %.0f s",
                        mask_url(self._config.url),
                        type(exc).__name__,
                        exc,
                        STATUS_INTERVAL,
                    )
                failing = True
            else:
                if failing:
                    logger.info("The relay's status is written to Redis again")
                failing = False
            try:
                async with asyncio.timeout(STATUS_INTERVAL):
                    await self._changed.wait()
            except TimeoutError:
                continue
            if not self._closed:
                await asyncio.sleep(STATUS_MIN_GAP)

    async def _run(self) -> None:
        """Connect, read and fan out; on any failure back off and connect again."""
        backoff = Backoff(RECONNECT_BASE, RECONNECT_CAP, jitter=True, remind_every=10)
        ever_connected = False
        while True:
            try:
                await self._connect()
                if ever_connected:
                    self.stats.reconnects += 1
                    logger.info("Relay hub reconnected to %s", mask_url(self._config.url))
                ever_connected = True
                backoff.reset()
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._drop_connection()
                delay = backoff.next_delay()
                logger.log(
                    backoff.level(),
                    "Relay hub lost Redis at %s (%s: %s); reconnecting in %.2f s (attempt %d)",
                    mask_url(self._config.url),
                    type(exc).__name__,
                    explain(exc, self._config.url),  # a TLS mismatch, a missing password...
                    delay,
                    backoff.failures,
                )
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        pubsub: Any
        if self._config.cluster:
            client = build_async_client(self._config, retries=False)
            pubsub = ShardedPubSub(client, watchdog=self._ping_interval)
        else:
            client = build_async_client(self._config)
            pubsub = client.pubsub()
        try:
            await pubsub.connect()
        except BaseException:
            await pubsub.aclose()
            await client.aclose()
            raise
        async with self._lock:
            self._client, self._pubsub = client, pubsub
            self._generation += 1
            self._pending.clear()
            self._active.clear()
            self.connected.set()
            if self._channels:
                await self._send_subscribe(list(self._channels))

    async def _drop_connection(self) -> None:
        """Forget the current connection; every subscription buffers until resubscribed."""
        self.connected.clear()
        client, pubsub = self._client, self._pubsub
        self._client = self._pubsub = None
        self._generation += 1
        self._pending.clear()
        self._active.clear()
        for subs in self._channels.values():
            for sub in subs:
                sub.live = False
                sub.buffer.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _broken(self, pubsub: Any, exc: BaseException) -> None:
        """A command failed on the Pub/Sub connection: cut it so the reader reconnects."""
        logger.debug("Relay hub command failed (%s); dropping the connection", exc)
        if isinstance(pubsub, ShardedPubSub):
            pubsub.fail(exc)  # the reader raises it and reconnects every shard
            return
        connection = getattr(pubsub, "connection", None)
        if connection is not None:
            self._spawn(connection.disconnect())

    async def _send_subscribe(self, channels: list[str]) -> None:
        """SUBSCRIBE ``channels`` on the current connection (call with the lock held)."""
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reconnect will subscribe everything in self._channels
        for channel in channels:
            self._pending[channel] = self._pending.get(channel, 0) + 1
        try:
            await pubsub.subscribe(*(prefixed(self._prefix, c) for c in channels))
        except RECONNECT_ERRORS as exc:
            self._broken(pubsub, exc)

    # ------------------------------------------------------------------ reading

    async def _read(self) -> None:
        """Read messages until the connection fails; PING when it has been quiet."""
        pubsub = self._pubsub
        loop = asyncio.get_running_loop()
        interval = self._ping_interval
        last_seen = loop.time()
        ping_sent: float | None = None
        burst = 0
        while True:
            message = await pubsub.get_message(timeout=interval)
            now = loop.time()
            if message is None and self._config.cluster:
                continue  # each shard's reader keeps its own watchdog
            if message is None:
                if ping_sent is not None and now - ping_sent >= interval:
                    raise WatchdogTimeout(f"no PONG within {interval} s")
                if ping_sent is None and now - last_seen >= interval:
                    await pubsub.ping()
                    ping_sent = now
                continue
            last_seen, ping_sent = now, None
            kind = message["type"]
            if kind in ("message", "smessage"):
                self._fan_out(message["channel"], message["data"])
                # A read from redis-py's buffer does not yield to the event loop; without
                # this a burst would be fanned out before any socket's sender ran, and
                # fill their queues although every browser keeps up.
                burst += 1
                if burst >= self._burst:
                    burst = 0
                    await asyncio.sleep(0)
            elif kind in ("subscribe", "ssubscribe"):
                self._confirmed(message["channel"])

    def _confirmed(self, raw_channel: bytes) -> None:
        channel = unprefixed(self._prefix, raw_channel.decode())
        pending = self._pending.get(channel, 0) - 1
        if pending > 0:
            self._pending[channel] = pending
            return
        self._pending.pop(channel, None)
        subs = self._channels.get(channel)
        if not subs or channel in self._active:
            return
        self._active.add(channel)
        for sub in subs:
            if not sub.live:
                self._spawn(self._activate(sub, self._generation))

    def _fan_out(self, raw_channel: bytes, raw: bytes) -> None:
        self.stats.messages += 1
        channel = unprefixed(self._prefix, raw_channel.decode())
        subs = self._channels.get(channel)
        if not subs:
            return
        try:
            # decode_message raises MalformedEntry and nothing else, whatever the bytes,
            # and leaves data that message_frame can always encode: a poison message
            # costs one log line, never the connection every socket depends on.
            message = wire.decode_message(raw)
        except MalformedEntry as exc:
            self.stats.malformed += 1
            logger.warning("Dropped a message on %r that cannot be decoded: %s", channel, exc)
            return
        if tracing.ENABLED and message.headers:
            tracing.delivered(channel, message.headers)  # once per process, not per socket
        text = message_frame(channel, message)
        entry_id = message.id if isinstance(message.id, str) else None
        for sub in tuple(subs):
            sub.deliver(text, entry_id)
            if len(sub.buffer) > self._buffer_limit:
                sub.buffer.clear()
                sub.sink.overflow()
        self.stats.deliveries += len(subs)

    # ------------------------------------------------------------------ catching up

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("A relay hub task failed", exc_info=task.exception())

    async def _activate(self, sub: Subscription, generation: int) -> None:
        """Bring ``sub`` live on the current connection: announce, replay or report a gap."""
        # The first retry waits up to twice the reconnect base: a replay follows a connect.
        backoff = Backoff(RECONNECT_BASE * 2, RECONNECT_CAP, jitter=True)
        while not sub.closed and generation == self._generation and not sub.live:
            try:
                frames, baseline = await self._catch_up(sub) if sub.durable else ([], None)
            except RECONNECT_ERRORS as exc:  # before ResponseError: CLUSTERDOWN is one too
                delay = backoff.next_delay()
                logger.debug(
                    "Replay of %r failed (%s); retrying in %.2f s", sub.channel, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            except ResponseError as exc:
                # Not a stream (someone else's key under that name): deliver live only.
                logger.warning(
                    "Cannot replay %r: %s; delivering live messages only", sub.channel, exc
                )
                frames, baseline = [], None
            if sub.closed or generation != self._generation:
                return  # the connection changed while reading: the next confirmation redoes this
            # From here to ``sub.live = True`` nothing awaits, so no live message can be
            # delivered out of order or lost between the replay and the buffer.
            if not sub.announced:
                sub.sink.offer(control_frame("subscribed", sub.channel))
                sub.announced = True
            elif not sub.durable:
                self.stats.gaps += 1
                sub.sink.offer(control_frame("gap", sub.channel))
            for text, entry_id in frames:
                sub.sink.offer(text)
                if entry_id is not None:
                    sub.last_id = entry_id
            buffered, sub.buffer = sub.buffer, []
            sub.live = True
            if baseline is None:
                for text, entry_id in buffered:
                    sub.deliver(text, entry_id)
                continue
            # No ``since``: everything buffered arrived after the SUBSCRIBE was confirmed,
            # so it is all live, even entries older than the baseline read afterwards.
            sub.last_id = baseline
            for text, entry_id in buffered:
                sub.sink.offer(text)
                if entry_id is not None and entry_id_key(entry_id) > entry_id_key(sub.last_id):
                    sub.last_id = entry_id

    async def _catch_up(self, sub: Subscription) -> tuple[list[tuple[str, str | None]], str | None]:
        """Return the frames ``sub`` missed on its durable channel (and a gap if trimmed).

        The second value is the stream's newest id when the socket gave no ``since``.
        """
        client = get_async_redis()
        key = prefixed(self._prefix, sub.channel)
        start = sub.last_id or sub.since
        if start is None:
            # A first subscribe without ``since``: remember where the stream is, so a
            # later reconnect replays from there.
            newest: Any = await client.xrevrange(key, count=1)
            return [], (newest[0][0].decode() if newest else "0-0")
        frames: list[tuple[str, str | None]] = []
        if await self._trimmed_after(client, key, start):
            self.stats.gaps += 1
            frames.append((control_frame("gap", sub.channel), None))
        cursor = f"({start}"
        while True:
            page: Any = await client.xrange(key, min=cursor, max="+", count=REPLAY_PAGE)
            for raw_id, fields in page:
                entry_id = raw_id.decode()
                try:
                    entry = wire.decode_entry(fields)
                except MalformedEntry as exc:
                    self.stats.malformed += 1
                    logger.warning(
                        "Skipped entry %s of %r in a replay: it cannot be decoded: %s",
                        entry_id,
                        sub.channel,
                        exc,
                    )
                    continue
                message = wire.DecodedMessage(
                    type=entry.type,
                    data=entry.data,
                    event_id=entry.event_id,
                    published_at=entry.published_at,
                    id=entry_id,
                    headers=entry.headers,
                )
                frames.append((message_frame(sub.channel, message), entry_id))
            self.stats.replayed += len(page)
            if len(page) < REPLAY_PAGE:
                return frames, None
            cursor = f"({page[-1][0].decode()}"

    @staticmethod
    async def _trimmed_after(client: redis.asyncio.Redis, key: str, since: str) -> bool:
        """Return True when entries newer than ``since`` may have been trimmed away.

        Trimming removes the oldest entries, so when the stream's first entry is newer
        than ``since``, the socket's position is gone and what followed it may be too.
        It can be a false alarm (only ``since`` itself trimmed); a gap frame makes the
        page refresh, which is safe. ``since="0"`` asks for what is kept: never a gap.
        """
        if entry_id_key(since) == (0, 0):
            return False
        try:
            info = await client.xinfo_stream(key)
        except ResponseError as exc:
            if isinstance(exc, CLUSTER_RETRY_ERRORS):
                raise  # CLUSTERDOWN says nothing about the stream: the replay is retried
            return False  # no such stream: nothing was ever kept, nothing was trimmed
        first = info.get("first-entry")
        if not first:
            return False
        first_id = wire.reply_text(first[0])
        return entry_id_key(first_id) > entry_id_key(since)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """Return the hub of the running event loop (one per server process), creating it."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub._closed:
        hub = Hub()
        _hubs[loop] = hub
    return hub


async def aclose_hub() -> None:
    """Close the running loop's hub, if any (tests and orderly shutdown)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.pop(loop, None)
    if hub is not None:
        await hub.aclose()
