"""``ConsumerRunner``: one worker process, one event loop, every selected consumer.

The runner discovers consumers, checks that Redis answers and creates their groups,
then runs one ``GroupWorker`` task per consumer, the outbox relay and a status line.
It owns the signals: the first SIGTERM/SIGINT stops reading and lets in-flight entries
finish and be acked (up to ``SHUTDOWN_GRACE``); a second one stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio
from django.db import close_old_connections, connections
from redis.crc import key_slot

from ..backoff import wait_or_stop
from ..conf import BrokerConfig, get_config
from ..connection import (
    CONNECTION_ERRORS,
    aclose_async_redis,
    get_async_redis,
    is_cluster,
    unavailable,
)
from ..health import HealthServer, ProcessHealth
from ..heartbeat import Heartbeat
from . import registry
from .channels import ChannelSubscriber, ChannelWorker
from .lists import ListWorker
from .registry import ChannelConsumerSpec, ConsumerSpec, ListConsumerSpec, StreamConsumerSpec
from .streams import GroupReads, GroupWorker, exchange, pending_count
from .worker import RETRIED_ERRORS, ConsumerWorker

logger = logging.getLogger("redis_broker.consumers")


def default_consumer_name() -> str:
    """Return ``<hostname>-<pid>``: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def refuse_cluster_problems(specs: Sequence[ConsumerSpec]) -> None:
    """Refuse to start consumers a Redis Cluster cannot run as declared (``check``
    warns about every registered one with W006; starting one is an error)."""
    from ..checks import cluster_problems

    problems = cluster_problems(get_config(), specs)
    if problems:
        raise ValueError("\n".join(f"{p.msg} {p.hint}" for p in problems))


