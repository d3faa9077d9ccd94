"""Stream consumer groups: where a ``GroupWorker``'s entries come from, and how they settle.

Each step does one thing, in this order of priority: settle failed calls, deliver
failed entries whose back-off is over (XCLAIM to ourselves), take over entries another
consumer abandoned (XAUTOCLAIM), re-read our own pending list after a (re)start, and
read new entries (XREADGROUP ``>``) while at most one batch waits for a lane. Acks
ride in the same round trip as the next read; a dead letter is one MULTI.

New entries are read through ``GroupReads``, which the consumers of one group on
several streams share: one XREADGROUP names all their streams, so a hundred streams
cost one command and one connection per round, not a hundred (bench/consume.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import redis
import redis.asyncio

from .. import wire
from ..backoff import wait_or_stop
from ..conf import BrokerConfig
from ..connection import is_cluster, pack_commands
from ..exceptions import MalformedEntry
from ..naming import dead_letter_name, prefixed, reply_record_name
from ..requests import request_info
from ..wire import decode_entry_parts
from . import policy
from .message import StreamMessage
from .registry import StreamConsumerSpec
from .worker import BURST_POLL, RETRIED_ERRORS, ConsumerWorker, describe

logger = logging.getLogger("redis_broker.consumers")

#: Longest wait (milliseconds) of a shared read that some of its consumers are not in:
#: they join the next read this soon, not a whole BLOCK_MS later. Also how often the
#: streams of waiting consumers are looked at while others' backlogs keep reads busy.
SHORT_BLOCK_MS = 10
#: Entries a round of reads that may not wait asks for at most, counting a full batch
#: per stream it names: a reply of 100 entries is decoded while it is still in the CPU's
#: cache, one of 1,000 costs 50 % more per entry (bench/consume.py, 1/10/100 streams).
ROUND_ENTRIES = 100
#: Conversations of their own (reclaim scans, pending counts, leaving the group) the
#: consumers sharing reads hold at a time, each on a pooled connection.
TURNS = 4


class GroupReads:
    """The reads of new entries (XREADGROUP ``>``) of the stream consumers of one group.

    The runner gives one to the consumers of this process that share a group name and a
    batch size (on a cluster, also a hash slot: one command reaches one node), so their
    reads go out as rounds, one in flight at a time, each one XREADGROUP naming several
    streams after the acks of their consumers, in one round trip. A hundred streams
    then cost about what one does per entry, and one connection rather than one each
    (bench/consume.py, 1/10/100 streams; redis-py's pool allows 100 connections, so a
    read each used to fail 100 consumers with "Too many connections").

    A consumer that may wait (``block``) stays asked until entries come for it or its
    time is up, so idle consumers cost nothing per round. While nobody has a backlog,
    a round names every waiting stream and blocks: for the time asked when every
    consumer is waiting (no other can want to join meanwhile), else for at most
    ``SHORT_BLOCK_MS``. Consumers that may not wait (burst mode, reads ahead) are served
    in turn, ``ROUND_ENTRIES`` worth of streams per round, with the waiting streams
    looked at every ``SHORT_BLOCK_MS`` meanwhile.

    After a full batch, a consumer whose lanes have nothing waiting gets its next batch
    asked for at once, before it decodes this one, so Redis prepares it meanwhile (read
    ahead; bench/consume.py). At most one batch is read ahead per consumer, and none
    once it is asked to stop.
    """

    def __init__(self, group: str, consumer: str, count: int) -> None:
        self.group, self.consumer, self.count = group, consumer, count
        self.members: set[GroupWorker] = set()
        #: Consumers whose last read found fewer entries than a batch.
        self._drained: set[GroupWorker] = set()
        # Reads asked for and not answered yet, in the order asked: of the consumers
        # that may not wait, and of those that may (with when their time is up, event
        # loop time).
        self._hurried: dict[GroupWorker, asyncio.Future[list[policy.RawEntry]]] = {}
        self._waiting: dict[GroupWorker, tuple[float, asyncio.Future[list[policy.RawEntry]]]] = {}
        self._ahead: dict[GroupWorker, asyncio.Future[list[policy.RawEntry]]] = {}
        self._rounds_task: asyncio.Task[None] | None = None
        self._looked_at = 0.0  # when the waiting consumers' streams were last named
        self._expiry = math.inf  # no waiting read's time is up before this
        #: Bounds the consumers' other conversations (group set-up, reclaim scans,
        #: pending counts) to ``TURNS`` at a time: started together, they would otherwise
        #: open a connection each at the same moment.
        self.turn = asyncio.Semaphore(TURNS)
        #: Rounds sent (for tests and benchmarks).
        self.rounds = 0

    def join(self, worker: GroupWorker) -> None:
        """Count ``worker`` in (a round blocks long only when every member waits in it)."""
        self.members.add(worker)

    def leave(self, worker: GroupWorker) -> None:
        """Count ``worker`` out, dropping what it asked for and what was read ahead."""
        self.members.discard(worker)
        self._drained.discard(worker)
        self.forget(worker)

    def forget(self, worker: GroupWorker) -> None:
        """Drop ``worker``'s batch read ahead (after a reconnect its pending list is read
        again from Redis, which then holds those entries) and its unanswered read."""
        waiting = self._waiting.pop(worker, None)
        for future in (
            self._ahead.pop(worker, None),
            self._hurried.pop(worker, None),
            waiting[1] if waiting is not None else None,
        ):
            if future is None:
                continue
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: a dropped read's error is no one's to log

    async def read(self, worker: GroupWorker, block: int | None) -> list[policy.RawEntry]:
        """Return ``worker``'s next new entries: the batch read ahead, or the next round's.

        ``block``: how long (ms) the worker may wait for entries; None: not at all. An
        empty list means nothing came within that time.
        """
        ahead = self._ahead.pop(worker, None)
        if ahead is not None:
            return await ahead
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[policy.RawEntry]] = loop.create_future()
        if block is None:
            self._hurried[worker] = future
        else:
            until = loop.time() + block / 1000
            self._waiting[worker] = (until, future)
            self._expiry = min(self._expiry, until)
        self._start()
        return await future

    def _start(self) -> None:
        """Start sending rounds, unless they are being sent."""
        if self._rounds_task is None:
            self._rounds_task = asyncio.get_running_loop().create_task(self._rounds())

    def reading_ahead(self, worker: GroupWorker) -> bool:
        """Return True while ``worker``'s next batch is being read ahead."""
        ahead = self._ahead.get(worker)
        return ahead is not None and not ahead.done()

    def ahead_of(self, worker: GroupWorker) -> asyncio.Future[list[policy.RawEntry]] | None:
        """Return (and forget) ``worker``'s batch read ahead, if there is one."""
        return self._ahead.pop(worker, None)

    async def _rounds(self) -> None:
        """Send rounds while consumers ask; one in flight at a time."""
        loop = asyncio.get_running_loop()
        try:
            gather = True
            while self._hurried or self._waiting:
                if gather:
                    await asyncio.sleep(0)  # the consumers running in this pass ask too
                now = loop.time()
                if now >= self._expiry:  # some waiting read's time is up: nothing came
                    for worker, (until, future) in list(self._waiting.items()):
                        if until <= now:
                            del self._waiting[worker]
                            if not future.done():
                                future.set_result([])
                    self._expiry = min(
                        (until for until, _ in self._waiting.values()), default=math.inf
                    )
                if not (self._hurried or self._waiting):
                    break
                # Right after a round that read ahead there is nothing to gather.
                gather = not await self._round(now)
        finally:
            self._rounds_task = None

    async def _round(self, now: float) -> bool:
        """Send one round; answer the consumers it read for; return True when it read ahead."""
        named, block = self._choose(now)
        results = await self._send(named, block)
        if results is None:
            return False
        loop = asyncio.get_running_loop()
        later = loop.time()
        ahead: list[GroupWorker] = []
        for worker, entries in results.items():
            future = self._hurried.pop(worker, None)
            if future is None:
                until, future = self._waiting.pop(worker, (0.0, None))
                if future is None:  # forgotten meanwhile
                    continue
                if not entries and until > later:
                    self._waiting[worker] = (until, future)  # still waiting for entries
                    continue
            if future.done():  # its consumer was stopped cold: they stay pending
                continue
            full = len(entries) >= self.count
            (self._drained.discard if full else self._drained.add)(worker)
            future.set_result(entries)
            # Not when a batch read ahead waits for it to take it.
            if full and worker not in self._ahead and worker.may_read_ahead():
                ahead.append(worker)
        for worker in ahead:
            # Outcomes of the calls run so far: their acks ride with the read ahead.
            worker._collect()
            future = loop.create_future()
            self._ahead[worker] = self._hurried[worker] = future
        return bool(ahead)

    def _choose(self, now: float) -> tuple[list[GroupWorker], int | None]:
        """Return the consumers the next round reads for, and its BLOCK (None: none)."""
        if not self._hurried:
            self._looked_at = now
            until = min(until for until, _ in self._waiting.values())
            block = max(1, int((until - now) * 1000))  # BLOCK 0 would wait for ever
            if len(self._waiting) < len(self.members):
                block = min(block, SHORT_BLOCK_MS)
            return list(self._waiting), block
        # Full batches up to ROUND_ENTRIES; streams found drained last time count as one
        # entry, so that a hundred of them ask whether more came in one round.
        named: list[GroupWorker] = []
        budget = ROUND_ENTRIES
        for worker in self._hurried:
            cost = 1 if worker in self._drained else self.count
            if named and cost > budget:
                break
            named.append(worker)
            budget -= cost
        if self._waiting and now - self._looked_at >= SHORT_BLOCK_MS / 1000:
            named += self._waiting  # not blocking: the hurried ones are in this round too
            self._looked_at = now
        return named, None

    async def _send(
        self, workers: list[GroupWorker], block: int | None
    ) -> dict[GroupWorker, list[policy.RawEntry]] | None:
        """Send the acks of ``workers`` and one XREADGROUP naming their streams; return
        each one's entries, or None after failing their reads (each consumer then
        retries as after a failed read of its own)."""
        client = workers[0].client
        assert client is not None
        read: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.count]
        if block is not None:
            read += ["BLOCK", block]
        read += ["STREAMS", *(worker.key for worker in workers), *[">"] * len(workers)]
        acks: dict[GroupWorker, list[bytes]] = {}
        try:
            for worker in workers:
                await worker._flush_replies()  # before its acks: an acked request is answered
                acks[worker], worker._acks = worker._acks, []
            commands = [("XACK", w.key, self.group, *ids) for w, ids in acks.items() if ids]
            commands.append(tuple(read))
            self.rounds += 1
            replies = await exchange(client, commands)
            error = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if error is not None:
                raise error
        except BaseException as exc:
            for worker, ids in acks.items():
                worker._acks[:0] = ids  # not sent, or refused: they ride with the next read
            if isinstance(exc, redis.ResponseError) and policy.is_nogroup(exc) and len(workers) > 1:
                # One of the streams lost its group: read each alone, so that only its
                # consumer learns of it.
                return await self._send_each(workers)
            self._fail(workers, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        by_key = dict(streams_of(replies[-1]))
        return {worker: by_key.get(worker.key_bytes, []) for worker in workers}

    async def _send_each(
        self, workers: list[GroupWorker]
    ) -> dict[GroupWorker, list[policy.RawEntry]] | None:
        """Read each consumer's stream alone (not blocking); fail the reads refused."""
        client = workers[0].client
        assert client is not None
        commands = [
            ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.count)
            + ("STREAMS", worker.key, ">")
            for worker in workers
        ]
        try:
            replies = await exchange(client, commands)
        except BaseException as exc:
            self._fail(workers, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        results: dict[GroupWorker, list[policy.RawEntry]] = {}
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, Exception):
                self._fail([worker], reply)
            else:
                results[worker] = dict(streams_of(reply)).get(worker.key_bytes, [])
        return results

    def _fail(self, workers: list[GroupWorker], exc: BaseException) -> None:
        """Fail the reads of ``workers`` with ``exc`` (cancel them, for a cancellation)."""
        for worker in workers:
            future = self._hurried.pop(worker, None)
            if future is None:
                future = self._waiting.pop(worker, (0.0, None))[1]
            if future is None or future.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)


