"""List consumers: a Redis list as an at-least-once work queue.

An item is never only in this process's memory. Taking it moves it atomically
(``LMOVE``, ``BLMOVE`` while the list is empty) from the list to this worker's
*processing list* ``<list>:processing:<consumer>``, and counts the delivery in the hash
``<list>:deliveries``; it leaves the processing list only when it is settled:

* handled -> ``LREM`` (with ``output=``, the ``LREM`` and the output's ``XADD`` are one
  script: an item yields one output);
* failed -> retried after the same back-off as stream entries (it waits in the
  processing list meanwhile); ``Reject``, or ``MAX_DELIVERIES`` reached -> copied to the
  dead-letter stream ``<list><DEAD_LETTER_SUFFIX>`` and removed, in one MULTI;
* its worker died -> the live workers of the list notice that the dead one's
  heartbeat expired and move its processing list back to the head of the list;
* its worker stops -> finished and removed, or moved back to the list: a warm or a
  cold stop leaves nothing in the processing list.

Every worker of a list is in the set ``<list>:consumers``, which is how the others find
processing lists to return.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any, cast

from .. import wire
from ..backoff import wait_or_stop
from ..conf import BrokerConfig
from ..connection import LuaScript
from ..exceptions import MalformedEntry
from ..naming import (
    dead_letter_name,
    deliveries_name,
    list_consumers_name,
    prefixed,
    processing_list_name,
    worker_key,
)
from ..publishing import trim_args
from . import policy
from .message import StreamMessage
from .registry import ListConsumerSpec
from .worker import BURST_POLL, ConsumerWorker, describe

logger = logging.getLogger("redis_broker.consumers")

# Take up to ARGV[1] items: move each to the processing list, count its delivery.
_TAKE = LuaScript("""
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  taken[#taken + 1] = item
  taken[#taken + 1] = redis.call('HINCRBY', KEYS[3], redis.sha1hex(item), 1)
end
return taken
""")

# Remove handled items from the processing list and forget their delivery counts.
# ARGV[1] is the number of items without output, listed from ARGV[4]; then, as for
# policy.ack_and_append, maxlen (ARGV[2]), published_at (ARGV[3]) and per item with an
# output: the item, data, event id, headers. An output is appended only if its item
# was still there to remove, so an item yields one output.
_SETTLE = LuaScript(f"""
local plain = tonumber(ARGV[1])
for i = 4, 3 + plain do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[i]))
  end
end
for i = 4 + plain, #ARGV, 4 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[i])){wire.output_script_body("3")}
  end
