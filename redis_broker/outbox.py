"""The database outbox: model events waiting for Redis, and the relay that sends them.

This module owns what happens to the ``OutboxEvent`` rows once written. They get
written two ways (``model_events`` decides which): ``outbox_rows.store_one`` writes a row
in the same transaction as the change (``"delivery": "outbox"``), and ``deliver``
publishes events after their commit or, when Redis cannot take them, stores them.
``OutboxRelay`` moves the rows to their streams in their original order; ``backlog()``
is what the admin inspector and the ``runconsumers`` status line show.

One rule orders everything that leaves: a stream's events go out in order, so a new
event waits behind rows of its stream already waiting, and the relay sends a stream's
rows only from the head of that stream's queue. ``_in_turn`` alone applies it, for
``deliver`` and the relay alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import redis
from django.db import close_old_connections, connections, router, transaction
from django.db.models import Count, F, Window
from django.utils import timezone

from . import publishing, tracing, wire
from .backoff import Backoff
from .conf import get_config
from .exceptions import BrokerUnavailable
from .models import OutboxEvent
from .outbox_rows import Event, store

logger = logging.getLogger("redis_broker.outbox")


# --- The ordering rule -------------------------------------------------------------------


def _in_turn(db: str, candidates: Mapping[str, Sequence[int | None]]) -> dict[str, int]:
    """Return, per stream, how many of its candidates may go out now, from the first.

    The one ordering rule of the outbox: a stream's events go out in order. A candidate
    is the id of an outbox row about to be published, or None for a new event that is
    not a row, which comes after every row of its stream. Each stream's candidates
    (ids ascending, then any Nones) go out while each is the next row waiting in that
    stream's queue, or, for a None, while no row is left waiting ahead of it. So a new
    event waits behind rows already waiting, and a relay's batch stops, for a stream, at
    the first row it does not hold (another relay locked it, or it committed late with
    a lower id).
    """
    outbox = OutboxEvent.objects.using(db).order_by("id")
    waiting: dict[str, list[int]] = {}
    held: list[str] = []  # streams whose candidates are all rows
    last = 0
    for stream, ids in candidates.items():
        if not ids:
            continue
        tail = ids[-1]
        if tail is None:
            # Only the rows ahead of the first new event matter: one indexed read per
            # stream, cheap even with a long backlog during an outage.
            ahead = outbox.filter(stream=stream).values_list("id", flat=True)
            waiting[stream] = list(ahead[: ids.index(None) + 1])
        else:
            held.append(stream)
            last = max(last, tail)
    if held:
        # The queues of those streams up to the last candidate row, in one query.
        queued = outbox.filter(stream__in=held, id__lte=last).values_list("stream", "id")
        for stream, row_id in queued:
            waiting.setdefault(stream, []).append(row_id)
    allowed: dict[str, int] = {}
    for stream, ids in candidates.items():
        queue = waiting.get(stream, [])
        count = 0
        for candidate in ids:
            if candidate != (queue[count] if count < len(queue) else None):
                break
            count += 1
        allowed[stream] = count
    return allowed


# --- Delivering at commit ----------------------------------------------------------------


def deliver(events: Sequence[Event]) -> None:
    """Publish committed ``events`` in one round trip, or keep them in the outbox.

    Events for a stream that already has rows waiting in the outbox join the queue
    instead of overtaking it, so each stream keeps its order. Never raises: it runs
    after the commit, when the caller can no longer undo anything, so failures are
    logged.
    """
    if not events:
        return
    try:
        db = router.db_for_write(OutboxEvent)
        per_stream = Counter(stream for stream, _ in events)
        allowed = _in_turn(db, {stream: [None] * n for stream, n in per_stream.items()})
        waiting = {stream for stream, n in per_stream.items() if allowed[stream] < n}
        direct: Sequence[Event] = events
        queued: Sequence[Event] = ()
        if waiting:
            direct = [event for event in events if event[0] not in waiting]
            queued = [event for event in events if event[0] in waiting]
        if direct:
            try:
                with tracing.sending(direct):
                    publishing.publish_encoded(direct)
            except (BrokerUnavailable, redis.RedisError) as exc:
                logger.warning(
                    "Redis did not take %d model event(s) at commit; they wait in the "
                    "outbox for the relay: %s",
                    len(direct),
                    exc,
                )
                queued = events
        if queued:
            store(queued, db)
    except Exception:
        logger.exception(
            "Model events could neither be published nor stored in the outbox; "
            "%d event(s) lost: %s",
            len(events),
            ", ".join(fields[wire.EVENT_ID] for _, fields in events[:20]),
        )


# --- The backlog -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """How many events wait in the outbox and since when."""

    count: int
    oldest: datetime | None

    @property
    def oldest_age_seconds(self) -> float | None:
        """Return the age of the oldest waiting event, or None when the outbox is empty."""
        if self.oldest is None:
            return None
        return max(0.0, (timezone.now() - self.oldest).total_seconds())


def backlog() -> OutboxBacklog:
    """Return the outbox backlog in one query (sync: call it from a thread in async code)."""
    # The oldest row has the lowest id: read it through the primary key, with the count
    # of all rows as a window over the same scan.
    first = (
        OutboxEvent.objects.order_by("id")
        .annotate(total=Window(Count("id")))
        .values_list("created_at", "total")[:1]
    )
    for oldest, count in first:
        return OutboxBacklog(count=count, oldest=oldest)
    return OutboxBacklog(count=0, oldest=None)


# --- The relay ------------------------------------------------------------------------

#: Longest pause between attempts while Redis (or the database) keeps failing.
MAX_BACKOFF_SECONDS = 5.0
#: How often a failure that lasts is logged again (once at first, then this often).
REMIND_AFTER_SECONDS = 300.0


class RowsRefused(redis.ResponseError):
    """Redis refused outbox rows: they stay, and hold back their stream, until fixed.

    The message names the rows, the stream and Redis's error; ``cause`` is Redis's
    error alone (what stays the same while the problem lasts). The usual cause is a key
    of another type at the stream's name (``WRONGTYPE``): delete or rename that key, or
    delete the rows from the admin's outbox page.
    """

    def __init__(self, rows: Sequence[OutboxEvent], cause: redis.ResponseError) -> None:
        self.stream = rows[0].stream
        self.row_ids = [row.id for row in rows]
        self.cause = str(cause)
        shown = ", ".join(str(i) for i in self.row_ids[:10])
        more = f" and {len(self.row_ids) - 10} more" if len(self.row_ids) > 10 else ""
        hint = ""
        if self.cause.startswith("WRONGTYPE"):
            hint = f" (the key {self.stream!r} exists and is not a stream)"
        super().__init__(
            f"Redis refused outbox rows {shown}{more} for stream {self.stream!r}: "
            f"{self.cause}{hint}; they stay in the outbox, and the stream's later rows "
            "wait behind them"
        )


class OutboxRelay:
    """Move outbox rows to their streams, oldest first, deleting each only once Redis took it.

    ``run(stop)`` relays until ``stop`` is set (``runconsumers`` and ``relayoutbox`` use
    it); ``relay_once()`` moves one batch. The database work runs on one thread owned by
    the relay, so it keeps a single connection and never blocks the event loop.

    Several relays may run at once. Where the database can skip locked rows
    (PostgreSQL), each batch is locked with ``SELECT ... FOR UPDATE SKIP LOCKED`` until
    its rows are deleted, so no row is published twice; a relay publishes a stream's
    rows only up to the first row of that stream another relay holds, so every stream
    keeps its order. Without that support (SQLite), run a single relay.

    Delivery is at least once: if the process dies after Redis accepted a batch and
    before the delete commits, that batch is published again, with the same
    ``event_id`` values, so consumers can tell.
    """

    def __init__(self, *, using: str | None = None, batch_size: int | None = None) -> None:
        self.using = using
        self.batch_size = batch_size
        self._executor: ThreadPoolExecutor | None = None

    # -- sync core (runs on the relay's thread, or directly from a command) --

    def relay_batch(self) -> int:
        """Publish one batch of outbox rows and delete them; return how many were published.

        Raises ``BrokerUnavailable`` when Redis cannot be reached (the rows stay, untouched)
        and ``redis.ResponseError`` when Redis refused an entry (the rows stay, with
        ``attempts`` and ``last_error`` updated, and are retried one at a time).
        """
        db = self.using or router.db_for_write(OutboxEvent)
        batch_size = self.batch_size or get_config().outbox.batch_size
        locking = connections[db].features.has_select_for_update_skip_locked
        with transaction.atomic(using=db):
            rows = OutboxEvent.objects.using(db).order_by("id")
            if locking:
                rows = rows.select_for_update(skip_locked=True)
            batch = list(rows.only("id", "stream", "fields", "attempts")[:batch_size])
            if batch and locking:
                batch = self._rows_in_turn(db, batch)
            if not batch:
                return 0
            published, error = self._publish(db, batch)
            if published:
                OutboxEvent.objects.using(db).filter(id__in=published).delete()
        if error is not None:
            raise error
        return len(published)

    def _rows_in_turn(self, db: str, batch: list[OutboxEvent]) -> list[OutboxEvent]:
        """Keep, per stream, only the rows that come first in that stream's queue (``_in_turn``)."""
        mine: dict[str, list[OutboxEvent]] = {}
        for row in batch:
            mine.setdefault(row.stream, []).append(row)
        allowed = _in_turn(db, {stream: [row.id for row in rows] for stream, rows in mine.items()})
        keep = {row.id for stream, rows in mine.items() for row in rows[: allowed[stream]]}
        return [row for row in batch if row.id in keep]

    def _publish(self, db: str, batch: list[OutboxEvent]) -> tuple[list[int], RowsRefused | None]:
        """Publish ``batch``; return the ids Redis accepted and the error that stopped the rest.

        Streams whose rows Redis refused before are sent one entry at a time, so a row
        Redis keeps refusing (say the key holds a hash) blocks only its own stream and
        the rows behind it are neither duplicated nor reordered.
        """
        suspect = {row.stream for row in batch if row.attempts}
        bulk = [row for row in batch if row.stream not in suspect]
        published: list[int] = []
        error: RowsRefused | None = None
        if bulk:
            entries = [(row.stream, row.fields) for row in bulk]
            try:
                with tracing.sending(entries):
                    publishing.publish_encoded(entries)
            except redis.ResponseError as exc:
                # Some entries may have been appended: which ones, the pipeline does not
                # say. Mark them all; next time they go one by one (at least once).
                error = self._mark_failed(db, bulk, exc)
            else:
                published.extend(row.id for row in bulk)
        blocked: set[str] = set()
        for row in batch:
            if row.stream not in suspect or row.stream in blocked:
                continue
            try:
                with tracing.sending([(row.stream, row.fields)]):
                    publishing.publish_encoded([(row.stream, row.fields)])
            except redis.ResponseError as exc:
                blocked.add(row.stream)
                error = error or self._mark_failed(db, [row], exc)
            else:
                published.append(row.id)
        return published, error

    def _mark_failed(
        self, db: str, rows: list[OutboxEvent], exc: redis.ResponseError
    ) -> RowsRefused:
        """Count the attempt on ``rows`` and return the error that says what to fix."""
        OutboxEvent.objects.using(db).filter(id__in=[row.id for row in rows]).update(
            attempts=F("attempts") + 1, last_error=str(exc)[:2000]
        )
        return RowsRefused(rows, exc)

    def drain(self) -> int:
        """Relay batches until the outbox is empty (or holds only other relays' rows)."""
        total = 0
        while relayed := self.relay_batch():
            total += relayed
        return total

    # -- async API (for runconsumers) --

    async def relay_once(self) -> int:
        """Publish one batch on the relay's thread; return rows published, 0 when empty."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="redis-broker-outbox")
        return await loop.run_in_executor(self._executor, self._relay_batch_with_fresh_db)

    def _relay_batch_with_fresh_db(self) -> int:
        # As channels' database_sync_to_async: drop connections that broke or outlived
        # CONN_MAX_AGE, since this thread lives as long as the relay.
        close_old_connections()
        try:
            return self.relay_batch()
        finally:
            close_old_connections()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: at once while rows wait, every POLL_MS when empty.

        Failures never end the loop, and never flood the log: each distinct failure is
        logged once with its cause (an unexpected one with its traceback), then at DEBUG
        while it lasts, with a reminder every ``REMIND_AFTER_SECONDS``; attempts follow
        an exponential back-off capped at ``MAX_BACKOFF_SECONDS``.
        """
        poll = get_config().outbox.poll_ms / 1000
        backoff = Backoff(base=poll * 2, cap=MAX_BACKOFF_SECONDS, remind_after=REMIND_AFTER_SECONDS)
        try:
            while not stop.is_set():
                delay = poll
                try:
                    relayed = await self.relay_once()
                except asyncio.CancelledError:
                    raise
                except BrokerUnavailable as exc:
                    delay = backoff.next_delay()
                    logger.log(
                        backoff.level(str(exc)),
                        *("Outbox relay paused: %s; retrying in %.1f s", exc, delay),
                    )
                except RowsRefused as exc:
                    delay = backoff.next_delay()
                    logger.log(backoff.level(exc.cause, logging.ERROR), "%s", exc)
                except Exception as exc:
                    delay = backoff.next_delay()
                    level = backoff.level(f"{type(exc).__name__}: {exc}", logging.ERROR)
                    logger.log(
                        *(level, "Outbox relay failed (%s: %s); retrying in %.1f s"),
                        *(type(exc).__name__, exc, delay),
                        exc_info=exc if level >= logging.ERROR else None,
                    )
                else:
                    if failures := backoff.reset():
                        logger.info("Outbox relay resumed after %d failed attempts", failures)
                    if relayed:
                        logger.debug("Relayed %d outbox events", relayed)
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the relay thread's database connection and stop the thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, connections.close_all)
        finally:
            executor.shutdown(wait=False)
