"""The loop of one consumer: read a (stream, group), hand entries to lanes, settle outcomes.

One ``GroupWorker`` runs per registered consumer, as a task on the runner's event loop.
It reads entries and hands them to the handler's lanes (``execution.py``), which run up
to ``concurrency`` calls at once; outcomes come back as calls finish and are settled:
acked, scheduled for a retry, or dead-lettered. Reading goes on while calls run, so one
stuck handler holds one lane and never the consumer.

Each step does one thing, in this order of priority: settle failed calls, deliver
failed entries whose back-off is over (XCLAIM to ourselves), take over entries another
consumer abandoned (XAUTOCLAIM), re-read our own pending list after a (re)start, and
read new entries (XREADGROUP ``>``) while fewer than a batch wait for a lane. Acks ride
in the same round trip as the next read; while that read blocks, outcomes are settled
on another pooled connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

from ..conf import BrokerConfig
from ..connection import CONNECTION_ERRORS
from ..exceptions import ConsumerGroupMissing, MalformedEntry, Reject
from ..naming import dead_letter_name, prefixed
from ..wire import decode_entry_parts
from . import policy
from .execution import Failure, Lanes, lanes_for
from .message import StreamMessage
from .registry import StreamConsumerSpec

logger = logging.getLogger("redis_broker.consumers")

#: Longest pause between attempts while Redis cannot be reached; keeps resumption < 5 s.
MAX_RECONNECT_DELAY = 1.0
#: Longest pause between checks of a burst run waiting for entries other workers hold.
BURST_POLL = 0.25
#: Entry ids named at most in one log line about abandoned entries.
MAX_IDS_LOGGED = 20

#: Anything a Redis call may raise: a lost connection or a refused command.
REDIS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.RedisError)


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one consumer since the worker started."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    reclaimed: int = 0


def describe(exc: BaseException) -> str:
    """Return ``Type: message`` for an exception, the dead-letter ``error`` field."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


