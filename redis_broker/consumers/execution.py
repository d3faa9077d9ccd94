"""Handler execution: run a consumer's handler on entries, up to ``concurrency`` at a time.

This module never touches Redis. A worker hands it items (an entry id and its message)
and later collects outcomes: the ids of calls that returned, with their return values,
and ``(id, message, exception)`` for calls that raised. What happens next (ack, retry,
dead letter) is the worker's business, so every consumer kind shares one way of running
handlers.

Two engines, chosen by the handler:

* ``AsyncLanes`` awaits an ``async def`` handler in *lane* tasks. One lane runs a
  batch; more are started only when a call actually suspends, so a handler that never
  waits costs one task per batch, not one per entry.
* ``ThreadLanes`` runs a sync handler on daemon threads with Django's connection
  hygiene around each call. One lane runs a batch; as soon as a call has been running
  for ``SLOW_CALL`` while items wait, every free lane starts at once, so N slow entries
  at concurrency >= N take about one handler's time.

Lanes take items one by one from a shared queue, so one stuck call holds one lane and
never the others: the rest of the queue keeps flowing within the concurrency limit.
Threads are daemons, and are never joined: a sync handler that never returns must
not keep a stopping process alive (the stdlib pool joins its threads at exit).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from django.db import connections

M = TypeVar("M")

#: A sync call running longer than this (seconds) while items wait starts every free lane.
SLOW_CALL = 0.001


#: A call that raised: (entry id, message, exception).
Failure = tuple[bytes, M, Exception]


class Lanes(Generic[M]):
    """The part both engines share: the queue, the outcomes, the calls in flight.

    Outcomes pile up in three places the worker takes with :meth:`collect`: ``done``
    (ids of calls that returned), ``results`` (their message and return value, when the
    value is not None) and
    ``failed``. ``notify`` is called on the event loop when outcomes arrive while
    ``watched`` is set, that is while the worker waits for them; otherwise nothing is
    called per entry, which keeps the fast path fast (bench/consume.py).
    """

    def __init__(self, handler: Callable[[M], Any], limit: int, notify: Callable[[], None]) -> None:
        self.handler = handler
        self.limit = limit
        self.notify = notify
        #: Each call's duration in seconds, appended as it ends (None: nothing is timed);
        #: the worker takes them with the outcomes (``take_durations``).
        self.durations: list[float] | None = None
        self.watched = False
        self.queue: deque[tuple[bytes, M]] = deque()
        self.done: list[bytes] = []
        self.results: dict[bytes, tuple[M, Any]] = {}
        self.failed: list[Failure[M]] = []
        #: lane number -> (entry id, monotonic start) of the call it is running
        self.calls: dict[int, tuple[bytes, float]] = {}
        self.active = 0
        self._numbers = itertools.count()

    def submit(self, items: Iterable[tuple[bytes, M]]) -> None:
        """Queue items; they start as soon as a lane is free."""
        raise NotImplementedError

    def _record(
        self, number: int, entry_id: bytes, message: M, result: Any, error: Exception | None
    ) -> None:
        """Keep the outcome of lane ``number``'s call, and tell the worker if it waits."""
        if error is not None:
            self.failed.append((entry_id, message, error))
        else:
            # A value to append, or a request to answer (even with None): the worker
            # needs the message back.
            if result is not None or getattr(message, "headers", None):
                self.results[entry_id] = (message, result)
            self.done.append(entry_id)
        started = self.calls.pop(number)[1]
        if self.durations is not None:
            self.durations.append(time.monotonic() - started)  # one step under the GIL
        if self.watched:
            self._signal()

    def _signal(self) -> None:
        self.notify()

    def collect(self) -> tuple[list[bytes], dict[bytes, tuple[M, Any]], list[Failure[M]]]:
        """Return (and forget) the ids done, their (message, non-None result), the failures.

        Safe while threads append: a slice and its deletion are each one step under
        the GIL, and appends only ever go to the end.
        """
        done, failed = self.done, self.failed
        taken = done[: len(done)]
        del done[: len(taken)]
        failures = failed[: len(failed)]
        del failed[: len(failures)]
        results = self.results
        if results:
            results = {entry_id: results.pop(entry_id) for entry_id in taken if entry_id in results}
        else:
            results = {}
        return taken, results, failures

    def take_durations(self) -> list[float]:
        """Return (and forget) the call durations recorded so far (safe like ``collect``)."""
        durations = self.durations
        if not durations:
            return []
        taken = durations[: len(durations)]
        del durations[: len(taken)]
        return taken

    def has_outcomes(self) -> bool:
        """Return True when outcomes wait to be collected."""
        return bool(self.done or self.failed)

    def waiting(self) -> int:
        """Return how many items wait for a lane."""
        return len(self.queue)

    def oldest_call(self) -> tuple[bytes, float] | None:
        """Return (entry id, monotonic start) of the longest-running call, if any."""
        calls = list(self.calls.values())  # a copy: threads change the dict
        return min(calls, key=lambda call: call[1]) if calls else None

    def holding(self) -> set[bytes]:
        """Return the ids of every item queued, running, or with an uncollected outcome."""
        ids = {entry_id for entry_id, _ in list(self.queue)}
        ids.update(entry_id for entry_id, _ in list(self.calls.values()))
        ids.update(self.done)
        ids.update(entry_id for entry_id, _, _ in list(self.failed))
        return ids

    def abandon(self) -> list[bytes]:
        """Stop starting calls; return the ids of the queued and running items left behind."""
        left = [entry_id for entry_id, _ in self.queue]
        self.queue.clear()
        return [entry_id for entry_id, _ in list(self.calls.values())] + left


