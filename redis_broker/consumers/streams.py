"""Stream consumer groups: where a ``GroupWorker``'s entries come from, and how they settle.

Each step does one thing, in this order of priority: settle failed calls, deliver
failed entries whose back-off is over (XCLAIM to ourselves), take over entries another
consumer abandoned (XAUTOCLAIM), re-read our own pending list after a (re)start, and
read new entries (XREADGROUP ``>``) while at most one batch waits for a lane. Acks
ride in the same round trip as the next read; a dead letter is one MULTI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis
import redis.asyncio

from .. import wire
from ..backoff import wait_or_stop
from ..conf import BrokerConfig
from ..exceptions import MalformedEntry
from ..naming import dead_letter_name, prefixed, reply_record_name
from ..requests import request_info
from ..wire import decode_entry_parts
from . import policy
from .message import StreamMessage
from .registry import StreamConsumerSpec
from .worker import BURST_POLL, ConsumerWorker, describe

logger = logging.getLogger("redis_broker.consumers")


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
        # a burst run waiting for a dead worker's entries looks more often.
        self.claim_interval = min(settings.claim_idle_ms / 2000, 5.0)
        if burst:
            self.claim_interval = min(self.claim_interval, BURST_POLL)
        self._claim_at = 0.0
        self._claim_cursor = b"0-0"
        self._history: bytes | None = b"0"  # cursor in our own pending list; None: done
        self._set_up = False  # True once the group was found or created

    def __str__(self) -> str:
        return f"{self.spec.name} ({self.spec.stream}:{self.group})"

    async def _setup(self) -> None:
        """Create the group if needed, then plan to re-read our own pending entries.

        Calls still in flight stay with the lanes, which ``_dispatch`` asks before it
        hands an entry read again to a second lane.
        """
        assert self.client is not None
        created = await policy.ensure_group(self.client, self.key, self.group, self.spec.start)
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
        self._history = b"0"
        self._claim_at = 0.0
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
        await self._flush_acks()
        if await self.pending() == 0:
            return True
        await wait_or_stop(stop, self._until_next_due(BURST_POLL))
        return False

    def _until_next_due(self, cap: float) -> float:
        """Return seconds until a retry or a reclaim scan is due, at most ``cap``."""
        return self._until_next_retry(min(cap, max(0.0, self._claim_at - time.monotonic())))

    # -- the sources of entries ---------------------------------------------------------

    async def _fetch(self, acks: list[bytes], block: int | None) -> list[policy.RawEntry]:
        """Read new entries (XREADGROUP ``>``), sending ``acks`` in the same round trip.

        While a read blocks, calls that finish are settled aside, so their acks do not
        wait for the read to return.
        """
        assert self.client is not None and self.lanes is not None
        # Outputs go in a script on another pooled connection, at the same time as the
        # read: their round trip overlaps it (bench/subscribers.py, outputs).
        flush = asyncio.ensure_future(self._flush_outputs()) if self._outputs else None
        self._blocking(blocking=block is not None)
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
            self._blocking(blocking=False)
            if flush is not None:
                await flush
        entries: list[policy.RawEntry] = cast(Any, reply)[0][1] if reply else []
        self.progress_at = time.monotonic()  # entries or an empty block: the read returned
        self.full_read = len(entries) >= self.batch_size
        return entries

    async def _read_new(self) -> bool:
        block = (
            None if self.burst else max(1, int(self._until_next_due(self.block_ms / 1000) * 1000))
        )
        if block is not None and self._in_flight:
            # Let the lanes run once before a read that may wait: calls that finish
            # without suspending are then acked by this read, not by a second command.
            await asyncio.sleep(0)
            self._collect()
        await self._flush_replies()  # before the acks ride with the read
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
        """Take entries other consumers left pending longer than CLAIM_IDLE_MS.

        First renew our claim on the entries we hold, so that neither we nor another
        worker takes a call that is still running here.
        """
        assert self.client is not None
        # Handled entries whose acks still wait for the next read look abandoned after
        # a call that took longer than CLAIM_IDLE_MS: ack them first.
        await self._flush_acks()
        if self._in_flight and self.lanes is not None and self._claim_cursor == b"0-0":
            held = list(self.lanes.holding())
            if held:
                await policy.renew(
                    self.client, key=self.key, group=self.group, consumer=self.consumer, ids=held
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
        build_message = StreamMessage.build
        # Entries read again (our history after a reconnect) may still be running here.
        holding = self._holding(e[0] for e in entries) if counts is not None else ()
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
                    *(self, entry_id.decode(), exc),
                )
                await self._copy_to_dead_letters(
                    entry_id, policy.text_fields(raw), describe(exc), count
                )
                continue
            message = build_message(
                *(entry_id.decode(), stream, group, data, type_, event_id, headers),
                *(published_at, count, fields),
            )
            if count > max_deliveries:
                # Delivered again and again without a verdict: the worker died on it.
                logger.error(
                    "%s: entry %s (event %s) reached delivery %d without being settled; "
                    "dead-lettering it",
                    *(self, message.id, event_id, count),
                )
                await self._dead_letter(entry_id, message, "delivered too often without an outcome")
                continue
            items.append((entry_id, message))
        if counts is not None and items:
            items = await self._answer_from_records(items)
        self._submit(items)

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
        if self.client is None:
            return
        try:
            async with asyncio.timeout(2.0):
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
