"""Channel consumers: Pub/Sub channels and patterns, at most once.

One ``ChannelSubscriber`` per ``runconsumers`` process holds one Pub/Sub connection for
every channel consumer of the process: plain names are SUBSCRIBEd, patterns
PSUBSCRIBEd. Each message goes to the inbox of every ``ChannelWorker`` it matches; the
worker hands it to its handler's lanes under the same concurrency limits as streams.

Pub/Sub stores nothing: a message published while the connection is down is lost, and
the subscriber logs such windows. When a consumer's inbox is full (``INBOX_LIMIT``), the
subscriber stops reading until it has room, so a burst waits in Redis's output buffer
for this connection rather than in this process (Redis drops the connection when that
buffer passes ``client-output-buffer-limit pubsub``; the window is then logged like any
lost connection). A handler that raises is logged and the message dropped; for work
that must not be missed, use a stream (or a durable channel, which is also a stream).
A message whose payload does not validate against the handler's declared type is kept:
it goes to the dead-letter stream ``<channel><DEAD_LETTER_SUFFIX>``.

On a Redis Cluster plain names are SSUBSCRIBEd (sharded Pub/Sub, ``sharded_pubsub.py``):
one connection per shard that owns one of the channels, read as one. Patterns have no
sharded form: the runner refuses to start a pattern consumer on a cluster (and
``manage.py check`` warns before).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import wire
from ..backoff import Backoff, wait_or_stop
from ..conf import BrokerConfig
from ..connection import CONNECTION_ERRORS, build_async_client, explain, mask_url
from ..exceptions import MalformedEntry
from ..naming import dead_letter_name, prefixed, unprefixed
from ..payloads import PayloadInvalid
from ..publishing import trim_args
from ..sharded_pubsub import CLUSTER_RETRY_ERRORS, ShardedPubSub
from .message import StreamMessage
from .registry import PARAMETER_RE, ChannelConsumerSpec
from .worker import ConsumerWorker, describe

logger = logging.getLogger("redis_broker.consumers")

#: Messages one channel consumer may hold; past it the subscriber waits for room.
INBOX_LIMIT = 10_000
#: Messages handed to the lanes per step.
DISPATCH_BATCH = 100
#: Back-off of the subscriber's reconnects (seconds): first delay and cap, with jitter.
RECONNECT_BASE = 0.05
RECONNECT_CAP = 2.0


def parameter_reader(pattern: str) -> Callable[[str], dict[str, str]] | None:
    """Return a function reading a channel name's ``{name}`` parts, or None without any."""
    if not PARAMETER_RE.search(pattern):
        return None
    regex = ""
    for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\}|\*|\?)", pattern):
        if part == "*":
            regex += ".*"
        elif part == "?":
            regex += "."
        elif PARAMETER_RE.fullmatch(part):
            regex += f"(?P<{part[1:-1]}>.*)"
        else:
            regex += re.escape(part)
    compiled = re.compile(regex)

    def read(channel: str) -> dict[str, str]:
        match = compiled.fullmatch(channel)
        return match.groupdict() if match else {}

    return read


def with_parameters(spec: ChannelConsumerSpec) -> Callable[[StreamMessage], Any]:
    """Return the handler as the lanes call it: with its ``{name}`` parts as keywords."""
    read = parameter_reader(spec.pattern)
    func = spec.func
    if read is None:
        return func
    if spec.is_async:

        async def call_async(message: StreamMessage) -> Any:
            return await func(message, **read(message.stream))

        return call_async

    def call(message: StreamMessage) -> Any:
        return func(message, **read(message.stream))

    return call


