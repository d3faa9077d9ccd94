"""Delivery policy: group lifecycle, retry back-off, dead letters and reclaiming.

Each function is one Redis conversation with plain arguments (keys already prefixed),
so the worker loop reads as a sequence of decisions rather than of commands.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import redis
import redis.asyncio

from .. import wire
from ..connection import LuaScript
from ..exceptions import ConsumerGroupMissing, Reject
from ..publishing import trim_args

#: One entry as redis-py returns it: (id, fields), fields empty when the body was trimmed.
RawEntry: TypeAlias = tuple[bytes, Mapping[bytes, bytes] | None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failing entry is delivered again."""

    max_deliveries: int
    backoff_ms: int
    backoff_max_ms: int

    def delay_ms(self, delivery_count: int) -> int:
        """Return the wait before delivery ``delivery_count + 1``: doubled each time, capped."""
        exponent = max(0, delivery_count - 1)
        # min() first keeps 2**exponent from growing without bound on a poison entry.
        return int(min(self.backoff_ms * 2 ** min(exponent, 32), self.backoff_max_ms))

    def exhausted(self, delivery_count: int) -> bool:
        """Return True when a failure at ``delivery_count`` should dead-letter the entry."""
        return delivery_count >= self.max_deliveries

    def retry_delay_ms(self, error: Exception, delivery_count: int) -> int | None:
        """Return the wait before the next delivery after ``error``, or None to dead-letter.

        ``Reject`` dead-letters at once; any other error, once ``MAX_DELIVERIES`` is reached.
        """
        if isinstance(error, Reject) or self.exhausted(delivery_count):
            return None
        return self.delay_ms(delivery_count)


class RetrySchedule:
    """When each of our failed entries is due for another delivery (a min-heap by due time).

    It also remembers how many deliveries each scheduled entry had, because a retry is an
    XCLAIM to ourselves, which does not report the count.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, bytes, int]] = []  # (due, entry id, delay ms)
        self._counts: dict[bytes, int] = {}  # entry id -> deliveries so far

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(self, entry_id: bytes, delivery_count: int, delay_ms: int, now: float) -> None:
        """Plan delivery ``delivery_count + 1`` of ``entry_id`` in ``delay_ms``."""
        self._counts[entry_id] = delivery_count
        heapq.heappush(self._heap, (now + delay_ms / 1000, entry_id, delay_ms))

    def next_due(self) -> float | None:
        """Return the monotonic time of the earliest retry, or None when none is planned."""
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float, limit: int) -> tuple[dict[bytes, int], int]:
        """Remove up to ``limit`` due entries; return their next delivery counts and the
        shortest of their delays (the XCLAIM idle threshold)."""
        counts: dict[bytes, int] = {}
        shortest = 0
        while self._heap and self._heap[0][0] <= now and len(counts) < limit:
            _, entry_id, delay_ms = heapq.heappop(self._heap)
            counts[entry_id] = self._counts.pop(entry_id, 0) + 1
            shortest = delay_ms if len(counts) == 1 else min(shortest, delay_ms)
        return counts, shortest

    def forget(self, ids: Iterable[bytes]) -> None:
        """Drop planned retries of ``ids`` (taken over by a reclaim: due now)."""
        dropped = [entry_id for entry_id in ids if self._counts.pop(entry_id, None) is not None]
        if dropped:
            self._heap = [row for row in self._heap if row[1] in self._counts]
            heapq.heapify(self._heap)

    def clear(self) -> None:
        """Forget everything: after a reconnect or a lost group, Redis is the truth."""
        self._heap.clear()
        self._counts.clear()


def is_missing(exc: BaseException) -> bool:
    """Return True when Redis says a stream, or its group, is not there (or not a stream).

    ``no such key`` (XINFO on a deleted key), ``NOGROUP`` and ``WRONGTYPE`` (the name now
    holds another type): what a reader of a vanished stream gets.
    """
    if not isinstance(exc, redis.ResponseError):
        return False
    message = str(exc).lower()
    return "no such key" in message or "wrongtype" in message or is_nogroup(exc)


def is_nogroup(exc: BaseException) -> bool:
    """Return True for Redis's answers when the stream or the group does not exist.

    A read blocked while the key vanished (FLUSHALL, DEL) gets ``UNBLOCKED ... no longer
    exists`` instead of ``NOGROUP``; both mean the group must be created again.
    """
    if not isinstance(exc, redis.ResponseError):
        return False
    text = str(exc)
    return "NOGROUP" in text or ("UNBLOCKED" in text and "no longer exists" in text)


def group_missing(stream: str, group: str) -> ConsumerGroupMissing:
    """Return the exception that explains a NOGROUP reply and what to check."""
    return ConsumerGroupMissing(
        f"Consumer group {group!r} of stream {stream!r} is gone: Redis restarted without "
        "persistence, was flushed, or evicted the key, or a failover promoted a replica "
        "that had not caught up with the group. Re-creating it at the start of the "
        "stream (entries already handled are delivered again). If this repeats, check the "
        "server's persistence and maxmemory-policy (streams need noeviction or a "
        "volatile-* policy)."
    )


async def ensure_group(client: redis.asyncio.Redis, key: str, group: str, start: str) -> bool:
    """Create ``group`` on ``key`` (and the stream, MKSTREAM); return False when it existed."""
    try:
        await client.xgroup_create(key, group, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


def text_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """Return an entry's fields as text, replacing bytes that are not UTF-8 (for dead letters)."""
    try:
        return wire.fields_as_text(raw)
    except ValueError:
        return {
            wire.reply_text(k, "replace"): wire.reply_text(v, "replace") for k, v in raw.items()
        }