class GroupWorker:
    """Consume one (stream, group) as one named consumer, until told to stop.

    ``concurrency`` (the command's ``--concurrency``) overrides the spec's value, which
    overrides ``CONSUMERS["CONCURRENCY"]``.
    """

    def __init__(
        self,
        spec: StreamConsumerSpec,
        *,
        config: BrokerConfig,
        consumer: str,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        settings = config.consumers
        self.spec = spec
        self.key = prefixed(config.key_prefix, spec.stream)
        self.dead_letter_key = prefixed(
            config.key_prefix, dead_letter_name(spec.stream, settings.dead_letter_suffix)
        )
        self.group = spec.group
        self.consumer = consumer
        self.batch_size = spec.batch_size or settings.batch_size
        self.concurrency = concurrency or spec.concurrency or settings.concurrency
        self.block_ms = settings.block_ms
        self.claim_idle_ms = settings.claim_idle_ms
        # Scan for abandoned entries twice per CLAIM_IDLE_MS, but not more than every 5 s;
        # a burst run waiting for a dead worker's entries looks more often.
        self.claim_interval = min(settings.claim_idle_ms / 2000, 5.0)
        if burst:
            self.claim_interval = min(self.claim_interval, BURST_POLL)
        self.retry = policy.RetryPolicy(
            settings.max_deliveries, settings.retry_backoff_ms, settings.retry_backoff_max_ms
        )
        self.maxlen = config.stream_maxlen
        self.is_async = spec.is_async
        self.burst = burst
        self.stats = ConsumerStats()
        self.client: redis.asyncio.Redis | None = None
        self.lanes: Lanes[StreamMessage] | None = None
        self._acks: list[bytes] = []
        self._failures: list[Failure[StreamMessage]] = []
        self._in_flight = 0  # entries handed to the lanes whose outcome is not collected
        self._retries = policy.RetrySchedule()
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"
        self._history: bytes | None = b"0"  # cursor in our own pending list; None: done
        self._ready = False
        self._group_warned = False
        self._progress = asyncio.Event()
        self._blocked = False  # inside a blocking read: outcomes are settled aside
        self._settler: asyncio.Task[None] | None = None
        self._slow_warned: set[bytes] = set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (or, in burst mode, until nothing is left).

        Never dies on Redis trouble: connection errors are logged once and retried with
        a back-off of at most ``MAX_RECONNECT_DELAY``; anything else unexpected is
        logged with its traceback and retried too. After ``stop``, calls in flight are
        finished and settled. Cancellation (a cold stop) abandons them: their entries
        stay pending for another worker, and the log names them.
        """
        self.client = client
        self._progress = asyncio.Event()
        self.lanes = lanes_for(
            self.spec.func,
            is_async=self.is_async,
            limit=self.concurrency,
            notify=self._notify,
            name=f"redis-broker-{self.spec.name}",
        )
        try:
            await self._consume(stop)
            await self._finish_in_flight()
        finally:
            if self._settler is not None:
                self._settler.cancel()
            abandoned = self.lanes.abandon()
            if abandoned:
                self._log_abandoned(abandoned)
            await self._final_flush()

    async def _consume(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if not self._ready:
                    await self._setup()
                worked = await self._step()
                if not worked and self.burst and await self._burst_done(stop):
                    return
            except ConsumerGroupMissing as exc:
                if not self._group_warned:
                    logger.warning("%s", exc)
                    self._group_warned = True
                self._forget_deliveries()
                self._ready = False
                continue
            except Exception as exc:
                failures += 1
                self._ready = False
                delay = min(0.1 * 2 ** (failures - 1), MAX_RECONNECT_DELAY)
                if isinstance(exc, CONNECTION_ERRORS):
                    log = logger.warning if failures == 1 else logger.debug
                    log("%s: Redis unreachable (%s); retrying every %.1f s", self, exc, delay)
                else:
                    logger.exception("%s: unexpected error; retrying in %.1f s", self, delay)
                await wait_or_stop(stop, delay)
                continue
            if failures:
                logger.warning("%s: Redis answers again; resuming", self)
                failures = 0
            self._group_warned = False  # one warning per lost group, not per process

    def __str__(self) -> str:
        return f"{self.spec.name} ({self.spec.stream}:{self.group})"

    async def _setup(self) -> None:
        """Create the group if needed, then plan to re-read our own pending entries."""
        assert self.client is not None
        created = await policy.ensure_group(self.client, self.key, self.group, self.spec.start)
        if created:
            logger.info("%s: created consumer group at %s", self, self.spec.start)
        if self._acks:  # handled before the connection dropped; acks are idempotent
            await self.client.xack(self.key, self.group, *self._acks)
        self._forget_deliveries()
        self._ready = True

    def _forget_deliveries(self) -> None:
        """Drop per-entry state: after a reconnect or a lost group, Redis is the truth.

        Calls still in flight stay with the lanes, which ``_dispatch`` asks before it
        hands an entry read again to a second lane.
        """
        self._acks = []
        self._retries.clear()
        self._history = b"0"
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"

    async def _step(self) -> bool:
        """Do the most urgent piece of work; return False when there was nothing to do."""
        assert self.lanes is not None
        self._progress.clear()  # outcomes from here on wake a wait below
        self._collect()
        try:
            if self._failures:
                await self._settle_failures()
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

    def _busy(self) -> bool:
        """Return True while calls run or wait, or outcomes wait to be settled."""
        return bool(self._in_flight or self._failures)

    async def _burst_done(self, stop: asyncio.Event) -> bool:
        """Return True once nothing is left: no call, no retry, nothing pending in the group.

        Entries other consumers hold are waited for: a live worker acks them, a dead
        one's are claimed once idle for CLAIM_IDLE_MS. So a cron job's exit 0 means the
        group's work is done.
        """
        assert self.client is not None
        if self._busy():
            await self._wait_for_progress(self._until_next_due(BURST_POLL))
            return False
        if self._retries or self._history is not None or self._claim_cursor != b"0-0":
            await wait_or_stop(stop, self._until_next_due(BURST_POLL))
            return False
        await self._flush_acks()
        summary = await self.client.xpending(self.key, self.group)
        if int(summary["pending"]) == 0:
            return True
        await wait_or_stop(stop, self._until_next_due(BURST_POLL))
        return False

    def _until_next_due(self, cap: float) -> float:
        """Return seconds until a retry or a reclaim scan is due, at most ``cap``."""
        now = time.monotonic()
        wait = min(cap, max(0.0, self._claim_at - now))
        due = self._retries.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - now))
        return wait

    async def _wait_for_progress(self, seconds: float) -> None:
        """Wait until a call finishes, or ``seconds``."""
        assert self.lanes is not None
        if seconds <= 0:
            return
        self.lanes.watched = True
        try:
            if not self.lanes.has_outcomes():
                async with asyncio.timeout(seconds):  # no task, unlike wait_for on 3.11
                    await self._progress.wait()
        except TimeoutError:
            pass
        finally:
            self.lanes.watched = False

    # -- the sources of entries ---------------------------------------------------------

    def _block_ms(self) -> int | None:
        if self.burst:
            return None
        return max(1, int(self._until_next_due(self.block_ms / 1000) * 1000))

    async def _fetch(self, acks: list[bytes], block: int | None) -> list[policy.RawEntry]:
        """Read new entries (XREADGROUP ``>``), sending ``acks`` in the same round trip.

        While a read blocks, calls that finish are settled aside, so their acks do not
        wait for the read to return.
        """
        assert self.client is not None and self.lanes is not None
        self._blocked = self.lanes.watched = block is not None
        try:
            if acks:
                pipe = self.client.pipeline(transaction=False)
                pipe.xack(self.key, self.group, *acks)
                pipe.xreadgroup(self.group, self.consumer, {self.key: ">"}, self.batch_size, block)
                reply = (await pipe.execute())[-1]
            else:
                reply = await self.client.xreadgroup(
                    self.group, self.consumer, {self.key: ">"}, self.batch_size, block
                )
        except BaseException:
            self._acks[:0] = acks  # not sent: keep them for the next round trip
            raise
        finally:
            self._blocked = self.lanes.watched = False
        return cast(Any, reply)[0][1] if reply else []

    async def _read_new(self) -> bool:
        block = self._block_ms()
        if block is not None and self._in_flight:
            # Let the lanes run once before a read that may wait: calls that finish
            # without suspending are then acked by this read, not by a second command.
            await asyncio.sleep(0)
            self._collect()
        acks, self._acks = self._acks, []
        entries = await self._fetch(acks, block)
        if not entries:
            return False
        await self._dispatch(entries, None)
        return True

    async def _read_history(self) -> bool:
        """Deliver again what this consumer read before a restart or a lost connection."""
        assert self.client is not None and self._history is not None
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
        """Take entries other consumers left pending longer than CLAIM_IDLE_MS."""
        assert self.client is not None
        # Handled entries whose acks still wait for the next read look abandoned after
        # a batch that took longer than CLAIM_IDLE_MS: ack them first.
        await self._flush_acks()
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
        if entries and self._in_flight:
            holding = self.lanes.holding() if self.lanes is not None else set()
            entries = [entry for entry in entries if entry[0] not in holding]
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
        """Decode entries and queue them for the lanes; settle the ones that cannot run."""
        assert self.lanes is not None
        stream, group, max_deliveries = self.spec.stream, self.group, self.retry.max_deliveries
        build_message = StreamMessage.build
        # Entries read again (our history after a reconnect) may still be running here.
        holding = self.lanes.holding() if counts is not None and self._in_flight else ()
        items: list[tuple[bytes, StreamMessage]] = []
        for entry_id, raw in entries:
            if entry_id in holding:
                continue
            if not raw:  # pending, but its body was trimmed from the stream
                self._acks.append(entry_id)
                self.stats.trimmed += 1
                continue
            count = 1 if counts is None else counts.get(entry_id, 1)
            try:
                type_, data, event_id, published_at, headers, fields = decode_entry_parts(raw)
            except MalformedEntry as exc:
                logger.error(
                    "%s: entry %s is malformed (%s); dead-lettering it",
                    self,
                    entry_id.decode(),
                    exc,
                )
                await self._dead_letter(entry_id, policy.text_fields(raw), describe(exc), count)
                continue
            if count > max_deliveries:
                # Delivered again and again without a verdict: the worker died on it.
                logger.error(
                    "%s: entry %s (event %s) reached delivery %d without being settled; "
                    "dead-lettering it",
                    self,
                    entry_id.decode(),
                    event_id,
                    count,
                )
                await self._dead_letter(
                    entry_id, fields, "delivered too often without an outcome", count
                )
                continue
            message = build_message(
                entry_id.decode(),
                stream,
                group,
                data,
                type_,
                event_id,
                headers,
                published_at,
                count,
                fields,
            )
            items.append((entry_id, message))
        if items:
            self._in_flight += len(items)
            self.lanes.submit(items)

    def _notify(self) -> None:
        """Called on the loop when calls finished: wake the loop, or settle aside."""
        self._progress.set()
        if self._blocked and self._settler is None:
            self._settler = asyncio.get_running_loop().create_task(self._settle_aside())

    async def _settle_aside(self) -> None:
        """Settle outcomes while the main loop waits in a blocking read (own connection)."""
        try:
            self._collect()
            await self._flush_acks()
            await self._settle_failures()
        except REDIS_ERRORS as exc:
            logger.debug("%s: settling deferred to the next read (%s)", self, exc)
        finally:
            self._settler = None

    def _collect(self) -> None:
        """Take the lanes' outcomes: successes join the next ack, failures wait to settle."""
        assert self.lanes is not None
        if not self.lanes.has_outcomes():
            return
        done, _results, failed = self.lanes.collect()
        self._acks += done
        self._failures += failed
        self._in_flight -= len(done) + len(failed)
        self.stats.processed += len(done)

    async def _settle_failures(self) -> None:
        failures, self._failures = self._failures, []
        for index, (entry_id, message, error) in enumerate(failures):
            try:
                await self._settle_failure(entry_id, message, error)
            except BaseException:
                self._failures[:0] = failures[index:]  # not settled: try again later
                raise

    async def _settle_failure(
        self, entry_id: bytes, message: StreamMessage, exc: Exception
    ) -> None:
        self.stats.failed += 1
        where = f"{self}: entry {message.id} (event {message.event_id})"
        if isinstance(exc, Reject):
            logger.warning("%s was rejected: %s; dead-lettering it", where, exc)
            await self._dead_letter(entry_id, message.fields, describe(exc), message.delivery_count)
        elif self.retry.exhausted(message.delivery_count):
            logger.error(
                "%s failed on delivery %d of %d; dead-lettering it",
                where,
                message.delivery_count,
                self.retry.max_deliveries,
                exc_info=exc,
            )
            await self._dead_letter(entry_id, message.fields, describe(exc), message.delivery_count)
        else:
            delay = self.retry.delay_ms(message.delivery_count)
            logger.warning(
                "%s failed on delivery %d of %d; retrying in %d ms",
                where,
                message.delivery_count,
                self.retry.max_deliveries,
                delay,
                exc_info=exc,
            )
            self._retries.add(entry_id, message.delivery_count, delay, time.monotonic())

    async def _dead_letter(
        self, entry_id: bytes, fields: Mapping[str, str], error: str, count: int
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
        )
        self.stats.dead_lettered += 1

    async def _flush_acks(self) -> None:
        assert self.client is not None
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                await self.client.xack(self.key, self.group, *acks)
            except BaseException:
                self._acks[:0] = acks
                raise

    # -- stopping -----------------------------------------------------------------------

    async def _finish_in_flight(self) -> None:
        """After a stop request: let every delivered entry finish, and settle it."""
        while True:
            self._progress.clear()
            self._collect()
            if self._failures:
                try:
                    await self._settle_failures()
                except REDIS_ERRORS as exc:
                    logger.warning("%s: could not settle failed entries (%s)", self, exc)
                    self._failures = []  # they stay pending and are delivered again
            if not self._in_flight:
                return
            await self._wait_for_progress(self.block_ms / 1000)

    def _log_abandoned(self, ids: list[bytes]) -> None:
        shown = ", ".join(entry_id.decode() for entry_id in ids[:MAX_IDS_LOGGED])
        more = f" and {len(ids) - MAX_IDS_LOGGED} more" if len(ids) > MAX_IDS_LOGGED else ""
        logger.error(
            "%s: abandoned %d in-flight entries (%s%s); they stay pending and are "
            "reclaimed by another worker after CLAIM_IDLE_MS",
            self,
            len(ids),
            shown,
            more,
        )

    async def _final_flush(self) -> None:
        """Ack what was handled; on failure say so (those entries will be delivered again)."""
        if self.lanes is not None:
            self._collect()
        if not self._acks or self.client is None:
            return
        acks, self._acks = self._acks, []
        try:
            await asyncio.wait_for(self.client.xack(self.key, self.group, *acks), 2.0)
        except REDIS_ERRORS as exc:
            logger.warning(
                "%s: could not ack %d handled entries (%s); they will be delivered again",
                self,
                len(acks),
                exc,
            )

    # -- what the runner reports -------------------------------------------------------

    async def pending(self) -> int:
        """Return how many entries of this group are pending (all its consumers)."""
        assert self.client is not None
        summary = await self.client.xpending(self.key, self.group)
        return int(summary["pending"])

    def in_flight(self) -> int:
        """Return how many entries were handed to the lanes and have no outcome yet."""
        return self._in_flight

    def oldest_call(self) -> float | None:
        """Return the monotonic start of the longest-running handler call, if any."""
        call = self.lanes.oldest_call() if self.lanes is not None else None
        return call[1] if call is not None else None

    def warn_slow_calls(self, threshold: float) -> None:
        """Log, once per call, each handler call running longer than ``threshold`` s."""
        if self.lanes is None:
            return
        now = time.monotonic()
        running = dict(self.lanes.calls)  # a copy: threads change it
        still = set()
        for entry_id, started in running.values():
            still.add(entry_id)
            if now - started >= threshold and entry_id not in self._slow_warned:
                self._slow_warned.add(entry_id)
                logger.warning(
                    "%s: the handler has been running on entry %s for %.0f s "
                    "(concurrency %d; other entries keep flowing)",
                    self,
                    entry_id.decode(),
                    now - started,
                    self.concurrency,
                )
        self._slow_warned &= still


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set."""
    if seconds <= 0 or stop.is_set():
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