class AsyncLanes(Lanes[M]):
    """Await an async handler in up to ``limit`` lane tasks on the running loop."""

    def __init__(self, handler: Callable[[M], Any], limit: int, notify: Callable[[], None]) -> None:
        super().__init__(handler, limit, notify)
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def submit(self, items: Iterable[tuple[bytes, M]]) -> None:
        self.queue.extend(items)
        # A lane that is not inside a call will take the items; when every lane is
        # (a stuck or slow handler), start one more.
        if self.queue and self.active == len(self.calls) and self.active < self.limit:
            self._start(1)

    def _start(self, count: int) -> None:
        for _ in range(count):
            self.active += 1
            task = self._loop.create_task(self._lane(next(self._numbers)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _more(self) -> None:
        # Runs only when a lane yields to the loop, that is when a handler call suspends.
        spare = min(self.limit - self.active, len(self.queue))
        if spare > 0:
            self._start(spare)

    async def _lane(self, number: int) -> None:
        # A success is recorded here rather than through ``_record``: the same steps
        # without a method call per entry (bench/consume.py).
        handler, queue, calls, record = self.handler, self.queue, self.calls, self._record
        done, results, durations = self.done, self.results, self.durations
        popleft, clock = queue.popleft, time.monotonic
        more = self._loop.call_soon(self._more)
        try:
            while queue:
                entry_id, message = popleft()
                started = clock()
                calls[number] = (entry_id, started)
                try:
                    result = await handler(message)
                except Exception as exc:
                    record(number, entry_id, message, None, exc)
                    continue
                if result is not None or getattr(message, "headers", None):
                    results[entry_id] = (message, result)
                done.append(entry_id)
                del calls[number]
                if durations is not None:
                    durations.append(clock() - started)
                if self.watched:
                    self._signal()
        finally:
            more.cancel()
            self.active -= 1
            calls.pop(number, None)

    def abandon(self) -> list[bytes]:
        left = super().abandon()
        for task in self.tasks:
            task.cancel()
        return left


class ThreadLanes(Lanes[M]):
    """Run a sync handler on up to ``limit`` daemon threads, closing stale DB connections."""

    def __init__(
        self,
        handler: Callable[[M], Any],
        limit: int,
        notify: Callable[[], None],
        *,
        name: str = "redis-broker",
    ) -> None:
        super().__init__(handler, limit, notify)
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._parked: list[threading.Event] = []  # idle threads wait on their own event
        self._threads = 0
        self._stopped = False
        self._notified = False
        self._watch: asyncio.TimerHandle | None = None

    def submit(self, items: Iterable[tuple[bytes, M]]) -> None:
        self.queue.extend(items)
        if not self.queue:
            return
        with self._lock:
            if self.active == len(self.calls) and self.active < self.limit:
                self._wake(1)
        if self._watch is None:
            self._watch = self._loop.call_later(SLOW_CALL, self._check_stalls)

    def _check_stalls(self) -> None:
        """Start every free lane when a call is slow while items wait (I/O-bound handlers)."""
        self._watch = None
        if not self.queue or self._stopped:
            return
        oldest = self.oldest_call()
        if oldest is not None and time.monotonic() - oldest[1] >= SLOW_CALL:
            with self._lock:
                self._wake(min(self.limit - self.active, len(self.queue)))
        self._watch = self._loop.call_later(SLOW_CALL * 10, self._check_stalls)

    def _wake(self, count: int) -> None:
        """Set ``count`` more lanes working (called with the lock held)."""
        for _ in range(max(0, count)):
            self.active += 1
            if self._parked:
                self._parked.pop().set()
            else:
                self._threads += 1
                thread = threading.Thread(
                    target=self._thread,
                    name=f"{self.name}-{self._threads}",
                    daemon=True,
                )
                thread.start()

    def _thread(self) -> None:
        number = next(self._numbers)
        wakeup = threading.Event()
        # Django's close_old_connections(), as channels' database_sync_to_async runs it
        # around each call, so no call starts or ends with a connection that broke or
        # outlived CONN_MAX_AGE. The list of this thread's connections is fixed, so it
        # is taken once (bench/consume.py: ~3 us a call saved).
        databases = connections.all()

        def close_old_connections() -> None:
            for connection in databases:
                connection.close_if_unusable_or_obsolete()

        handler, queue, calls, record = self.handler, self.queue, self.calls, self._record
        clock = time.monotonic
        close_old_connections()
        while not self._stopped:
            try:
                entry_id, message = queue.popleft()
            except IndexError:
                with self._lock:
                    if queue:  # filled between the pop and the lock
                        continue
                    self.active -= 1
                    wakeup.clear()
                    self._parked.append(wakeup)
                wakeup.wait()
                continue
            calls[number] = (entry_id, clock())
            error: Exception | None = None
            result: Any = None
            try:
                result = handler(message)
            except Exception as exc:
                error = exc
            finally:
                close_old_connections()
            if self._stopped:
                return  # abandoned: the worker no longer collects
            record(number, entry_id, message, result, error)

    def _signal(self) -> None:
        """Tell the loop about new outcomes, at most one pending wake-up at a time."""
        if not self._notified:
            self._notified = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop closed under an abandoned call
                pass

    def _deliver(self) -> None:
        self._notified = False
        self.notify()

    def abandon(self) -> list[bytes]:
        left = super().abandon()
        self.close()
        return left

    def close(self) -> None:
        """Let every thread end: parked ones now, running ones after their call."""
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        with self._lock:
            for wakeup in self._parked:
                wakeup.set()
            self._parked.clear()


def lanes_for(
    handler: Callable[[M], Any],
    *,
    is_async: bool,
    limit: int,
    notify: Callable[[], None],
    name: str,
    timed: bool = False,
) -> Lanes[M]:
    """Return the engine for ``handler``: async lanes or thread lanes.

    ``timed`` records each call's duration (``take_durations``).
    """
    lanes: Lanes[M]
    if is_async:
        lanes = AsyncLanes(handler, limit, notify)
    else:
        lanes = ThreadLanes(handler, limit, notify, name=name)
    if timed:
        lanes.durations = []
    return lanes