async def dead_letter(
    client: redis.asyncio.Redis,
    *,
    key: str,
    dead_letter_key: str,
    group: str,
    entry_id: bytes,
    fields: Mapping[str, str],
    stream: str,
    error: str,
    delivery_count: int,
    maxlen: int | None,
    traceback: str = "",
) -> None:
    """Copy an entry to the dead-letter stream and ack it, in one MULTI/EXEC.

    Atomic, so an entry is never both dead-lettered and still pending (which would
    dead-letter it twice after a crash) nor acked without its copy.
    """
    copy = wire.dead_letter_fields(
        fields,
        original_stream=stream,
        original_id=entry_id.decode(),
        error=error,
        delivery_count=delivery_count,
        traceback=traceback,
    )
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(dead_letter_key, cast(Any, copy), **trim_args(maxlen))
        pipe.xack(key, group, entry_id)
        await pipe.execute()


async def delivery_counts(
    client: redis.asyncio.Redis, key: str, group: str, consumer: str, ids: Sequence[bytes]
) -> dict[bytes, int]:
    """Return the delivery counts of ``ids`` (pending with ``consumer``) in one XPENDING."""
    if not ids:
        return {}
    low, high = min(ids, key=wire.entry_id_key), max(ids, key=wire.entry_id_key)
    rows = await client.xpending_range(
        key, group, min=low, max=high, count=len(ids) + 1000, consumername=consumer
    )
    wanted = set(ids)
    return {
        row["message_id"]: int(row["times_delivered"])
        for row in rows
        if row["message_id"] in wanted
    }


async def reclaim(
    client: redis.asyncio.Redis,
    *,
    key: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    cursor: bytes,
    count: int,
) -> tuple[bytes, list[RawEntry], int]:
    """Take entries idle longer than ``min_idle_ms`` from any consumer (XAUTOCLAIM).

    Returns the next cursor (``b"0-0"`` once the pending list was scanned), the claimed
    entries, and how many pending ids pointed at entries already trimmed away (Redis
    drops those from the pending list itself).
    """
    reply = await client.xautoclaim(
        key, group, consumer, min_idle_time=min_idle_ms, start_id=cursor, count=count
    )
    next_cursor = reply[0]
    entries = list(reply[1])
    deleted = len(reply[2]) if len(reply) > 2 else 0
    return next_cursor, entries, deleted


# Remove the consumer from its group, but only if it holds no pending entry (deleting a
# consumer drops its pending entries from the group).
_LEAVE_GROUP = LuaScript("""
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
""")


async def leave_group(client: redis.asyncio.Redis, key: str, group: str, consumer: str) -> bool:
    """Remove a stopping consumer from its group when it holds nothing; return True if so.

    Request callers then see at once that it no longer answers (``NoResponders``).
    """
    return int(await _LEAVE_GROUP.arun(client, [key], [group, consumer])) >= 0


async def renew(
    client: redis.asyncio.Redis, *, key: str, group: str, consumer: str, ids: Sequence[bytes]
) -> None:
    """Reset the idle time of entries this consumer is handling (XCLAIM ... JUSTID).

    A live worker renews its claim on what it holds, so other workers reclaim an entry
    only from a consumer that stopped renewing: dead, or paused longer than
    CLAIM_IDLE_MS. JUSTID leaves the delivery count alone.
    """
    await client.xclaim(
        key, group, consumer, min_idle_time=0, message_ids=cast(Any, list(ids)), justid=True
    )


async def claim_for_retry(
    client: redis.asyncio.Redis,
    *,
    key: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    ids: Sequence[bytes],
) -> list[RawEntry]:
    """Deliver our own failed entries again (XCLAIM to ourselves, counting a delivery).

    ``min_idle_ms`` is the back-off: an entry another worker reclaimed meanwhile has a
    fresh idle time and stays with it.
    """
    reply = await client.xclaim(
        key, group, consumer, min_idle_time=min_idle_ms, message_ids=cast(Any, list(ids))
    )
    return cast(list[RawEntry], list(reply))


# XACK each entry; append its output only when the XACK acknowledged it. Two workers
# racing on a reclaimed entry both run this, and only the first one's XACK returns 1,
# so each input yields exactly one output. ARGV: group, maxlen ("" for none),
# published_at, then per entry: id, data, event id, headers (four short arguments: the
# client's cost is mostly packing arguments, bench/subscribers.py).
_ACK_AND_APPEND = LuaScript(f"""
local appended = 0
for i = 4, #ARGV, 4 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then{wire.output_script_body("2")}
    appended = appended + 1
  end
end
return appended
""")


def output_args(
    maxlen: int | None, outputs: Mapping[Any, wire.OutputParts], keys: Mapping[Any, Any]
) -> list[Any]:
    """Return the arguments of an output script after its first one: maxlen, the time,
    then for each output the ``keys`` value of its id (what the script settles) and its
    three parts."""
    args: list[Any] = ["" if maxlen is None else maxlen, wire.now_iso()]
    for output_id, parts in outputs.items():
        args += [keys[output_id], *parts]
    return args


async def ack_and_append(
    client: redis.asyncio.Redis,
    *,
    key: str,
    group: str,
    output_key: str,
    outputs: Mapping[bytes, wire.OutputParts],
    maxlen: int | None,
) -> int:
    """Ack entries and append each one's output in one atomic step; return how many went out.

    An entry already acked (another worker handled it first) gets no second output.
    """
    args = [group, *output_args(maxlen, outputs, {i: i for i in outputs})]
    return int(await _ACK_AND_APPEND.arun(client, [key, output_key], args))