def _as_mapping(raw: Any) -> Mapping[Any, Any]:
    """Return an entry's fields as a mapping: raw replies give ``[field, value, ...]``."""
    if isinstance(raw, Mapping):
        return raw
    pairs = iter(raw)
    return dict(zip(pairs, pairs, strict=False))


def pending_count(summary: Any) -> int:
    """Return the count of an XPENDING summary: raw (a list) or through redis-py (a dict)."""
    return int(summary["pending"] if isinstance(summary, dict) else summary[0])


def streams_of(reply: Any) -> Iterable[tuple[bytes, list[Any]]]:
    """Return ``(stream, entries)`` pairs of a raw XREADGROUP reply, RESP2 or RESP3.

    RESP3 gives a map (a dict), RESP2 a list of pairs, a cluster pipeline redis-py's
    list; nil (nothing new) is empty. Entries are ``[id, [field, value, ...]]``, or
    ``(id, {field: value})`` through redis-py's callbacks: ``wire`` decodes both.
    """
    if not reply:
        return ()
    if isinstance(reply, dict):
        return cast(Iterable[tuple[bytes, list[Any]]], reply.items())
    return cast(Iterable[tuple[bytes, list[Any]]], reply)


async def exchange(client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write and return their raw replies in order, a refused
    command's ``ResponseError`` in its place.

    A pipeline without redis-py's Python work per command: the commands are packed by
    hiredis when it is installed (the XACK of a batch's ids costs the Python packer
    0.5 us an entry) and no response callback runs (``streams_of`` reads the reply,
    one dict per entry fewer); bench/consume.py. As for a pipeline, a lost connection
    is retried under the client's ``Retry``; a timeout or any other failure disconnects
    the connection, which never goes back to the pool out of step. A cluster client
    gets a pipeline, which routes each command to its node.
    """
    if is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)
    pool: Any = client.connection_pool
    conn: Any = await pool.get_connection()
    try:
        return cast(
            "list[Any]",
            await conn.retry.call_with_retry(
                lambda: _send_and_read(conn, commands), lambda error: conn.disconnect()
            ),
        )
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _send_and_read(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write ``commands`` packed in one buffer and read a reply for each, in order."""
    await conn.send_packed_command(pack_commands(conn, commands))
    replies: list[Any] = []
    try:
        # One deadline for the replies (a blocking read's included: SOCKET_TIMEOUT is
        # longer than BLOCK_MS, check E010), not a timer per reply.
        async with asyncio.timeout(conn.socket_timeout):
            for _ in commands:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except redis.ResponseError as exc:
                    replies.append(exc)
    except TimeoutError as exc:
        raise redis.TimeoutError("Timeout reading from the Redis socket") from exc
    return replies


class GroupWorker(ConsumerWorker):
    """Consume one (stream, group) as one named consumer, until told to stop.

    ``concurrency`` (the command's ``--concurrency``) overrides the spec's value, which
    overrides ``CONSUMERS["CONCURRENCY"]``.
    """

    spec: StreamConsumerSpec
    records_replies = True

    def __init__(
        self,
        spec: StreamConsumerSpec,
        *,
        config: BrokerConfig,
        consumer: str,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        super().__init__(spec, config=config, concurrency=concurrency, burst=burst)
        settings = config.consumers
        self.key = prefixed(config.key_prefix, spec.stream)
        self.dead_letter_key = prefixed(
            config.key_prefix, dead_letter_name(spec.stream, settings.dead_letter_suffix)
        )
        self.group = spec.group
        self.consumer = consumer
        self.batch_size = spec.batch_size or settings.batch_size
        self.claim_idle_ms = settings.claim_idle_ms
        # Scan for abandoned entries twice per CLAIM_IDLE_MS, but not more than every 5 s;
        # a burst run waiting for a dead worker's entries looks every BURST_POLL
        # (``_burst_done``), not while its stream still has entries for it: a scan per
        # stream four times a second is what 100 streams cost more per entry than one
        # (bench/consume.py).
        self.claim_interval = min(settings.claim_idle_ms / 2000, 5.0)
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"
        self._history: bytes | None = b"0"  # cursor in our own pending list; None: done
        self._set_up = False  # True once the group was found or created
        self.key_bytes = self.key.encode()  # as replies name the stream
        #: Where new entries come from; the runner shares one among the consumers of a
        #: group, a worker run alone makes its own.
        self.reads: GroupReads | None = None
        # What the runner found when it joined the group at start (``joined``).
        self._joined = False
        self._consumer_new = False
        self._nothing_pending = False
        self._stop: asyncio.Event | None = None

    def __str__(self) -> str:
        return f"{self.spec.name} ({self.spec.stream}:{self.group})"

    async def run(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        """Consume as ``ConsumerWorker.run`` does, as a member of its ``GroupReads``."""
        if self.reads is None:
            self.reads = GroupReads(self.group, self.consumer, self.batch_size)
        self._stop = stop
        self.reads.join(self)
        try:
            await super().run(client, stop)
        finally:
            self.reads.leave(self)

    def joined(self, *, consumer_new: bool, nothing_pending: bool) -> None:
        """Say that the runner has just created the group and this consumer in it, and
        whether the consumer is new (the default name, <host>-<pid>, always is) and the
        group holds no pending entry. The first set-up then skips XGROUP CREATE, the
        read of its own pending entries (a new consumer has none) and the first reclaim
        scan (nothing to claim): three round trips per stream fewer at start."""
        self._joined = True
        self._consumer_new, self._nothing_pending = consumer_new, nothing_pending

    def may_read_ahead(self) -> bool:
        """Return True when this consumer's next batch may be read before it decodes one:
        its lanes have nothing waiting, it is set up and caught up, and not stopping."""
        return (
            self._ready
            and self._history is None
            and self.lanes is not None
            and not self.lanes.waiting()
            and not (self._stop is not None and self._stop.is_set())
        )

    async def _setup(self) -> None:
        """Create the group if needed, then plan to re-read our own pending entries.

        Calls still in flight stay with the lanes, which ``_dispatch`` asks before it
        hands an entry read again to a second lane. A batch read ahead is dropped: the
        history read hands its entries back.
        """
        assert self.client is not None and self.reads is not None
        self.reads.forget(self)
        history: bytes | None = b"0"
        claim_at = 0.0
        if self._joined:  # the runner has just created it (``joined``)
            self._joined, created = False, False
            if self._consumer_new or self._nothing_pending:
                history = None
            if self._nothing_pending:
                claim_at = time.monotonic() + self.claim_interval
        else:
            async with self.reads.turn:
                created = await policy.ensure_group(
                    self.client, self.key, self.group, self.spec.start
                )
        if created and self._set_up and not self.group_missing:
            # Found missing on reconnecting, not by a read: Redis restarted empty, or a
            # replica that had not caught up with the group was promoted in a failover.
            self.group_missing = True
            logger.warning("%s", policy.group_missing(self.spec.stream, self.group))
        elif created:
            logger.info("%s: created consumer group at %s", self, self.spec.start)
        self._set_up = True
        if self._acks:  # handled before the connection dropped; acks are idempotent
            await self.client.xack(self.key, self.group, *self._acks)
        # After a reconnect or a lost group, Redis is the truth.
        self._acks = []
        self._retries.clear()
        self._history = history
        self._claim_at = claim_at
        self._claim_cursor = b"0-0"
        self._ready = True

    async def _step(self) -> bool:
        """Do the most urgent piece of work; return False when there was nothing to do."""
        assert self.lanes is not None
        try:
            if await self._take_outcomes():
                return True
            now = time.monotonic()
            due = self._retries.next_due()
            if due is not None and due <= now:
                return await self._deliver_retries(now)
            if now >= self._claim_at and await self._reclaim(now):
                return True
            if self._history is not None:
                return await self._read_history()
            if self.lanes.waiting() > self.batch_size:
                # Two batches wait for a lane (one read ahead): read more once calls finish.
                await self._wait_for_progress(self._until_next_due(self.block_ms / 1000))
                return True
            return await self._read_new()
        except redis.ResponseError as exc:
            if policy.is_nogroup(exc):
                raise policy.group_missing(self.spec.stream, self.group) from exc
            raise

    async def _burst_done(self, stop: asyncio.Event) -> bool:
        """Return True once nothing is left: no call, no retry, nothing pending in the group.

        Entries other consumers hold are waited for: a live worker acks them, a dead
        one's are claimed once idle for CLAIM_IDLE_MS. So a cron job's exit 0 means the
        group's work is done.
        """
        if self._busy():
            await self._wait_for_progress(self._until_next_due(BURST_POLL))
            return False
        if self._retries or self._history is not None or self._claim_cursor != b"0-0":
            await wait_or_stop(stop, self._until_next_due(BURST_POLL))
            return False
        assert self.reads is not None
        async with self.reads.turn:
            pending = await self._ack_and_count()
        if pending == 0:
            return True
        # Others hold entries: scan for them often, to claim a dead worker's once idle.
        self._claim_at = min(self._claim_at, time.monotonic() + BURST_POLL)
        await wait_or_stop(stop, self._until_next_due(BURST_POLL))
        return False

    def _until_next_due(self, cap: float) -> float:
        """Return seconds until a retry or a reclaim scan is due, at most ``cap``."""
        return self._until_next_retry(min(cap, max(0.0, self._claim_at - time.monotonic())))

    # -- the sources of entries ---------------------------------------------------------

    async def _read_new(self) -> bool:
        """Read new entries (XREADGROUP ``>``, through ``GroupReads``) and hand them out.

        Acks ride with the read. While a read blocks, calls that finish are settled
        aside, so their acks do not wait for the read to return.
        """
        assert self.reads is not None
        block = (
            None if self.burst else max(1, int(self._until_next_due(self.block_ms / 1000) * 1000))
        )
        if block is not None and self._in_flight:
            # Let the lanes run once before a read that may wait: calls that finish
            # without suspending are then acked by this read, not by a second command.
            await asyncio.sleep(0)
            self._collect()
        # Outputs go in a script on another pooled connection, at the same time as the
        # read: their round trip overlaps it (bench/subscribers.py, outputs).
        flush = asyncio.ensure_future(self._flush_outputs()) if self._outputs else None
        self._blocking(blocking=block is not None)
        try:
            entries = await self.reads.read(self, block)
        finally:
            self._blocking(blocking=False)
            if flush is not None:
                await flush
        self.progress_at = time.monotonic()  # entries or an empty block: the read returned
        self.full_read = len(entries) >= self.batch_size
        if not entries:
            return False
        if self.reads.reading_ahead(self):
            # One pass of the loop writes the read ahead (redis-py sends from a task of
            # its own); decoding before it would leave Redis idle (bench/consume.py).
            await asyncio.sleep(0)
        await self._dispatch(entries, None)
        return True

    async def _drain_reads(self) -> None:
        """After a stop request: hand out the batch read ahead, so it is handled too."""
        ahead = self.reads.ahead_of(self) if self.reads is not None else None
        if ahead is None:
            return
        try:
            entries = await ahead
            if entries:
                await self._dispatch(entries, None)
        except RETRIED_ERRORS as exc:  # then nothing was read, or it stays pending
            logger.debug("%s: the batch read ahead is left to the next start (%s)", self, exc)

    async def _read_history(self) -> bool:
        """Deliver again what this consumer read before a restart or a lost connection."""
        assert self.client is not None and self._history is not None and self.reads is not None
        async with self.reads.turn:
            await self._flush_acks()  # or the history would hand back what was just handled
            reply: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.key: self._history}, self.batch_size
            )
        entries = reply[0][1] if reply else []
        if not entries:
            self._history = None  # caught up: new entries next
            return True
        self._history = entries[-1][0]
        await self._dispatch_with_counts(entries)
        return True

    async def _reclaim(self, now: float) -> bool:
        """Take entries other consumers left pending longer than CLAIM_IDLE_MS.

        First renew our claim on the entries we hold, so that neither we nor another
        worker takes a call that is still running here.
        """
        assert self.client is not None and self.reads is not None
        async with self.reads.turn:
            # Handled entries whose acks still wait for the next read look abandoned
            # after a call that took longer than CLAIM_IDLE_MS: ack them first.
            await self._flush_acks()
            if self._in_flight and self.lanes is not None and self._claim_cursor == b"0-0":
                held = list(self.lanes.holding())
                if held:
                    await policy.renew(
                        self.client,
                        key=self.key,
                        group=self.group,
                        consumer=self.consumer,
                        ids=held,
                    )
            cursor, entries, deleted = await policy.reclaim(
                self.client,
                key=self.key,
                group=self.group,
                consumer=self.consumer,
                min_idle_ms=self.claim_idle_ms,
                cursor=self._claim_cursor,
                count=self.batch_size,
            )
        self._claim_cursor = cursor
        if cursor == b"0-0":
            self._claim_at = now + self.claim_interval
        if deleted:
            self.stats.trimmed += deleted
            logger.warning("%s: %d pending entries were trimmed away; dropped", self, deleted)
        # Our own slow calls look abandoned too; they are still running here.
        running = self._holding(entry_id for entry_id, _ in entries)
        entries = [entry for entry in entries if entry[0] not in running]
        if not entries:
            return False
        self._retries.forget(entry_id for entry_id, _ in entries)  # idle that long: due now
        self.stats.reclaimed += len(entries)
        logger.info("%s: reclaimed %d abandoned entries", self, len(entries))
        await self._dispatch_with_counts(entries)
        return True

    async def _deliver_retries(self, now: float) -> bool:
        assert self.client is not None
        counts, shortest_ms = self._retries.take_due(now, self.batch_size)
        entries = await policy.claim_for_retry(
            self.client,
            key=self.key,
            group=self.group,
            consumer=self.consumer,
            # Idle time counts from the delivery, the delay from the failure after it;
            # 10 % slack absorbs clock granularity.
            min_idle_ms=int(shortest_ms * 0.9),
            ids=list(counts),
        )
        await self._dispatch(entries, counts)
        return True

    async def _dispatch_with_counts(self, entries: Sequence[policy.RawEntry]) -> None:
        """Dispatch entries read again, with their delivery counts from one XPENDING."""
        assert self.client is not None
        counts = await policy.delivery_counts(
            self.client, self.key, self.group, self.consumer, [e[0] for e in entries if e[1]]
        )
        await self._dispatch(entries, counts)

    # -- handling ---------------------------------------------------------------------

    async def _dispatch(
        self, entries: Sequence[policy.RawEntry], counts: Mapping[bytes, int] | None
    ) -> None:
        """Decode entries and hand them to the lanes; settle the ones that cannot run."""
        stream, group, max_deliveries = self.spec.stream, self.group, self.retry.max_deliveries
        build_message, decode = StreamMessage.build, decode_entry_parts
        # Entries read again (our history after a reconnect) may still be running here.
        holding = self._holding(e[0] for e in entries) if counts is not None else ()
        items: list[tuple[bytes, StreamMessage]] = []
        append = items.append
        requests = False  # whether any entry has headers, so may be a request
        for entry_id, raw in entries:
            if entry_id in holding:
                continue
            if not raw:  # pending, but its body was trimmed from the stream
                self._acks.append(entry_id)
                self.stats.trimmed += 1
                continue
            count = 1 if counts is None else counts.get(entry_id, 1)
            try:
                type_, data, event_id, published_at, headers, fields = decode(raw)
            except MalformedEntry as exc:
                logger.error(
                    "%s: entry %s is malformed (%s); dead-lettering it",
                    *(self, entry_id.decode(), exc),
                )
                await self._copy_to_dead_letters(
                    entry_id, policy.text_fields(_as_mapping(raw)), describe(exc), count
                )
                continue
            # Plain arguments, not starred tuples: this runs once per entry.
            message = build_message(
                entry_id.decode(), stream, group, data, type_, event_id, headers,
                published_at, count, fields,
            )  # fmt: skip
            if count > max_deliveries:
                # Delivered again and again without a verdict: the worker died on it.
                logger.error(
                    "%s: entry %s (event %s) reached delivery %d without being settled; "
                    "dead-lettering it",
                    *(self, message.id, event_id, count),
                )
                await self._dead_letter(entry_id, message, "delivered too often without an outcome")
                continue
            if headers:
                requests = True
            append((entry_id, message))
        if counts is not None and requests:
            items = await self._answer_from_records(items)
        self._submit(items, requests=requests)

    async def _answer_from_records(
        self, items: list[tuple[bytes, StreamMessage]]
    ) -> list[tuple[bytes, StreamMessage]]:
        """Answer redelivered requests whose reply was already sent, without a second call.

        A worker that died after replying and before acking leaves the request pending;
        whoever takes it finds the reply's record and sends it again.
        """
        assert self.client is not None
        again = [
            (entry_id, info)
            for entry_id, message in items
            if message.delivery_count > 1
            and not self.spec.no_reply
            and (info := request_info(message.headers)) is not None
        ]
        if not again:
            return items
        pipe = self.client.pipeline(transaction=False)
        for _, info in again:
            pipe.get(prefixed(self.prefix, reply_record_name(info.correlation_id)))
        answered: set[bytes] = set()
        for (entry_id, info), record in zip(again, await pipe.execute(), strict=True):
            if record is None:
                continue
            inbox, _, fields = wire.reply_text(record).partition("\n")
            self._replies.append(
                (inbox, wire.loads(fields, what="reply record"), info.correlation_id)
            )
            self._acks.append(entry_id)
            answered.add(entry_id)
            logger.info("%s: answered request %s from its reply record", self, info.correlation_id)
        return [item for item in items if item[0] not in answered]

    async def _dead_letter(
        self, entry_id: bytes, message: StreamMessage, error: str, trace: str = ""
    ) -> None:
        await self._copy_to_dead_letters(
            entry_id, message.fields, error, message.delivery_count, trace
        )

    async def _copy_to_dead_letters(
        self, entry_id: bytes, fields: Mapping[str, str], error: str, count: int, trace: str = ""
    ) -> None:
        assert self.client is not None
        await policy.dead_letter(
            self.client,
            key=self.key,
            dead_letter_key=self.dead_letter_key,
            group=self.group,
            entry_id=entry_id,
            fields=fields,
            stream=self.spec.stream,
            error=error,
            delivery_count=count,
            maxlen=self.maxlen,
            traceback=trace,
        )
        self._count_dead_letter()

    async def _flush_acks(self) -> None:
        assert self.client is not None
        await self._flush_replies()  # before the acks: an acked request is answered
        await self._flush_outputs()
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                await self.client.xack(self.key, self.group, *acks)
            except BaseException:
                self._acks[:0] = acks
                raise

    async def _ack_and_count(self) -> int:
        """Flush the acks and return how many entries of the group are pending, in one
        round trip (a burst run's last question, asked once per stream)."""
        assert self.client is not None
        await self._flush_replies()
        await self._flush_outputs()
        acks, self._acks = self._acks, []
        commands: list[tuple[Any, ...]] = [("XACK", self.key, self.group, *acks)] if acks else []
        commands.append(("XPENDING", self.key, self.group))
        try:
            replies = await exchange(self.client, commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except BaseException:
            self._acks[:0] = acks
            raise
        return pending_count(replies[-1])

    async def _flush_outputs(self) -> None:
        """Ack the entries that have an output and append the outputs, in one atomic step."""
        if not self._outputs:
            return
        assert self.client is not None and self.output_key is not None
        outputs, self._outputs = self._outputs, {}
        try:
            await policy.ack_and_append(
                self.client,
                key=self.key,
                group=self.group,
                output_key=self.output_key,
                outputs=outputs,
                maxlen=self.maxlen,
            )
        except BaseException:
            self._outputs.update(outputs)
            raise

    async def _final_flush(self) -> None:
        """Ack what was handled, then leave the group if this consumer holds nothing."""
        await super()._final_flush()
        if self.client is None or self.reads is None:
            return
        try:
            async with asyncio.timeout(2.0), self.reads.turn:
                await policy.leave_group(self.client, self.key, self.group, self.consumer)
        except Exception as exc:  # the group may be gone, or Redis: nothing to undo
            logger.debug("%s: did not leave the group (%s)", self, exc)

    async def pending(self) -> int:
        """Return how many entries of this group are pending (all its consumers)."""
        assert self.client is not None
        summary = await self.client.xpending(self.key, self.group)
        return int(summary["pending"])

    def trace_names(self) -> dict[str, str]:
        """Return the stream and group that name this consumer's ``process`` spans."""
        return {"destination": self.spec.stream, "group": self.group}

    def metric_labels(self) -> tuple[str, str]:
        """Return ``(stream, group)``, as the stream is named in the decorator."""
        return self.spec.stream, self.spec.group

    def describe_for_heartbeat(self) -> dict[str, Any]:
        """Return what the process's heartbeat says about this consumer."""
        return {
            **super().describe_for_heartbeat(),
            "stream": self.spec.stream,
            "group": self.group,
        }