class ChannelWorker(ConsumerWorker):
    """Handle the messages of one channel consumer, fed by the process's subscriber."""

    spec: ChannelConsumerSpec

    def __init__(
        self,
        spec: ChannelConsumerSpec,
        *,
        config: BrokerConfig,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        super().__init__(spec, config=config, concurrency=concurrency, burst=burst)
        self.handler = with_parameters(spec)
        self.prefix = config.key_prefix
        self.dead_letter_suffix = config.consumers.dead_letter_suffix
        self.subscription = prefixed(config.key_prefix, spec.subscription)
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.room = asyncio.Event()  # clear while the inbox is full
        self.room.set()
        self._ids = (b"%d" % n for n in itertools.count())

    def __str__(self) -> str:
        return f"{self.spec.name} (channel {self.spec.pattern})"

    def offer(self, channel: str, raw: bytes) -> None:
        """Queue one message (called by the subscriber, which waits on ``room`` when full)."""
        self.inbox.append((channel, raw))
        if len(self.inbox) >= INBOX_LIMIT:
            self.room.clear()
        self._progress.set()

    async def _setup(self) -> None:
        self._ready = True

    async def _step(self) -> bool:
        """Settle finished calls; hand out queued messages; else wait for either."""
        assert self.lanes is not None
        await self._take_outcomes()
        if self._acks or self._outputs or self._replies:
            await self._flush_acks()
        if not self.inbox or self.lanes.waiting() > DISPATCH_BATCH:
            if not self.burst:
                await self._wait_for_progress(self.block_ms / 1000)
            if not self.inbox:
                self.progress_at = time.monotonic()  # idle: nothing waits for it
            return False
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        build_message = StreamMessage.build
        items: list[tuple[bytes, StreamMessage]] = []
        for _ in range(min(DISPATCH_BATCH, len(self.inbox))):
            key, raw = self.inbox.popleft()
            channel = unprefixed(self.prefix, key)
            try:
                decoded = wire.decode_message(raw)
            except MalformedEntry as exc:
                self.stats.failed += 1
                if self.instruments is not None:
                    self.instruments.dropped.inc()
                logger.warning("%s: dropped a malformed message on %s (%s)", self, channel, exc)
                continue
            message = build_message(
                *(decoded.id or "", channel, "", decoded.data, decoded.type, decoded.event_id),
                *(decoded.headers, decoded.published_at, 1, {}),
            )
            items.append((next(self._ids), message))
        self._submit(items)
        if not self.room.is_set() and len(self.inbox) < INBOX_LIMIT // 2:
            self.room.set()

    async def _settle_failure(
        self, entry_id: bytes, message: StreamMessage, exc: Exception
    ) -> None:
        """Log and drop (a Pub/Sub message is delivered at most once); answer a request.

        A payload that does not validate against the handler's type is dead-lettered
        instead: the handler never saw it, and what a producer got wrong is worth keeping.
        """
        self.stats.failed += 1
        self._reply_error(message, exc)
        if isinstance(exc, PayloadInvalid):
            logger.warning(
                "%s: a message on %s (event %s) does not validate: %s; dead-lettering it",
                *(self, message.stream, message.event_id, exc),
            )
            await self._dead_letter(entry_id, message, describe(exc))
            return
        if self.instruments is not None:
            self.instruments.dropped.inc()
        logger.error(
            "%s: the handler failed on a message on %s (event %s); dropped (at most once)",
            *(self, message.stream, message.event_id),
            exc_info=exc,
        )

    async def _dead_letter(
        self, entry_id: bytes, message: StreamMessage, error: str, trace: str = ""
    ) -> None:
        """Append the message to ``<channel><DEAD_LETTER_SUFFIX>`` (the channel it came on).

        ``original_id`` is empty, as a Pub/Sub message has no id. Only a payload that did
        not convert comes here, so ``message.data`` is still what was sent.
        """
        assert self.client is not None
        fields = wire.DecodedMessage(
            *(message.type, message.data, message.event_id, message.published_at, None),
            headers=message.headers,
        ).fields()
        copy = wire.dead_letter_fields(
            fields,
            original_stream=message.stream,
            original_id="",
            error=error,
            delivery_count=message.delivery_count,
            traceback=trace,
            original_kind="channel",
        )
        key = prefixed(self.prefix, dead_letter_name(message.stream, self.dead_letter_suffix))
        await self.client.xadd(key, copy, **trim_args(self.maxlen))  # type: ignore[arg-type]
        self._count_dead_letter()

    async def _flush_acks(self) -> None:
        """Nothing to ack on a channel; send replies, append outputs of handled messages."""
        self._acks = []
        await self._flush_replies()
        if not self._outputs:
            return
        assert self.client is not None and self.output_key is not None
        outputs, self._outputs = self._outputs, {}
        pipe = self.client.pipeline(transaction=False)
        trim = trim_args(self.maxlen)
        published_at = wire.now_iso()
        for parts in outputs.values():
            fields = wire.output_fields(parts, published_at)
            pipe.xadd(self.output_key, fields, **trim)  # type: ignore[arg-type]
        await pipe.execute()

    async def _burst_done(self, stop: asyncio.Event) -> bool:
        """Return True once nothing is queued or running: Pub/Sub keeps nothing for later."""
        if self._busy() or self.inbox:
            await self._wait_for_progress(0.25)
            return False
        await self._flush_acks()
        return True

    async def pending(self) -> int:
        """Return how many messages wait in this consumer's inbox."""
        return len(self.inbox)

    def trace_names(self) -> dict[str, str]:
        """Return the channel (a pattern is the spans' template) naming ``process`` spans."""
        if self.spec.is_pattern:
            return {"destination": self.spec.pattern, "template": self.spec.pattern}
        return {"destination": self.spec.pattern}

    def metric_labels(self) -> tuple[str, str]:
        """Return ``(pattern, "")``: the channel or pattern as written, no group."""
        return self.spec.pattern, ""

    def work_waiting(self) -> bool:
        """Return True while messages wait in the inbox or calls run."""
        return bool(self.inbox) or super().work_waiting()

    def describe_for_heartbeat(self) -> dict[str, Any]:
        """Return what the process's heartbeat says about this consumer."""
        return {
            **super().describe_for_heartbeat(),
            "pattern": self.spec.pattern,
            "subscription": self.spec.subscription,
            "is_pattern": self.spec.is_pattern,
        }


class ChannelSubscriber:
    """The one Pub/Sub connection of a process (one per shard on a Redis Cluster),
    feeding every channel consumer.

    ``run`` connects, subscribes everything, and reads until stopped; after a lost
    connection (a Redis restart) it reconnects with a jittered back-off, subscribes
    again, and logs the window in which messages may have been missed.
    """

    def __init__(self, config: BrokerConfig, workers: list[ChannelWorker]) -> None:
        self.config = config
        self.plain: dict[str, list[ChannelWorker]] = {}
        self.patterns: dict[str, list[ChannelWorker]] = {}
        for worker in workers:
            table = self.patterns if worker.spec.is_pattern else self.plain
            table.setdefault(worker.subscription, []).append(worker)
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self._full: list[ChannelWorker] = []  # inboxes the last message filled

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe and dispatch until ``stop``; never dies on Redis trouble."""
        backoff = Backoff(RECONNECT_BASE, RECONNECT_CAP, jitter=True, remind_every=10)
        lost_at: float | None = None
        while not stop.is_set():
            client = build_async_client(self.config, retries=False)
            pubsub: Any = ShardedPubSub(client) if self.config.cluster else client.pubsub()
            try:
                await self._subscribe(pubsub)
                if lost_at is not None:
                    self.reconnects += 1
                    logger.warning(
                        "Channel consumers subscribed again; messages published from %s to %s "
                        "(%.1f s) may have been missed",
                        *(_clock(lost_at), _clock(time.time()), time.time() - lost_at),
                    )
                    lost_at = None
                backoff.reset()
                self.subscribed.set()
                await self._read(pubsub, stop)
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS + CLUSTER_RETRY_ERRORS as exc:
                self.subscribed.clear()
                lost_at = lost_at or time.time()
                delay = backoff.next_delay()
                logger.log(
                    backoff.level(),
                    "Channel consumers lost Redis at %s (%s); subscribing again in %.2f s",
                    *(mask_url(self.config.url), explain(exc, self.config.url), delay),
                )
                await wait_or_stop(stop, delay)
            finally:
                await pubsub.aclose()
                await client.aclose()

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe to everything and wait for Redis to confirm, so "Running" means live."""
        if isinstance(pubsub, ShardedPubSub):
            await pubsub.connect()
        if self.plain:
            await pubsub.subscribe(*self.plain)
        if self.patterns:
            await pubsub.psubscribe(*self.patterns)
        unconfirmed = len(self.plain) + len(self.patterns)
        deadline = time.monotonic() + self.config.socket_timeout
        while unconfirmed:
            if time.monotonic() > deadline:
                raise TimeoutError("Redis did not confirm the subscriptions in time")
            message = await pubsub.get_message(timeout=0.1)
            if message is not None and not self._dispatch(message):
                unconfirmed -= 1

    async def _read(self, pubsub: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            message = await pubsub.get_message(timeout=1.0)
            if message is None or not self._dispatch(message):
                continue
            for worker in self._full:
                await worker.room.wait()  # leave the burst in Redis until there is room
            self._full.clear()

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Hand a message to the consumers it matches; return False for anything else."""
        kind = message["type"]
        if kind in ("message", "smessage"):
            targets = self.plain.get(wire.reply_text(message["channel"]), [])
        elif kind == "pmessage":
            targets = self.patterns.get(wire.reply_text(message["pattern"]), [])
        else:
            return False  # (p)subscribe confirmations, pongs
        channel = wire.reply_text(message["channel"], "replace")
        for worker in targets:
            worker.offer(channel, message["data"])
            if not worker.room.is_set():
                self._full.append(worker)
        return True


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"
