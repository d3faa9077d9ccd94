"""The database outbox: model events waiting for Redis, and the relay that sends them.

Rows get here two ways (see ``model_events``): written in the same transaction as the
change (``"delivery": "outbox"``), or written after commit because Redis could not be
reached. ``OutboxRelay`` moves them to their streams in their original order;
``backlog()`` is what the admin inspector and the ``runconsumers`` status line show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import redis
from django.db import close_old_connections, connections, router, transaction
from django.db.models import Count, F, Window
from django.utils import timezone

from . import publishing
from .conf import get_config
from .exceptions import BrokerUnavailable
from .models import OutboxEvent

logger = logging.getLogger("redis_broker.outbox")


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
                batch = self._in_turn(db, batch)
            if not batch:
                return 0
            published, error = self._publish(db, batch)
            if published:
                OutboxEvent.objects.using(db).filter(id__in=published).delete()
        if error is not None:
            raise error
        return len(published)

    def _in_turn(self, db: str, batch: list[OutboxEvent]) -> list[OutboxEvent]:
        """Keep, per stream, only the rows that come first in that stream's queue.

        A row of the same stream that this batch skipped (another relay holds it, or it
        committed late with a lower id) must go out first: the batch stops there for
        that stream, and the rows behind it wait for a later batch.
        """
        mine: dict[str, list[OutboxEvent]] = {}
        for row in batch:
            mine.setdefault(row.stream, []).append(row)
        queued: dict[str, list[int]] = {}
        ahead = (
            OutboxEvent.objects.using(db)
            .filter(stream__in=list(mine), id__lte=batch[-1].id)
            .order_by("id")
            .values_list("stream", "id")
        )
        for stream, row_id in ahead:
            queued.setdefault(stream, []).append(row_id)
        keep: set[int] = set()
        for stream, rows in mine.items():
            for row, first in zip(rows, queued.get(stream, []), strict=False):
                if row.id != first:
                    break
                keep.add(row.id)
        return [row for row in batch if row.id in keep]

    def _publish(self, db: str, batch: list[OutboxEvent]) -> tuple[list[int], Exception | None]:
        """Publish ``batch``; return the ids Redis accepted and the error that stopped the rest.

        Streams whose rows Redis refused before are sent one entry at a time, so a row
        Redis keeps refusing (say the key holds a hash) blocks only its own stream and
        the rows behind it are neither duplicated nor reordered.
        """
        suspect = {row.stream for row in batch if row.attempts}
        bulk = [row for row in batch if row.stream not in suspect]
        published: list[int] = []
        error: Exception | None = None
        if bulk:
            try:
                publishing.publish_encoded([(row.stream, row.fields) for row in bulk])
            except redis.ResponseError as exc:
                # Some entries may have been appended: which ones, the pipeline does not
                # say. Mark them all; next time they go one by one (at least once).
                self._mark_failed(db, bulk, exc)
                error = exc
            else:
                published.extend(row.id for row in bulk)
        blocked: set[str] = set()
        for row in batch:
            if row.stream not in suspect or row.stream in blocked:
                continue
            try:
                publishing.publish_encoded([(row.stream, row.fields)])
            except redis.ResponseError as exc:
                blocked.add(row.stream)
                self._mark_failed(db, [row], exc)
                error = error or exc
            else:
                published.append(row.id)
        return published, error

    def _mark_failed(self, db: str, rows: list[OutboxEvent], exc: Exception) -> None:
        logger.error(
            "Redis refused outbox rows %s (stream %s): %s",
            ", ".join(str(row.id) for row in rows[:10]) + (" ..." if len(rows) > 10 else ""),
            rows[0].stream,
            exc,
        )
        OutboxEvent.objects.using(db).filter(id__in=[row.id for row in rows]).update(
            attempts=F("attempts") + 1, last_error=str(exc)[:2000]
        )

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

        Failures never end the loop: an unreachable Redis is logged once as a warning
        (then at DEBUG while it lasts) and anything else with its traceback, each
        followed by an exponential back-off capped at ``MAX_BACKOFF_SECONDS``.
        """
        poll = get_config().outbox.poll_ms / 1000
        failures = 0
        try:
            while not stop.is_set():
                delay = poll
                try:
                    relayed = await self.relay_once()
                except asyncio.CancelledError:
                    raise
                except BrokerUnavailable as exc:
                    failures += 1
                    delay = min(poll * 2**failures, MAX_BACKOFF_SECONDS)
                    log = logger.warning if failures == 1 else logger.debug
                    log("Outbox relay paused: %s; retrying in %.1f s", exc, delay)
                except Exception:
                    failures += 1
                    delay = min(poll * 2**failures, MAX_BACKOFF_SECONDS)
                    logger.exception("Outbox relay failed; retrying in %.1f s", delay)
                else:
                    if failures:
                        logger.info("Outbox relay resumed after %d failed attempts", failures)
                    failures = 0
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