end
""")

# Move every item of a processing list back to the head of its list, oldest first.
_RETURN = LuaScript("""
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
return moved
""")


def item_digest(item: bytes) -> str:
    """Return the field of ``item`` in the deliveries hash (what ``redis.sha1hex`` gives)."""
    return hashlib.sha1(item, usedforsecurity=False).hexdigest()


class ListWorker(ConsumerWorker):
    """Consume one Redis list as one named consumer, until told to stop."""

    spec: ListConsumerSpec

    def __init__(
        self,
        spec: ListConsumerSpec,
        *,
        config: BrokerConfig,
        consumer: str,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        super().__init__(spec, config=config, concurrency=concurrency, burst=burst)
        settings = config.consumers
        prefix = config.key_prefix
        self.list = spec.list
        self.prefix = prefix
        self.consumer = consumer
        self.key = prefixed(prefix, spec.list)
        self.processing_key = prefixed(prefix, processing_list_name(spec.list, consumer))
        self.consumers_key = prefixed(prefix, list_consumers_name(spec.list))
        self.deliveries_key = prefixed(prefix, deliveries_name(spec.list))
        self.dead_letter_key = prefixed(
            prefix, dead_letter_name(spec.list, settings.dead_letter_suffix)
        )
        self.batch_size = spec.batch_size or settings.batch_size
        # Look for dead workers' processing lists as often as streams look for idle entries.
        self.reap_interval = min(settings.claim_idle_ms / 2000, 5.0)
        self._items: dict[bytes, bytes] = {}  # lane id -> the item, until settled
        self._ids = (b"%d" % n for n in itertools.count())
        self._reap_at = 0.0

    def __str__(self) -> str:
        return f"{self.spec.name} (list {self.list})"

    # -- the sources of items -----------------------------------------------------------

    async def _setup(self) -> None:
        """Join the list's consumers; hand out again what our processing list holds."""
        assert self.client is not None
        await self.client.sadd(self.consumers_key, self.consumer)
        self._retries.clear()
        held = set(self._items.values())  # still running here (a reconnect, not a restart)
        listed = cast(list[bytes], await self.client.lrange(self.processing_key, 0, -1))
        leftover = [item for item in listed if item not in held]
        if leftover:
            pipe = self.client.pipeline(transaction=False)
            for item in leftover:
                pipe.hincrby(self.deliveries_key, item_digest(item), 1)
            counts = await pipe.execute()
            logger.info("%s: handling %d items left in its processing list", self, len(leftover))
            await self._dispatch(list(zip(leftover, counts, strict=True)))
        self._ready = True

    async def _step(self) -> bool:
        """Do the most urgent piece of work; return False when there was nothing to do."""
        assert self.lanes is not None
        if await self._take_outcomes():
            return True
        now = time.monotonic()
        due = self._retries.next_due()
        if due is not None and due <= now:
            await self._deliver_retries(now)
            return True
        if now >= self._reap_at:
            self._reap_at = now + self.reap_interval
            if await self._return_dead_workers_items():
                return True
        if self.lanes.waiting() > self.batch_size:
            await self._wait_for_progress(self._until_next_retry(self.block_ms / 1000))
            return True
        return await self._take()

    async def _take(self) -> bool:
        """Take up to a batch of items (one script); block for one while the list is empty."""
        assert self.client is not None
        await self._flush_acks()
        reply: list[Any] = await _TAKE.arun(
            self.client, [self.key, self.processing_key, self.deliveries_key], [self.batch_size]
        )
        self.full_read = len(reply) >= 2 * self.batch_size
        if reply:
            await self._dispatch(list(zip(reply[::2], map(int, reply[1::2]), strict=True)))
            return True
        if self.burst:
            return False
        assert self.lanes is not None
        wait = min(self.block_ms / 1000, self._reap_at - time.monotonic())
        self._blocking(blocking=True)
        try:
            timeout = cast(int, max(self._until_next_retry(wait), 0.01))  # BLMOVE takes seconds
            item = await self.client.blmove(self.key, self.processing_key, timeout, "LEFT", "RIGHT")
        finally:
            self._blocking(blocking=False)
        self.progress_at = time.monotonic()  # the blocking read returned
        if item is None:
            return False
        count = await self.client.hincrby(self.deliveries_key, item_digest(cast(bytes, item)), 1)
        await self._dispatch([(cast(bytes, item), int(count))])
        return True

    async def _deliver_retries(self, now: float) -> None:
        """Hand out again the failed items whose back-off is over (still in our list)."""
        assert self.client is not None
        counts, _ = self._retries.take_due(now, self.batch_size)
        items = [
            (lane_id, self._items.pop(lane_id)) for lane_id in counts if lane_id in self._items
        ]
        pipe = self.client.pipeline(transaction=False)
        for _, item in items:
            pipe.hincrby(self.deliveries_key, item_digest(item), 1)
        totals = await pipe.execute()
        await self._dispatch([(item, int(n)) for (_, item), n in zip(items, totals, strict=True)])

    async def _return_dead_workers_items(self) -> int:
        """Move the processing lists of this list's dead workers back to the list."""
        assert self.client is not None
        names = [wire.reply_text(n) for n in await self.client.smembers(self.consumers_key)]
        others = [name for name in names if name != self.consumer]
        if not others:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for name in others:
            pipe.exists(worker_key(self.prefix, name))
        alive = await pipe.execute()
        moved = 0
        for name, is_alive in zip(others, alive, strict=True):
            if is_alive:
                continue
            moved += await self._return_items(
                prefixed(self.prefix, processing_list_name(self.list, name))
            )
            await self.client.srem(self.consumers_key, name)
            if moved:
                logger.warning(
                    "%s: worker %s is gone (no heartbeat); returned %d of its items to the list",
                    *(self, name, moved),
                )
        return moved

    async def _return_items(self, processing_key: str) -> int:
        assert self.client is not None
        return int(await _RETURN.arun(self.client, [processing_key, self.key], []))

    async def _burst_done(self, stop: asyncio.Event) -> bool:
        """Return True once the list is empty and nothing is in flight or waiting a retry."""
        if self._busy():
            await self._wait_for_progress(self._until_next_retry(BURST_POLL))
            return False
        if self._retries:
            await wait_or_stop(stop, self._until_next_retry(BURST_POLL))
            return False
        await self._flush_acks()
        return True

    # -- handling -------------------------------------------------------------------------

    async def _dispatch(self, taken: Iterable[tuple[bytes, int]]) -> None:
        """Decode items and hand them to the lanes; dead-letter the ones that cannot run."""
        build_message = StreamMessage.build
        items: list[tuple[bytes, StreamMessage]] = []
        for item, count in taken:
            lane_id = next(self._ids)
            self._items[lane_id] = item
            try:
                decoded = wire.decode_element(item)
            except MalformedEntry as exc:
                logger.error("%s: an item is malformed (%s); dead-lettering it", self, exc)
                fields = {wire.DATA: wire.reply_text(item, "replace")}  # as it was, readable
                await self._move_to_dead_letters(lane_id, fields, describe(exc), count)
                continue
            message = build_message(
                *("", self.list, "", decoded.data, decoded.type, decoded.event_id),
                *(decoded.headers, decoded.published_at, count, {}),
            )
            if count > self.retry.max_deliveries:
                logger.error(
                    "%s: an item (event %s) reached delivery %d without being settled; "
                    "dead-lettering it",
                    *(self, decoded.event_id, count),
                )
                await self._dead_letter(lane_id, message, "delivered too often without an outcome")
                continue
            items.append((lane_id, message))
        self._submit(items)

    async def _dead_letter(
        self, entry_id: bytes, message: StreamMessage, error: str, trace: str = ""
    ) -> None:
        """Dead-letter the item as it was pushed: decoded again from the raw item, since
        a typed handler's ``message.data`` is the converted object (``typed_handler``)."""
        fields = wire.decode_element(self._items[entry_id]).fields()
        await self._move_to_dead_letters(entry_id, fields, error, message.delivery_count, trace)

    async def _move_to_dead_letters(
        self, lane_id: bytes, fields: dict[str, str], error: str, count: int, trace: str = ""
    ) -> None:
        """Copy the item to the dead-letter stream and remove it, in one MULTI/EXEC."""
        assert self.client is not None
        item = self._items.pop(lane_id)
        copy = wire.dead_letter_fields(
            fields,
            original_stream=self.list,
            original_id="",
            error=error,
            delivery_count=count,
            traceback=trace,
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter_key, copy, **trim_args(self.maxlen))  # type: ignore[arg-type]
            pipe.lrem(self.processing_key, 1, cast(str, item))
            pipe.hdel(self.deliveries_key, item_digest(item))
            await pipe.execute()
        self._count_dead_letter()

    async def _flush_acks(self) -> None:
        """Remove handled items from the processing list (appending outputs), one script."""
        await self._flush_replies()  # before the removal: a settled request is answered
        if not self._acks and not self._outputs:
            return
        assert self.client is not None
        acks, outputs = self._acks, self._outputs
        self._acks, self._outputs = [], {}
        maxlen_and_outputs = policy.output_args(self.maxlen, outputs, self._items)
        plain = [self._items[lane_id] for lane_id in acks]
        args = [len(plain), *maxlen_and_outputs[:2], *plain, *maxlen_and_outputs[2:]]
        try:
            keys = [self.processing_key, self.deliveries_key, self.output_key or self.key]
            await _SETTLE.arun(self.client, keys, args)
        except BaseException:
            self._acks[:0], self._outputs = acks, {**outputs, **self._outputs}
            raise
        for lane_id in itertools.chain(acks, outputs):
            del self._items[lane_id]

    # -- stopping and reporting -----------------------------------------------------------

    async def _final_flush(self) -> None:
        """Settle what was handled, then move whatever is left back to the list."""
        await super()._final_flush()
        if self.client is None:
            return
        try:
            async with asyncio.timeout(2.0):
                returned = await self._return_items(self.processing_key)
                await self.client.srem(self.consumers_key, self.consumer)
        except Exception as exc:
            logger.warning(
                "%s: could not return its items to the list (%s); the others will once "
                "its heartbeat expires",
                *(self, exc),
            )
            return
        if returned:
            logger.warning("%s: returned %d unfinished items to the list", self, returned)

    async def pending(self) -> int:
        """Return how many items wait in the list."""
        assert self.client is not None
        return int(await self.client.llen(self.key))

    def trace_names(self) -> dict[str, str]:
        """Return the list that names this consumer's ``process`` spans."""
        return {"destination": self.spec.list}

    def metric_labels(self) -> tuple[str, str]:
        """Return ``(list, "")``: a list has no group."""
        return self.spec.list, ""

    def describe_for_heartbeat(self) -> dict[str, Any]:
        """Return what the process's heartbeat says about this consumer."""
        return {**super().describe_for_heartbeat(), "list": self.list}
