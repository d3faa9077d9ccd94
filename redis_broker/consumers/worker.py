"""The loop of one consumer: read a (stream, group), call the handler, ack, retry, dead-letter.

One ``GroupWorker`` runs per registered consumer, as a task on the runner's event loop.
Each step does one thing, in this order of priority: deliver failed entries whose
back-off is over (XCLAIM to ourselves), take over entries another consumer abandoned
(XAUTOCLAIM), re-read our own pending list after a (re)start, and read new entries
(XREADGROUP ``>``). Acks of a batch ride in the same round trip as the next read.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
from django.db import connections

from ..conf import BrokerConfig
from ..connection import CONNECTION_ERRORS
from ..exceptions import ConsumerGroupMissing, MalformedEntry, Reject
from ..naming import prefixed
from ..wire import decode_entry
from . import policy
from .message import StreamMessage
from .registry import StreamConsumerSpec

logger = logging.getLogger("redis_broker.consumers")

#: A sync handler call slower than this (seconds) lets the batch use one more thread.
SLOW_CALL = 0.001
#: Longest pause between attempts while Redis cannot be reached; keeps resumption < 5 s.
MAX_RECONNECT_DELAY = 1.0

#: Anything a Redis call may raise: a lost connection or a refused command.
REDIS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.RedisError)

Item = tuple[bytes, StreamMessage]
Failure = tuple[Item, Exception]


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
            config.key_prefix, spec.stream + settings.dead_letter_suffix
        )
        self.group = spec.group
        self.consumer = consumer
        self.batch_size = spec.batch_size or settings.batch_size
        self.concurrency = concurrency or spec.concurrency or settings.concurrency
        self.block_ms = settings.block_ms
        self.claim_idle_ms = settings.claim_idle_ms
        # Scan for abandoned entries twice per CLAIM_IDLE_MS, but not more than every 5 s.
        self.claim_interval = min(settings.claim_idle_ms / 2000, 5.0)
        self.retry = policy.RetryPolicy(
            settings.max_deliveries, settings.retry_backoff_ms, settings.retry_backoff_max_ms
        )
        self.maxlen = config.stream_maxlen
        self.is_async = spec.is_async
        self.burst = burst
        self.stats = ConsumerStats()
        self.client: redis.asyncio.Redis | None = None
        self._acks: list[bytes] = []
        self._retry_heap: list[tuple[float, bytes, int]] = []  # (due, id, delay ms)
        self._retry_counts: dict[bytes, int] = {}  # id -> deliveries so far
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"
        self._history: bytes | None = b"0"  # cursor in our own pending list; None: done
        self._ready = False
        self._group_warned = False
        self._executor: ThreadPoolExecutor | None = None
        self._cancel_threads = threading.Event()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (or, in burst mode, until nothing is left).

        Never dies on Redis trouble: connection errors are logged once and retried with
        a back-off of at most ``MAX_RECONNECT_DELAY``; anything else unexpected is
        logged with its traceback and retried too. Cancellation propagates.
        """
        self.client = client
        self._cancel_threads.clear()  # a burst run may start the worker again
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if not self._ready:
                        await self._setup()
                    worked = await self._step()
                except ConsumerGroupMissing as exc:
                    if not self._group_warned:
                        logger.warning("%s", exc)
                        self._group_warned = True
                    self._forget_deliveries()
                    self._ready = False
                    continue
                except CONNECTION_ERRORS as exc:
                    failures += 1
                    self._ready = False
                    delay = min(0.1 * 2 ** (failures - 1), MAX_RECONNECT_DELAY)
                    log = logger.warning if failures == 1 else logger.debug
                    log("%s: Redis unreachable (%s); retrying every %.1f s", self, exc, delay)
                    await wait_or_stop(stop, delay)
                    continue
                except Exception:
                    failures += 1
                    self._ready = False
                    delay = min(0.1 * 2 ** (failures - 1), MAX_RECONNECT_DELAY)
                    logger.exception("%s: unexpected error; retrying in %.1f s", self, delay)
                    await wait_or_stop(stop, delay)
                    continue
                if failures:
                    logger.warning("%s: Redis answers again; resuming", self)
                    failures = 0
                self._group_warned = False  # one warning per lost group, not per process
                if not worked:
                    if self.burst:
                        if self._idle():
                            return
                        await wait_or_stop(stop, self._until_next_due(0.05))
        finally:
            await self._final_flush()
            self._cancel_threads.set()
            executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

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
        """Drop per-entry state: after a reconnect or a lost group, Redis is the truth."""
        self._acks = []
        self._retry_heap.clear()
        self._retry_counts.clear()
        self._history = b"0"
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"

    async def _step(self) -> bool:
        """Do the most urgent piece of work; return False when there was nothing to do."""
        try:
            now = time.monotonic()
            if self._retry_heap and self._retry_heap[0][0] <= now:
                return await self._deliver_retries(now)
            if now >= self._claim_at and await self._reclaim(now):
                return True
            if self._history is not None:
                return await self._read_history()
            return await self._read_new()
        except redis.ResponseError as exc:
            if policy.is_nogroup(exc):
                raise policy.group_missing(self.spec.stream, self.group) from exc
            raise

    def _idle(self) -> bool:
        return not self._retry_heap and self._history is None and self._claim_cursor == b"0-0"

    def _until_next_due(self, cap: float) -> float:
        """Return seconds until a retry or a reclaim scan is due, at most ``cap``."""
        now = time.monotonic()
        wait = min(cap, max(0.0, self._claim_at - now))
        if self._retry_heap:
            wait = min(wait, max(0.0, self._retry_heap[0][0] - now))
        return wait

    # -- the four sources of entries ----------------------------------------------------

    def _block_ms(self) -> int | None:
        if self.burst:
            return None
        return max(1, int(self._until_next_due(self.block_ms / 1000) * 1000))

    async def _fetch(self, acks: list[bytes], block: int | None) -> list[policy.RawEntry]:
        """Read new entries (XREADGROUP ``>``), sending ``acks`` in the same round trip."""
        assert self.client is not None
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
        return cast(Any, reply)[0][1] if reply else []

    async def _read_new(self) -> bool:
        acks, self._acks = self._acks, []
        entries = await self._fetch(acks, self._block_ms())
        if not entries:
            return False
        await self._process(entries, None)
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
        counts = await policy.delivery_counts(
            self.client, self.key, self.group, self.consumer, [e[0] for e in entries if e[1]]
        )
        await self._process(entries, counts)
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
        if not entries:
            return False
        for entry_id, _ in entries:
            self._retry_counts.pop(entry_id, None)  # ours, idle past CLAIM_IDLE_MS: due now
        self._retry_heap = [r for r in self._retry_heap if r[1] in self._retry_counts]
        heapq.heapify(self._retry_heap)
        self.stats.reclaimed += len(entries)
        logger.info("%s: reclaimed %d abandoned entries", self, len(entries))
        counts = await policy.delivery_counts(
            self.client, self.key, self.group, self.consumer, [e[0] for e in entries if e[1]]
        )
        await self._process(entries, counts)
        return True

    async def _deliver_retries(self, now: float) -> bool:
        assert self.client is not None
        due: list[tuple[bytes, int]] = []
        while self._retry_heap and self._retry_heap[0][0] <= now and len(due) < self.batch_size:
            _, entry_id, delay_ms = heapq.heappop(self._retry_heap)
            due.append((entry_id, delay_ms))
        counts = {entry_id: self._retry_counts.pop(entry_id, 0) + 1 for entry_id, _ in due}
        entries = await policy.claim_for_retry(
            self.client,
            key=self.key,
            group=self.group,
            consumer=self.consumer,
            # Idle time counts from the delivery, the delay from the failure after it;
            # 10 % slack absorbs clock granularity.
            min_idle_ms=int(min(delay for _, delay in due) * 0.9),
            ids=[entry_id for entry_id, _ in due],
        )
        await self._process(entries, counts)
        return True

    # -- handling ---------------------------------------------------------------------

    async def _process(
        self, entries: Sequence[policy.RawEntry], counts: Mapping[bytes, int] | None
    ) -> None:
        """Decode a batch, run the handler on it, and settle every entry."""
        stream, group, max_deliveries = self.spec.stream, self.group, self.retry.max_deliveries
        build_message = StreamMessage.build
        items: list[Item] = []
        for entry_id, raw in entries:
            if not raw:  # pending, but its body was trimmed from the stream
                self._acks.append(entry_id)
                self.stats.trimmed += 1
                continue
            count = 1 if counts is None else counts.get(entry_id, 1)
            try:
                decoded = decode_entry(raw)
            except MalformedEntry as exc:
                logger.error(
                    "%s: entry %s is malformed (%s); dead-lettering it", self, entry_id, exc
                )
                await self._dead_letter(entry_id, policy.text_fields(raw), describe(exc), count)
                continue
            if count > max_deliveries:
                # Delivered again and again without a verdict: the worker died on it.
                logger.error(
                    "%s: entry %s (event %s) reached delivery %d without being settled; "
                    "dead-lettering it",
                    self,
                    entry_id,
                    decoded.event_id,
                    count,
                )
                await self._dead_letter(
                    entry_id, decoded.fields, "delivered too often without an outcome", count
                )
                continue
            message = build_message(
                entry_id.decode(),
                stream,
                group,
                decoded.data,
                decoded.type,
                decoded.event_id,
                decoded.headers,
                decoded.published_at,
                count,
                decoded.fields,
            )
            items.append((entry_id, message))
        if not items:
            return
        if self.is_async:
            failures = await self._run_async(items)
        else:
            failures = await self._run_threads(items)
        self.stats.processed += len(items) - len(failures)
        for item, error in failures:
            await self._settle_failure(item, error)

    async def _run_async(self, items: list[Item]) -> list[Failure]:
        """Await the handler on each item, at most ``concurrency`` at a time.

        The current task works through the batch itself; helper tasks are only started
        if a call actually suspends, so handlers that never wait cost no task at all.
        """
        handler = self.spec.func
        acks = self._acks
        failures: list[Failure] = []
        queue = deque(items)

        async def work() -> None:
            while queue:
                item = queue.popleft()
                try:
                    await handler(item[1])
                except Exception as exc:
                    failures.append((item, exc))
                else:
                    acks.append(item[0])

        limit = min(self.concurrency, len(items))
        if limit <= 1:
            await work()
            return failures
        helpers: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()

        def spawn() -> None:
            helpers.extend(loop.create_task(work()) for _ in range(min(limit - 1, len(queue))))

        # Runs only once this task yields to the loop, i.e. when a handler call suspends.
        handle = loop.call_soon(spawn)
        try:
            await work()
        except BaseException:
            for helper in helpers:
                helper.cancel()
            raise
        finally:
            handle.cancel()
        if helpers:
            await asyncio.gather(*helpers)
        return failures

    async def _run_threads(self, items: list[Item]) -> list[Failure]:
        """Run the sync handler on the items in threads, with Django's connection hygiene."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix=f"redis-broker-{self.spec.name}"
            )
        batch = _ThreadBatch(
            items,
            self.spec.func,
            min(self.concurrency, len(items)),
            self._executor,
            self._cancel_threads,
        )
        await batch.run()
        self._acks.extend(batch.acked)
        return batch.failures

    async def _settle_failure(self, item: Item, exc: Exception) -> None:
        entry_id, message = item
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
            self._retry_counts[entry_id] = message.delivery_count
            heapq.heappush(self._retry_heap, (time.monotonic() + delay / 1000, entry_id, delay))

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

    async def _final_flush(self) -> None:
        """Ack what was handled; on failure say so (those entries will be delivered again)."""
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

    async def pending(self) -> int:
        """Return how many entries of this group are pending (all its consumers)."""
        assert self.client is not None
        summary = await self.client.xpending(self.key, self.group)
        return int(summary["pending"])


class _ThreadBatch:
    """One batch of a sync handler, spread over up to ``limit`` pool threads.

    It starts on one thread and adds another only when a call is slow (I/O-bound
    handlers), so trivial handlers pay one thread hand-off per batch, not per entry.
    """

    def __init__(
        self,
        items: list[Item],
        handler: Callable[[StreamMessage], Any],
        limit: int,
        executor: ThreadPoolExecutor,
        cancel: threading.Event,
    ) -> None:
        self.queue = deque(items)
        self.handler = handler
        self.limit = limit
        self.executor = executor
        self.cancel = cancel
        self.acked: list[bytes] = []
        self.failures: list[Failure] = []
        self._lock = threading.Lock()
        self._running = 0
        self._started = 0
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()

    async def run(self) -> None:
        """Return once every item was handled (or a cold stop cut the batch short)."""
        with self._lock:
            self._spawn()
        try:
            await self._done
        except asyncio.CancelledError:
            self.cancel.set()  # threads finish their current call and take no more
            raise

    def _spawn(self) -> None:
        self._running += 1
        self._started += 1
        self.executor.submit(self._work)

    def _work(self) -> None:
        handler, queue, acked, failures = self.handler, self.queue, self.acked, self.failures
        # Django's close_old_connections(), as channels' database_sync_to_async runs it
        # around each call, so no call starts or ends with a connection that broke or
        # outlived CONN_MAX_AGE. It costs ~3 us a call, mostly listing this thread's
        # connections; the list is fixed for a pool thread, so it is taken once here.
        # (The check after one call is also the check before the next.)
        databases = connections.all()

        def close_old_connections() -> None:
            for connection in databases:
                connection.close_if_unusable_or_obsolete()

        try:
            close_old_connections()
            while not self.cancel.is_set():
                try:
                    item = queue.popleft()
                except IndexError:
                    break
                started = time.perf_counter()
                try:
                    handler(item[1])
                except Exception as exc:
                    failures.append((item, exc))
                else:
                    acked.append(item[0])
                finally:
                    close_old_connections()
                if (
                    self.queue
                    and self._started < self.limit
                    and time.perf_counter() - started > SLOW_CALL
                ):
                    with self._lock:
                        if self._started < self.limit:
                            self._spawn()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set."""
    if seconds <= 0 or stop.is_set():
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