class ConsumerRunner:
    """Run stream consumers until stopped, or in burst mode until nothing is left.

    ``selectors`` pick consumers by name, stream or ``stream:group`` (none: all);
    ``specs`` bypasses discovery (tests, embedding). ``concurrency`` overrides every
    consumer's limit. ``relay_outbox`` also publishes the database outbox.
    ``metrics_port`` serves ``/metrics``, ``/livez`` and ``/readyz`` on
    ``metrics_host`` (0: a free port, echoed at start; see ``health.py``).
    ``run()`` returns the exit status: 0 after a clean (warm) stop or a finished
    burst, 1 after a cold stop that abandoned in-flight entries.
    """

    worker_class = GroupWorker
    list_worker_class = ListWorker
    channel_worker_class = ChannelWorker

    def __init__(
        self,
        selectors: Sequence[str] = (),
        *,
        specs: Sequence[ConsumerSpec] | None = None,
        concurrency: int | None = None,
        consumer_name: str | None = None,
        burst: bool = False,
        relay_outbox: bool = True,
        echo: Callable[[str], Any] | None = None,
        config: BrokerConfig | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = None,
    ) -> None:
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
            raise ValueError(f"concurrency must be a positive int, not {concurrency!r}.")
        if consumer_name is not None and not consumer_name.strip():
            raise ValueError("the consumer name must not be empty.")
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise ValueError(f"the metrics port must be 0-65535, not {metrics_port}.")
        self.selectors = list(selectors)
        self.specs = list(specs) if specs is not None else None
        self.concurrency = concurrency
        self.consumer_name = consumer_name or default_consumer_name()
        self.burst = burst
        self.relay_outbox = relay_outbox
        self.echo = echo or _print
        self.config = config
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.workers: list[ConsumerWorker] = []
        self.health: ProcessHealth | None = None
        self.health_server: HealthServer | None = None
        self.heartbeat: Heartbeat | None = None
        self.subscriber: ChannelSubscriber | None = None
        self._subscription: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._cold: asyncio.Event | None = None

    # -- entry points ------------------------------------------------------------------

    def select(self) -> list[ConsumerSpec]:
        """Discover ``<app>.consumers`` modules and return the selected specs.

        Raises ``ConsumerDefinitionError`` for a bad ``@stream_consumer`` and
        ``LookupError`` for a selector that names nothing.
        """
        if self.specs is not None:
            chosen = self.specs
            if self.selectors:
                chosen = [s for s in chosen if any(s.matches(n) for n in self.selectors)]
            return chosen
        registry.autodiscover()
        return registry.registry.select(self.selectors)

    def run(self) -> int:
        """Run in a new event loop; return the exit status.

        Raises ``BrokerUnavailable`` when Redis does not answer at start.
        """
        specs = self.select()
        refuse_cluster_problems(specs)
        # Connections opened while importing or checking must not leak into the threads.
        connections.close_all()
        try:
            return asyncio.run(self.arun(specs))
        finally:
            connections.close_all()

    def stop(self) -> None:
        """Ask for a warm stop from any thread (the same as a first SIGTERM)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._request_stop, "stop()")

    # -- the loop ----------------------------------------------------------------------

    async def arun(self, specs: Sequence[ConsumerSpec]) -> int:
        """Run ``specs`` on the current event loop; return the exit status."""
        config = self.config or get_config()
        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        self._cold = asyncio.Event()
        client = get_async_redis()
        try:
            self.workers = [self._worker_for(spec, config) for spec in specs]
            share_reads(self.workers, client)
            self.health = ProcessHealth(self.workers, config)
            if self.metrics_port is not None:
                # Serving before the groups exist: /readyz says "starting" meanwhile.
                self.health_server = HealthServer(
                    self.health, host=self.metrics_host, port=self.metrics_port
                )
                try:
                    self.health_server.start()
                except OSError as exc:
                    where = f"{self.metrics_host}:{self.metrics_port}"
                    reason = exc.strerror or exc
                    raise OSError(f"Cannot serve metrics on {where}: {reason}") from exc
            self.heartbeat = Heartbeat(
                client,
                prefix=config.key_prefix,
                name=self.consumer_name,
                interval=config.consumers.heartbeat_interval,
                describe=self._describe,
            )
            await self._start(client, config)
            self.health.started = True
            # The claim's beat said "starting"; say "ready" now, not one interval later,
            # for probeconsumers reading the heartbeat right after a start.
            with contextlib.suppress(*RETRIED_ERRORS):
                await self.heartbeat.beat()
            with self._signals():
                # "Running" only once SIGTERM is ours: a supervisor (or a test) that
                # stops the worker as soon as it reads the line gets a warm stop.
                self._announce()
                code = await self._supervise(client, stop, config)
            self.echo(await self.status_line())
            return code
        finally:
            if self.health_server is not None:
                await asyncio.to_thread(self.health_server.stop)
                self.health_server = None
            if self.heartbeat is not None and self.heartbeat.held:
                with contextlib.suppress(*RETRIED_ERRORS):
                    await self.heartbeat.release()
            await aclose_async_redis()

    async def _start(self, client: redis.asyncio.Redis, config: BrokerConfig) -> None:
        """Check that Redis answers, claim the consumer name, and create every group.

        Raises ``BrokerUnavailable`` when Redis does not answer, and ``ConsumerNameInUse``
        when another live process runs under the same consumer name. The name's claim
        rides in the same round trip as the PING.
        """
        assert self.heartbeat is not None and self._stop is not None
        try:
            await self.heartbeat.claim()
            await _join_groups([w for w in self.workers if isinstance(w, GroupWorker)], client)
            channel_workers = [w for w in self.workers if isinstance(w, ChannelWorker)]
            if channel_workers:
                await self._subscribe(channel_workers, config)
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc, config.url) from exc

    def _worker_for(self, spec: ConsumerSpec, config: BrokerConfig) -> ConsumerWorker:
        """Return the worker of ``spec``'s kind."""
        options: dict[str, Any] = {"concurrency": self.concurrency, "burst": self.burst}
        if isinstance(spec, StreamConsumerSpec):
            return self.worker_class(spec, config=config, consumer=self.consumer_name, **options)
        if isinstance(spec, ListConsumerSpec):
            return self.list_worker_class(
                spec, config=config, consumer=self.consumer_name, **options
            )
        if isinstance(spec, ChannelConsumerSpec):
            return self.channel_worker_class(spec, config=config, **options)
        raise TypeError(f"{spec.path}: no worker runs {type(spec).__name__}")

    async def _subscribe(self, workers: list[ChannelWorker], config: BrokerConfig) -> None:
        """Start the process's Pub/Sub connection; return once Redis confirmed it."""
        assert self._stop is not None
        self.subscriber = ChannelSubscriber(config, workers)
        self._subscription = asyncio.create_task(self.subscriber.run(self._stop), name="pubsub")
        waited = asyncio.create_task(self.subscriber.subscribed.wait())
        done, _ = await asyncio.wait(
            {waited, self._subscription},
            timeout=config.socket_connect_timeout + config.socket_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waited not in done:
            waited.cancel()
            raise TimeoutError("the channel consumers' subscriptions were not confirmed")

    def _announce(self) -> None:
        if self.health_server is not None:
            where = f"http://{self.metrics_host}:{self.health_server.port}"
            self.echo(f"Metrics and health on {where}/metrics, /livez and /readyz")
        if not self.workers:
            self.echo(
                "No consumers are registered (add @stream_consumer, @channel_consumer or "
                "@list_consumer to <app>/consumers.py)."
            )
            return
        self.echo(f"Running {len(self.workers)} consumer(s) as {self.consumer_name}:")
        for w in self.workers:
            kind = "async" if w.spec.is_async else "sync"
            if isinstance(w, GroupWorker):
                what = f"stream={w.spec.stream} group={w.group} consumer={w.consumer}"
                size = f"batch {w.batch_size}, "
            elif isinstance(w, ListWorker):
                what, size = f"list={w.list} consumer={w.consumer}", f"batch {w.batch_size}, "
            else:
                what, size = f"channel={w.spec.source}", ""
            output = f" output={w.spec.output}" if w.spec.output else ""
            self.echo(
                f"  {w.spec.path}  {what}{output} ({kind}, {size}concurrency {w.concurrency})"
            )

    async def _supervise(
        self, client: redis.asyncio.Redis, stop: asyncio.Event, config: BrokerConfig
    ) -> int:
        assert self._cold is not None
        settings = config.consumers
        background: list[asyncio.Task[None]] = [
            *([self._subscription] if self._subscription is not None else []),
            asyncio.create_task(self._report(settings.status_interval, stop), name="status"),
            asyncio.create_task(self._keep_alive(settings.heartbeat_interval, stop), name="beat"),
            asyncio.create_task(
                self._watch(settings.slow_call_warning, settings.liveness_timeout, stop),
                name="watch",
            ),
        ]
        relay = None
        if self.relay_outbox:
            # Imported on use: the outbox needs the ORM, which a runner started with
            # relay_outbox=False (benchmarks, embedding without a database) never loads.
            from ..outbox import OutboxRelay

            relay = OutboxRelay()
            if not self.burst:
                background.append(asyncio.create_task(relay.run(stop), name="outbox"))
        code = 0
        try:
            while True:
                if self.burst and relay is not None:
                    await self._drain(relay)
                code = await self._run_workers(client, stop, config.consumers.shutdown_grace)
                # In burst mode, events the outbox relays now need consuming too.
                if not self.burst or stop.is_set() or code or relay is None:
                    break
                if not await self._drain(relay):
                    break
        finally:
            stop.set()
            if self._cold.is_set():
                for task in background:
                    task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    _surface(task, list(await asyncio.gather(task, return_exceptions=True)))
            if relay is not None and self.burst:
                await relay.aclose()
        return code

    async def _run_workers(
        self, client: redis.asyncio.Redis, stop: asyncio.Event, grace: float
    ) -> int:
        """Run every worker; after a stop request wait ``grace`` seconds, then cancel."""
        assert self._cold is not None
        tasks = [
            asyncio.create_task(w.run(client, stop), name=f"consumer {w}") for w in self.workers
        ]
        if not tasks:
            if not self.burst:
                await stop.wait()
            return 0
        everything = asyncio.gather(*tasks, return_exceptions=True)
        stopping = asyncio.create_task(stop.wait())
        first: set[asyncio.Future[Any]] = {everything, stopping}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if not everything.done():
            cold = asyncio.create_task(self._cold.wait())
            second: set[asyncio.Future[Any]] = {everything, cold}
            await asyncio.wait(second, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            cold.cancel()
            if not everything.done():
                reason = (
                    "second signal" if self._cold.is_set() else f"SHUTDOWN_GRACE of {grace} s over"
                )
                logger.warning(
                    "Cold stop (%s): in-flight entries stay pending and are reclaimed "
                    "after CLAIM_IDLE_MS",
                    reason,
                )
                for task in tasks:
                    task.cancel()
                code = 1
        stopping.cancel()
        for task, result in zip(tasks, await everything, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.error("%s crashed", task.get_name(), exc_info=result)
                code = 1
        return code

    async def _drain(self, relay: Any) -> int:
        """Publish the whole outbox (burst mode); return how many events went out."""
        total = 0
        try:
            while relayed := await relay.relay_once():
                total += relayed
        except Exception:
            logger.exception("Could not relay the outbox")
        return total

    # -- signals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Any:
        """Route SIGTERM and SIGINT to the stop events (main thread only)."""
        loop = asyncio.get_running_loop()
        installed = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._request_stop, signal.Signals(signum).name)
                installed.append(signum)
        try:
            yield
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _request_stop(self, reason: str) -> None:
        assert self._stop is not None and self._cold is not None
        if not self._stop.is_set():
            logger.warning(
                "%s: stopping; finishing in-flight entries (send it again to stop at once)", reason
            )
            self._stop.set()
        else:
            logger.warning("%s again: stopping at once", reason)
            self._cold.set()

    # -- status ------------------------------------------------------------------------

    async def _report(self, interval: float, stop: asyncio.Event) -> None:
        """Every ``interval`` seconds until ``stop``, echo the status line if it changed.

        An idle worker says nothing: a line whose figures (the rate aside) equal the
        last one echoed is skipped. It ends on the event rather than on cancellation: on
        Python 3.11 a cancellation that lands while a Redis read times out can surface
        as a TimeoutError, which the status line treats as "Redis unreachable".
        """
        last_time, last_processed, last_said = time.monotonic(), 0, ""
        while True:
            await wait_or_stop(stop, interval)
            if stop.is_set():
                return
            now = time.monotonic()
            processed = sum(w.stats.processed for w in self.workers)
            rate = (processed - last_processed) / max(now - last_time, 1e-9)
            last_time, last_processed = now, processed
            try:
                figures = await self.status_line()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Could not report the status")
                continue
            if figures != last_said:
                self.echo(f"{figures} rate={rate:.1f}/s")
                last_said = figures

    async def _keep_alive(self, interval: float, stop: asyncio.Event) -> None:
        """Refresh the heartbeat every ``interval`` seconds until ``stop``; survive outages."""
        assert self.heartbeat is not None
        warned = False
        while True:
            await wait_or_stop(stop, interval)
            if stop.is_set():
                return
            try:
                await self.heartbeat.beat()
            except RETRIED_ERRORS as exc:
                logger.debug("Heartbeat not sent (%s)", exc)  # the workers say Redis is down
                continue
            if self.heartbeat.lost and not warned:
                logger.error(
                    "Another process took over the consumer name %r while this one could "
                    "not reach Redis; both now share one pending list. Stop one of them.",
                    self.consumer_name,
                )
            warned = self.heartbeat.lost

    async def _watch(self, threshold: float, liveness: float, stop: asyncio.Event) -> None:
        """Log each handler call that runs longer than ``threshold`` seconds, once, and
        stamp the loop as running for ``/livez`` (which reads it from another thread):
        at least four times per ``liveness`` seconds, so a busy loop is never taken for
        a stopped one."""
        tick = min(1.0, threshold / 2, liveness / 4)
        while True:
            if self.health is not None:
                self.health.tick()
            await wait_or_stop(stop, tick)
            if stop.is_set():
                return
            for worker in self.workers:
                worker.warn_slow_calls(threshold)

    def _describe(self) -> dict[str, Any]:
        """Return the live part of this process's heartbeat."""
        oldest = self._oldest_call_age()
        info: dict[str, Any] = {
            "consumers": [w.describe_for_heartbeat() for w in self.workers],
            "in_flight": sum(w.in_flight() for w in self.workers),
            "oldest_call_s": None if oldest is None else round(oldest, 3),
        }
        if self.health is not None:
            # Written over Redis, so no PING: the beat itself shows Redis answers.
            live, ready = self.health.liveness(), self.health.readiness(ping=False)
            info.update(live=live.ok, ready=ready.ok, problems=[live.line(), ready.line()])
            info["problems"] = [line for line in info["problems"] if line != "ok"]
        return info

    def _oldest_call_age(self) -> float | None:
        starts = [start for w in self.workers if (start := w.oldest_call()) is not None]
        return time.monotonic() - min(starts) if starts else None

    async def status_line(self, rate: float | None = None) -> str:
        """Return ``processed=… failed=… dead-lettered=… in-flight=… pending=… outbox=… rate=…/s``.

        While handler calls run, ``oldest-call=…s`` gives the age of the longest one.
        """
        stats = [w.stats for w in self.workers]
        parts = [
            f"processed={sum(s.processed for s in stats)}",
            f"failed={sum(s.failed for s in stats)}",
            f"dead-lettered={sum(s.dead_lettered for s in stats)}",
        ]
        in_flight = sum(w.in_flight() for w in self.workers)
        if in_flight:
            parts.append(f"in-flight={in_flight}")
        oldest = self._oldest_call_age()
        if oldest is not None:
            parts.append(f"oldest-call={oldest:.1f}s")
        try:
            parts.append(f"pending={await self._pending()}")
        except RETRIED_ERRORS:
            parts.append("pending=?")
        if self.relay_outbox:
            parts.append(f"outbox={await _outbox_backlog()}")
        if rate is not None:
            parts.append(f"rate={rate:.1f}/s")  # last: _report compares what comes before
        return " ".join(parts)

    async def _pending(self) -> int:
        """Return how many entries wait to be settled in Redis, for every consumer: the
        stream groups' XPENDING in one round trip (a hundred streams, one), the rest
        each its own."""
        groups = [w for w in self.workers if isinstance(w, GroupWorker)]
        pending = 0
        for worker in self.workers:
            if not isinstance(worker, GroupWorker):
                pending += await worker.pending()
        if groups:
            commands = [("XPENDING", w.key, w.group) for w in groups]
            client = groups[0].client or get_async_redis()
            for reply in await exchange(client, commands):
                if isinstance(reply, Exception):
                    raise reply
                pending += pending_count(reply)
        return pending


def share_reads(workers: Sequence[ConsumerWorker], client: redis.asyncio.Redis) -> None:
    """Give the stream consumers of one group one ``GroupReads``: one XREADGROUP per
    round for all their streams (on a cluster, per hash slot: one command reaches one
    node)."""
    shared: dict[tuple[str, str, int, int | None], GroupReads] = {}
    cluster = is_cluster(client)
    for worker in workers:
        if isinstance(worker, GroupWorker):
            slot = key_slot(worker.key_bytes) if cluster else None
            key = (worker.group, worker.consumer, worker.batch_size, slot)
            if key not in shared:
                shared[key] = GroupReads(worker.group, worker.consumer, worker.batch_size)
            worker.reads = shared[key]


async def _join_groups(workers: Sequence[GroupWorker], client: redis.asyncio.Redis) -> None:
    """Create every group (MKSTREAM; an existing one is left alone), make this process a
    consumer of each, so requests find a responder from now on, and count what each
    group has pending: one round trip for all of them (a hundred streams start in one,
    not two hundred; on a cluster ``exchange`` sends each node its share at once), which
    tells each worker what its first set-up may skip."""
    if not workers:
        return
    commands: list[tuple[Any, ...]] = []
    for worker in workers:
        commands.append(
            ("XGROUP", "CREATE", worker.key, worker.group, worker.spec.start, "MKSTREAM")
        )
        commands.append(("XGROUP", "CREATECONSUMER", worker.key, worker.group, worker.consumer))
        commands.append(("XPENDING", worker.key, worker.group))
    replies = await exchange(client, commands)
    for reply in replies:
        if isinstance(reply, redis.ResponseError) and not str(reply).startswith("BUSYGROUP"):
            raise reply
    for worker, created, pending in zip(workers, replies[1::3], replies[2::3], strict=True):
        worker.joined(consumer_new=created == 1, nothing_pending=pending_count(pending) == 0)


async def _outbox_backlog() -> str:
    def count() -> str:
        from ..outbox import backlog  # on use, like OutboxRelay in _supervise

        close_old_connections()
        try:
            return str(backlog().count)
        except Exception:
            return "?"
        finally:
            close_old_connections()

    return await asyncio.to_thread(count)


def _surface(task: asyncio.Task[None], results: list[Any]) -> None:
    """Log a background task's crash instead of losing it."""
    for result in results:
        if isinstance(result, Exception):
            logger.error("%s crashed", task.get_name(), exc_info=result)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
