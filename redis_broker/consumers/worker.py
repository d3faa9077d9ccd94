"""What every consumer's worker does, whatever it reads: supervise, hand out, settle.

A worker runs one registered consumer as a task on the runner's event loop. It hands
what it reads to the handler's lanes (``execution.py``), which run up to
``concurrency`` calls at once, and settles the outcomes as calls finish: a success
joins the next ack, a failure is retried after a back-off or dead-lettered. Reading
goes on while calls run, so one stuck handler holds one lane and never the consumer.

``ConsumerWorker`` owns that part, the same for every kind: the supervising loop that
survives Redis outages, the lanes, collecting outcomes (aside, on another pooled
connection, while a read blocks), the retry decision, the warm and cold stops, and
what the runner reports. A subclass says where entries come from and what acking,
retrying and dead-lettering mean for its kind (``streams.GroupWorker``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from .. import tracing, wire
from ..backoff import Backoff, wait_or_stop
from ..conf import BrokerConfig
from ..connection import CONNECTION_ERRORS, REDIS_ERRORS
from ..exceptions import ConsumerGroupMissing, Reject
from ..metrics.process import ConsumerInstruments
from ..naming import prefixed, reply_record_name
from ..payloads import Payload, PayloadInvalid
from ..requests import (
    INBOX_MAXLEN,
    REPLY_RECORD_MS,
    Reply,
    error_fields,
    reply_fields,
    request_info,
)
from . import policy
from .execution import Failure, Lanes, lanes_for
from .message import StreamMessage
from .registry import ConsumerSpec

logger = logging.getLogger("redis_broker.consumers")

#: Longest pause between attempts while Redis cannot be reached; keeps resumption < 5 s.
MAX_RECONNECT_DELAY = 1.0
#: Longest pause between checks of a burst run waiting for entries other workers hold.
BURST_POLL = 0.25
#: Entry ids named at most in one log line about abandoned entries.
MAX_IDS_LOGGED = 20


#: What a Redis call may raise, the cluster client's own errors included: no node could
#: be reached, or a slot is not covered (those are not ``RedisError``s). Loops that must
#: outlive a failover (settling aside, the heartbeat, the last acks) catch these.
RETRIED_ERRORS: tuple[type[BaseException], ...] = (
    *REDIS_ERRORS,
    redis.exceptions.RedisClusterException,
)

#: Replies while a failover moves a master: the cluster is down or a slot is moving
#: (CLUSTERDOWN, MASTERDOWN, TRYAGAIN, MOVED or ASK once the client's own retries are
#: spent), or no node serves the slot yet.
_FAILOVER_REPLIES: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
    redis.exceptions.SlotNotCoveredError,
)
#: The same replies as text, for errors a cluster pipeline re-raises as ResponseError.
_FAILOVER_WORDS = ("CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "MOVED ")


def is_failing_over(exc: BaseException) -> bool:
    """Return True for the errors Redis gives while a master is being replaced.

    Besides the cluster's replies, a read blocked on a master that turns into a replica
    (a planned failover, or Sentinel demoting it) is ended with ``UNBLOCKED ... instance
    state changed``. The worker retries these like a lost connection, with one warning,
    instead of logging each attempt as a crash.
    """
    if isinstance(exc, _FAILOVER_REPLIES):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    text = str(exc)
    if "UNBLOCKED" in text and "instance state changed" in text:
        return True
    return any(word in text for word in _FAILOVER_WORDS)


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one consumer since the worker started."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    reclaimed: int = 0
    expired: int = 0  # requests whose caller had given up: acked without a call
    replied: int = 0


def describe(exc: BaseException) -> str:
    """Return ``Type: message`` for an exception, the dead-letter ``error`` field.

    A payload that failed validation gives its message alone, ``validation: $.field:
    why``: the prefix tells at a glance (and to a filter) that the producer sent
    something the handler's type refuses, not that the handler failed.
    """
    if isinstance(exc, PayloadInvalid):
        return str(exc)
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def typed_handler(
    handler: Callable[[StreamMessage], Any], payload: Payload | None
) -> Callable[[StreamMessage], Any]:
    """Return ``handler`` receiving each message with its data converted to ``payload``.

    Every kind's worker calls its handler through this, so a stream entry, a channel
    message and a list item are checked alike, before the handler runs. A payload that
    does not convert raises ``PayloadInvalid`` (a ``Reject``) from the call: the worker
    then settles it like any rejection, with the message as it was read. Without a
    declared type, ``handler`` itself (plain JSON data, nothing added per call).

    The converted data replaces the decoded JSON in the message itself, not in a copy:
    a copy per entry cost 3 % of the throughput (bench/typed.py: 0.85x of untyped against
    0.88x). It is safe because the handler is the first to see the message, and each
    message is handed to the lanes once (a retry decodes the entry afresh); what was
    sent stays in ``message.fields`` (streams) and the raw item (lists), which dead
    letters copy. The wrapper is a plain function for async handlers too: it returns the
    handler's coroutine for the lane to await, one frame less per entry.
    """
    if payload is None:
        return handler
    convert, set_data = payload.convert, object.__setattr__

    def call(message: StreamMessage) -> Any:
        set_data(message, "data", convert(message.data))  # raises PayloadInvalid first
        return handler(message)

    return call


def format_failure(exc: BaseException) -> str:
    """Return the exception with its traceback and chained causes, the dead-letter
    ``traceback`` field (``wire.dead_letter_fields`` keeps its last 4 KiB)."""
    return "".join(traceback.format_exception(exc)).rstrip()


class ConsumerWorker:
    """Run one consumer's handler on what a subclass reads, until told to stop.

    Subclasses implement ``_setup`` (after a (re)connect), ``_step`` (the most urgent
    piece of work; False when there was none), ``_burst_done``, ``_flush_acks`` and
    ``_dead_letter``, and call ``_submit`` with what they read.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        *,
        config: BrokerConfig,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        settings = config.consumers
        self.spec = spec
        self.handler: Callable[[StreamMessage], Any] = spec.func
        self.output_key = prefixed(config.key_prefix, spec.output) if spec.output else None
        # The command's --concurrency overrides the decorator's, which overrides the setting.
        self.concurrency = concurrency or spec.concurrency or settings.concurrency
        self.retry = policy.RetryPolicy(
            settings.max_deliveries, settings.retry_backoff_ms, settings.retry_backoff_max_ms
        )
        self.block_ms = settings.block_ms
        self.maxlen = config.stream_maxlen
        self.prefix = config.key_prefix
        self.burst = burst
        self.is_async = spec.is_async
        self.stats = ConsumerStats()
        self.client: redis.asyncio.Redis | None = None
        self.lanes: Lanes[StreamMessage] | None = None
        self._acks: list[bytes] = []
        self._outputs: dict[bytes, wire.OutputParts] = {}  # entry id -> its output
        self._replies: list[tuple[str, dict[str, str], str]] = []  # (inbox, fields, cid)
        self._failures: list[Failure[StreamMessage]] = []
        self._in_flight = 0  # entries handed to the lanes whose outcome is not collected
        self._retries = policy.RetrySchedule()
        self._ready = False
        self._progress = asyncio.Event()
        self._blocked = False  # inside a blocking read: outcomes are settled aside
        self._settler: asyncio.Task[None] | None = None
        self._slow_warned: set[bytes] = set()
        # Health (``liveness_problem``, ``readiness_problem``), read from the health
        # server's thread: when a read last returned or an outcome was last collected,
        # whether that read filled a whole batch (more waits), what keeps it from ready.
        self.liveness_timeout = settings.liveness_timeout
        self.progress_at = time.monotonic()
        self.full_read = False
        self.group_missing = False
        self.redis_error: str | None = None
        self.instruments: ConsumerInstruments | None = None
        if config.metrics:
            self.instruments = ConsumerInstruments(
                *self.metric_labels(), in_flight_of=self.in_flight, oldest_call_of=self.oldest_call
            )

    # -- supervision --------------------------------------------------------------------

    async def run(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (or, in burst mode, until nothing is left).

        Never dies on Redis trouble (see ``_consume``). After ``stop``, the entries
        handed out are finished and settled. Cancellation (a cold stop) abandons them:
        they stay pending for another worker, and the log names them.
        """
        self.client = client
        self._progress = asyncio.Event()
        handler = typed_handler(self.handler, self.spec.payload)
        self.lanes = lanes_for(
            tracing.traced_handler(handler, is_async=self.is_async, **self.trace_names()),
            is_async=self.is_async,
            limit=self.concurrency,
            notify=self._notify,
            name=f"redis-broker-{self.spec.name}",
            timed=self.instruments is not None,
        )
        try:
            await self._consume(stop)
            await self._drain_reads()
            await self._finish_in_flight()
        finally:
            if self._settler is not None:
                self._settler.cancel()
            abandoned = self.lanes.abandon()
            if abandoned:
                self._log_abandoned(abandoned)
            await self._final_flush()

    async def _consume(self, stop: asyncio.Event) -> None:
        """Step until ``stop``: a lost group is set up again with one warning; connection
        errors are logged once and retried with a back-off of at most
        ``MAX_RECONNECT_DELAY``; anything else is logged with its traceback and retried."""
        backoff = Backoff(0.1, MAX_RECONNECT_DELAY)
        group_warned = False
        while not stop.is_set():
            try:
                if not self._ready:
                    await self._setup()
                worked = await self._step()
                if not worked and self.burst and await self._burst_done(stop):
                    return
            except ConsumerGroupMissing as exc:
                self.group_missing = True
                if not group_warned:
                    logger.warning("%s", exc)
                    group_warned = True
                self._ready = False
                continue
            except Exception as exc:
                self._ready = False
                delay = backoff.next_delay()
                failing_over = is_failing_over(exc)
                if failing_over or isinstance(exc, CONNECTION_ERRORS):
                    # Waiting for Redis is not being stuck: readiness reports it, and
                    # restarting the process would not bring Redis back.
                    self.progress_at = time.monotonic()
                    self.redis_error = describe(exc)
                    logger.log(
                        backoff.level(),
                        "%s: Redis %s (%s); retrying every %.1f s",
                        self,
                        "is failing over" if failing_over else "unreachable",
                        exc,
                        delay,
                    )
                else:
                    logger.exception("%s: unexpected error; retrying in %.1f s", self, delay)
                await wait_or_stop(stop, delay)
                continue
            if backoff.reset():
                logger.warning("%s: Redis answers again; resuming", self)
            group_warned = False  # one warning per lost group, not per process
            self.group_missing, self.redis_error = False, None

    async def _setup(self) -> None:
        raise NotImplementedError

    async def _step(self) -> bool:
        raise NotImplementedError

    async def _burst_done(self, stop: asyncio.Event) -> bool:
        raise NotImplementedError

    async def _drain_reads(self) -> None:
        """After a stop request: hand out what was read ahead (a kind that reads ahead)."""

    async def _flush_acks(self) -> None:
        raise NotImplementedError

    async def _dead_letter(
        self, entry_id: bytes, message: StreamMessage, error: str, trace: str = ""
    ) -> None:
        """Copy the entry to the dead letters with ``error`` (and ``trace``), and settle it."""
        raise NotImplementedError

    async def _take_outcomes(self) -> bool:
        """Begin a step: collect the lanes' outcomes and settle the failures among them.

        Returns True when there were failures to settle (the step's work).
        """
        self._progress.clear()  # outcomes from here on wake a wait of this step
        self._collect()
        if not self._failures:
            return False
        await self._settle_failures()
        return True

    def _busy(self) -> bool:
        """Return True while calls run or wait, or outcomes wait to be settled."""
        return bool(self._in_flight or self._failures)

    def _until_next_retry(self, cap: float) -> float:
        """Return seconds until a retry is due, at most ``cap``."""
        due = self._retries.next_due()
        return cap if due is None else min(cap, max(0.0, due - time.monotonic()))

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

    # -- outcomes -----------------------------------------------------------------------

    #: Whether sent replies are recorded, to answer a redelivered request again without
    #: calling the handler (stream groups, where a request may be delivered twice).
    records_replies = False

    def _submit(self, items: list[tuple[bytes, StreamMessage]], *, requests: bool = True) -> None:
        """Hand messages to the lanes; settle requests whose caller already gave up.

        ``requests=False`` says that no message has headers, so none is a request.
        """
        assert self.lanes is not None
        self.progress_at = time.monotonic()  # a read returned
        if items and requests and not self.spec.no_reply:
            items = self._without_expired(items)
        if items:
            self._in_flight += len(items)
            self.lanes.submit(items)

    def _without_expired(
        self, items: list[tuple[bytes, StreamMessage]]
    ) -> list[tuple[bytes, StreamMessage]]:
        """Return the items to run: requests past their deadline are acked and counted."""
        now_ms: int | None = None
        kept = []
        for entry_id, message in items:
            info = request_info(message.headers) if message.headers else None
            if info is not None and info.deadline_ms is not None:
                now_ms = now_ms or int(time.time() * 1000)
                if info.deadline_ms < now_ms:
                    self._acks.append(entry_id)
                    self.stats.expired += 1
                    if self.instruments is not None:
                        self.instruments.skipped_expired.inc()
                    logger.info(
                        "%s: skipped request %s: its caller gave up %d ms ago",
                        *(self, info.correlation_id, now_ms - info.deadline_ms),
                    )
                    continue
            kept.append((entry_id, message))
        return kept

    def _holding(self, ids: Iterable[bytes]) -> set[bytes]:
        """Return which of ``ids`` the lanes still hold (queued, running or unsettled)."""
        if not self._in_flight or self.lanes is None:
            return set()
        return self.lanes.holding().intersection(ids)

    def _blocking(self, blocking: bool) -> None:
        """Mark the start (True) or end of a read that may block.

        While it blocks, finished calls are settled aside. Outcomes that arrived just
        before the mark, collected or not, are settled aside at once too: a lane signals
        only while ``watched`` is set, so they would otherwise wait for the read.
        """
        assert self.lanes is not None
        self._blocked = self.lanes.watched = blocking
        if blocking and (self.lanes.has_outcomes() or self._failures or self._replies):
            self._notify()

    def _notify(self) -> None:
        """Called on the loop when calls finished: wake the loop, or settle aside."""
        self._progress.set()
        if self._blocked and self._settler is None:
            self._settler = asyncio.get_running_loop().create_task(self._settle_aside())

    async def _settle_aside(self) -> None:
        """Settle outcomes while the main loop waits in a blocking read (own connection)."""
        try:
            self._collect()
            await self._settle_failures()  # first: a request's error reply is then sent too
            await self._flush_acks()
        except RETRIED_ERRORS as exc:
            logger.debug("%s: settling deferred to the next read (%s)", self, exc)
        finally:
            self._settler = None

    def _collect(self) -> None:
        """Take the lanes' outcomes: successes join the next ack, failures wait to settle."""
        assert self.lanes is not None
        if not self.lanes.has_outcomes():
            return
        done, results, failed = self.lanes.collect()
        self.progress_at = time.monotonic()  # outcomes settled
        self._in_flight -= len(done) + len(failed)
        handled = len(done)
        if results:
            refused = self._take_results(results)
            if refused or self.output_key is not None:
                # An entry with an output is acked only together with its output's
                # append (``_outputs``), never by a plain ack: one atomic step.
                skip = self._outputs.keys() | {entry_id for entry_id, _, _ in refused}
                done = [entry_id for entry_id in done if entry_id not in skip]
            failed += refused
            handled -= len(refused)
        self._acks += done
        self._failures += failed
        self.stats.processed += handled
        if self.instruments is not None:
            if handled:
                self.instruments.acked.inc(handled)
            self.instruments.durations.observe_many(self.lanes.take_durations())

    def _take_results(
        self, results: dict[bytes, tuple[StreamMessage, Any]]
    ) -> list[Failure[StreamMessage]]:
        """Queue the reply of each request and the ``output=`` entry of each value.

        An output carries the input's event id in its headers, so it can be traced back.
        A value that cannot be encoded is the handler's failure, retried like a raise.
        Returns those failures.
        """
        refused: list[Failure[StreamMessage]] = []
        for entry_id, (message, result) in results.items():
            try:
                info = None if self.spec.no_reply else request_info(message.headers)
                # The call's trace context, kept on the message: this runs on the loop's
                # thread, not in the call's context (which may have been a lane thread).
                wanted = info is not None or (self.output_key is not None and result is not None)
                trace = tracing.message_carrier(message) if wanted else None
                if info is not None:
                    fields = reply_fields(result, info.correlation_id, trace)
                    self._replies.append((info.reply_to, fields, info.correlation_id))
                if self.output_key is not None and result is not None:
                    value = result.data if isinstance(result, Reply) else result
                    self._outputs[entry_id] = wire.encode_output(value, message.event_id, trace)
            except TypeError as exc:
                refused.append((entry_id, message, exc))
        return refused

    def _reply_error(self, message: StreamMessage, exc: BaseException) -> None:
        """Queue the error reply of a request whose handler failed for good."""
        info = None if self.spec.no_reply else request_info(message.headers)
        if info is not None:
            fields = error_fields(exc, info.correlation_id, tracing.message_carrier(message))
            self._replies.append((info.reply_to, fields, info.correlation_id))

    async def _flush_replies(self) -> None:
        """Send the queued replies (and their records, see ``records_replies``), one trip."""
        if not self._replies:
            return
        assert self.client is not None
        replies, self._replies = self._replies, []
        pipe = self.client.pipeline(transaction=False)
        for inbox, fields, correlation_id in replies:
            pipe.xadd(inbox, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
            if self.records_replies:
                record = prefixed(self.prefix, reply_record_name(correlation_id))
                pipe.set(record, inbox + "\n" + wire.dumps(fields), px=REPLY_RECORD_MS)
        try:
            await pipe.execute()
        except BaseException:
            self._replies[:0] = replies
            raise
        self.stats.replied += len(replies)

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
        """Retry after a back-off, or dead-letter (``Reject``, or ``MAX_DELIVERIES`` reached)."""
        self.stats.failed += 1
        count, most = message.delivery_count, self.retry.max_deliveries
        where = f"{self}: entry {message.id} (event {message.event_id})"
        delay = self.retry.retry_delay_ms(exc, count)
        if delay is not None:
            logger.warning(
                "%s failed on delivery %d of %d; retrying in %d ms",
                *(where, count, most, delay),
                exc_info=exc,
            )
            self._retries.add(entry_id, count, delay, time.monotonic())
            if self.instruments is not None:
                self.instruments.retried.inc()
        elif isinstance(exc, Reject):
            logger.warning("%s was rejected: %s; dead-lettering it", where, exc)
            self._reply_error(message, exc)
            await self._dead_letter(entry_id, message, describe(exc), format_failure(exc))
        else:
            logger.error(
                "%s failed on delivery %d of %d; dead-lettering it",
                *(where, count, most),
                exc_info=exc,
            )
            self._reply_error(message, exc)
            await self._dead_letter(entry_id, message, describe(exc), format_failure(exc))

    # -- stopping -----------------------------------------------------------------------

    async def _finish_in_flight(self) -> None:
        """After a stop request: let every entry handed out finish, and settle it."""
        while True:
            self._progress.clear()
            self._collect()
            if self._failures:
                try:
                    await self._settle_failures()
                except RETRIED_ERRORS as exc:
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
            *(self, len(ids), shown, more),
        )

    async def _final_flush(self) -> None:
        """Ack what was handled; on failure say so (those entries will be delivered again)."""
        if self.lanes is not None:
            self._collect()
        if not (self._acks or self._outputs or self._replies) or self.client is None:
            return
        count = len(self._acks) + len(self._outputs)
        try:
            await asyncio.wait_for(self._flush_acks(), 2.0)
        except RETRIED_ERRORS as exc:
            logger.warning(
                "%s: could not ack %d handled entries (%s); they will be delivered again",
                *(self, count, exc),
            )

    # -- what the runner reports -------------------------------------------------------

    async def pending(self) -> int:
        """Return how many entries wait to be settled in Redis (for every consumer)."""
        raise NotImplementedError

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
        running: dict[bytes, float] = dict(self.lanes.calls.values())  # a copy: threads
        for entry_id, started in running.items():
            if now - started >= threshold and entry_id not in self._slow_warned:
                self._slow_warned.add(entry_id)
                logger.warning(
                    "%s: the handler has been running on entry %s for %.0f s "
                    "(concurrency %d; other entries keep flowing)",
                    *(self, entry_id.decode(), now - started, self.concurrency),
                )
        self._slow_warned &= running.keys()

    def _count_dead_letter(self) -> None:
        """Count one entry dead-lettered (every kind's ``_dead_letter`` calls this)."""
        self.stats.dead_lettered += 1
        if self.instruments is not None:
            self.instruments.dead_lettered.inc()

    def metric_labels(self) -> tuple[str, str]:
        """Return this consumer's ``(stream, group)`` metric labels (``metrics.process``)."""
        return self.spec.name, ""

    # -- health (called from the health server's thread too) ---------------------------

    def work_waiting(self) -> bool:
        """Return True while entries wait for this consumer: handed out and not settled,
        or its last read filled a whole batch (so more are likely there)."""
        return bool(self._in_flight or self._failures or self.full_read)

    def liveness_problem(self, now: float | None = None) -> str | None:
        """Return why this consumer counts as stuck, or None while it makes progress.

        Stuck: a handler call has run longer than ``LIVENESS_TIMEOUT``, or work waits and
        no read returned and no outcome came in for that long. An idle consumer whose
        reads keep returning empty is alive; so is one retrying an unreachable Redis
        (that is readiness's business).
        """
        now = time.monotonic() if now is None else now
        limit = self.liveness_timeout
        started = self.oldest_call()
        if started is not None and now - started > limit:
            return (
                f"a handler call has been running for {now - started:.1f} s "
                f"(LIVENESS_TIMEOUT {limit:g} s)"
            )
        idle = now - self.progress_at
        if idle > limit and self.work_waiting():
            return (
                f"no progress for {idle:.1f} s while work waits "
                f"(in flight {self._in_flight}; LIVENESS_TIMEOUT {limit:g} s)"
            )
        return None

    def readiness_problem(self) -> str | None:
        """Return why this consumer cannot work now (group missing, Redis), or None."""
        if self.group_missing:
            return "its consumer group is missing (NOGROUP); it is being created again"
        if self.redis_error is not None:
            return f"Redis cannot be reached ({self.redis_error})"
        return None

    def trace_names(self) -> dict[str, str]:
        """Return what names this consumer's ``process`` spans (``tracing.traced_handler``)."""
        return {"destination": self.spec.name}

    def describe_for_heartbeat(self) -> dict[str, Any]:
        """Return what the process's heartbeat says about this consumer."""
        now = time.monotonic()
        started = self.oldest_call()
        problem = self.liveness_problem(now)
        not_ready = self.readiness_problem()
        return {
            "kind": self.spec.kind,
            "name": self.spec.name,
            "in_flight": self._in_flight,
            "oldest_call_s": None if started is None else round(now - started, 3),
            "progress_age_s": round(now - self.progress_at, 3),
            "live": problem is None,
            "ready": not_ready is None,
            "problem": problem or not_ready,
        }
