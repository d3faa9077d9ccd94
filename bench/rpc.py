"""Benchmark: our request/reply against FastStream's and a raw redis-py floor.

One private Redis and three responder processes (this script again, ``--serve KIND``),
each answering every request with ``{"price": 10}``:

* ours: a ``@stream_consumer`` and a ``@channel_consumer`` (async handlers returning the
  reply), run by ``ConsumerRunner`` as ``runconsumers`` would;
* FastStream: ``@broker.subscriber(stream=...)`` and ``@broker.subscriber(channel=...)``
  returning the reply (FastStream answers on a Pub/Sub channel named in the request);
* raw redis-py, the floor: the caller XADDs the request with its reply stream's name (one
  per process) and a correlation id; the responder XREADGROUPs, XADDs the reply to that
  stream and XACKs, pipelined in one round trip; the caller XREADs its reply stream.

The caller is this process. Measurements:

1. **Sequential latency.** N requests one after the other (``--quick``: 500), timed
   each, after the responder answered once and 50 warm-up requests: ours with the sync
   ``request()`` and with ``arequest()``, FastStream's ``await broker.request()``, and the
   raw floor, over streams and over channels. Contenders take turns, ``--repeat`` rounds;
   the lowest p50 and the lowest p99 of the rounds count.
2. **Throughput.** 100 concurrent callers (asyncio tasks in one process) share R requests,
   each caller sending its next request when its reply is in; requests per second, best of
   ``--repeat``. FastStream with redis-py's default pool (100 connections) cannot hold 100
   requests in flight (each waits on its own Pub/Sub connection); when it fails, it is run
   again with a pool large enough, and the row says so.
3. **Concurrency.** 10, 100 and then 1,000 callers each send one request at once
   (timeout 10 s); the largest number all answered without error counts, stopping at the
   first failure (the error types and counts are shown). Default settings on both sides.
4. **Connections.** A fresh process (``--connections``) sends 1,000 concurrent
   ``arequest()`` calls while a thread runs ``CLIENT LIST`` in a loop, counting the
   connections whose client port is one of this process's own sockets (psutil), the
   monitor's own connection excepted; the largest count seen while the calls are in flight
   is the figure. The count by client name (``REDIS_BROKER["OPTIONS"]["client_name"]``)
   is printed beside it as a cross-check. When the calls finish before the monitor takes
   a sample, the connections Redis accepted during the child's life (``INFO stats``), the
   monitor's excepted, stand in: an upper bound.
5. **Coalescing (auto-pipelining).** 100 and then 1,000 tasks, each sending its next
   ``arequest()`` when its reply is in, over a stream and over a channel: requests per
   second and the p50/p99 of each call, ``arequest()`` (the calls of one pass of the loop
   share one write, ``redis_broker/autopipeline.py``) against ``before``, this file's copy
   of the uncoalesced send ``arequest()`` made until then (one ``EVALSHA`` or ``PUBLISH``
   per call on a pooled connection, at most 8 at a time per loop). Taking turns,
   ``--repeat`` rounds, the best of each figure counts. The lone caller's figure is the
   sequential latency above, where ``before`` runs too.

Targets, from issue 13: ours p50 <= 2x the raw floor measured in the same run, ours p99
<= 0.5x FastStream's, 1,000 concurrent ``arequest()`` calls on <= 10 Redis connections;
from issue 17: a lone ``arequest()`` no slower than ``before`` (p50).

    python bench/rpc.py            # 2,000 sequential requests, 5,000 for throughput
    python bench/rpc.py --quick    # 500 and 1,000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from django.conf import settings  # noqa: E402

REQUEST = {"sku": "A1", "quantity": 3}
REPLY = {"price": 10}
OURS_STREAM = "bench.rpc.quote"
OURS_CHANNEL = "bench.rpc.quote-live"
FS_STREAM = "bench.rpc.fs-quote"
FS_CHANNEL = "bench.rpc.fs-quote-live"
RAW_STREAM = "bench.rpc.raw-quote"
RAW_GROUP = "raw"
#: Client names of the caller processes, so ``CLIENT LIST`` tells them apart.
CALLER_NAME = "bench-rpc-caller"
CONNECTIONS_NAME = "bench-rpc-1000"
RESPONDER_NAME = "bench-rpc-responder"
MONITOR_NAME = "bench-rpc-monitor"
WARMUP = 50
TIMEOUT = 2.0
#: Timeout of each call in the concurrency ladder and the connection count.
BURST_TIMEOUT = 10.0
THROUGHPUT_CALLERS = 100
#: Concurrent callers of the coalescing measurement, and the requests each sends.
COALESCING_CALLERS = (100, 1000)
LADDER = (10, 100, 1000)
CONNECTIONS_CALLS = 1000
CONNECTIONS_TARGET = 10

Call = Callable[[], Awaitable[None]]


class WrongReply(Exception):
    """A reply arrived but it is not the one the responder sends."""


def check(data: Any) -> None:
    """Raise ``WrongReply`` unless ``data`` is the responders' reply."""
    if data != REPLY:
        raise WrongReply(repr(data))


def configure(url: str, client_name: str) -> None:
    """Configure Django minimally: the app, its Redis (clients named), no database."""
    settings.configure(
        INSTALLED_APPS=["redis_broker"],
        REDIS_BROKER={
            "URL": url,
            "OPTIONS": {"client_name": client_name},
            "CONSUMERS": {"STATUS_INTERVAL": 60.0},
        },
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()
    logging.getLogger("redis_broker").setLevel(logging.ERROR)  # no "stopping" chatter


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Return p50 and p99 of ``samples`` (milliseconds)."""
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def error_summary(errors: list[BaseException]) -> str:
    """Return ``Type x count, ...`` for ``errors``, most frequent first, and the first one."""
    counts = Counter(type(error).__name__ for error in errors)
    summary = ", ".join(f"{name} x{count}" for name, count in counts.most_common())
    return f"{summary}; the first: {errors[0]}" if errors else summary


# --- responders (each in its own process) ------------------------------------------------


def serve_ours(url: str) -> None:
    """Answer over a stream and a channel with our consumers, as ``runconsumers`` would."""
    configure(url, RESPONDER_NAME)
    from redis_broker import channel_consumer, stream_consumer
    from redis_broker.consumers.registry import registry
    from redis_broker.consumers.runner import ConsumerRunner

    @stream_consumer(OURS_STREAM, group="pricing", name="quote")
    async def quote(message: Any) -> dict[str, int]:
        return REPLY

    @channel_consumer(OURS_CHANNEL, name="quote_live")
    async def quote_live(message: Any) -> dict[str, int]:
        return REPLY

    ConsumerRunner(specs=registry.all(), relay_outbox=False, echo=lambda line: None).run()


def serve_faststream(url: str) -> None:
    """Answer over a stream and a channel with FastStream subscribers."""
    from faststream.redis import RedisBroker

    broker = RedisBroker(url, logger=None, client_name=RESPONDER_NAME)

    @broker.subscriber(stream=FS_STREAM)
    async def quote(body: Any) -> dict[str, int]:
        return REPLY

    @broker.subscriber(channel=FS_CHANNEL)
    async def quote_live(body: Any) -> dict[str, int]:
        return REPLY

    async def serve() -> None:
        async with broker:
            await broker.start()
            await asyncio.Event().wait()

    asyncio.run(serve())


def serve_raw(url: str) -> None:
    """The floor's responder: XREADGROUP, then XADD each reply and XACK in one round trip."""
    client = redis.Redis.from_url(url, client_name=RESPONDER_NAME)
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
        client.xgroup_create(RAW_STREAM, RAW_GROUP, id="$", mkstream=True)
    reply = json.dumps(REPLY)
    while True:
        got = client.xreadgroup(RAW_GROUP, "raw-1", {RAW_STREAM: ">"}, count=100, block=1000)
        if not got:
            continue
        entries = got[0][1]
        pipe = client.pipeline(transaction=False)
        for _entry_id, fields in entries:
            pipe.xadd(
                fields[b"reply_to"],
                {"correlation_id": fields[b"correlation_id"], "data": reply},
                maxlen=1000,
                approximate=True,
            )
        pipe.xack(RAW_STREAM, RAW_GROUP, *[entry_id for entry_id, _ in entries])
        pipe.execute()


def start_responder(kind: str, url: str) -> subprocess.Popen[bytes]:
    """Start the ``kind`` responder in its own process."""
    return subprocess.Popen([sys.executable, __file__, "--serve", kind, url], cwd=ROOT)


# --- callers -----------------------------------------------------------------------------


class RawCaller:
    """The floor's caller: one reply stream per process, read with XREAD after each request.

    ``call`` uses a sync client; ``acall`` (on an ``AsyncRawCaller``) the asyncio one.
    """

    def __init__(self, client: Any, inbox: str) -> None:
        self.client = client
        self.inbox = f"bench.rpc.raw-inbox:{os.getpid()}:{inbox}"
        self.last_id: bytes | str = "0-0"
        self.sent = 0
        self.data = json.dumps(REQUEST)

    def next_request(self) -> tuple[dict[str, Any], bytes]:
        """Return the fields of the next request and its correlation id."""
        self.sent += 1
        correlation_id = str(self.sent).encode()
        fields = {"reply_to": self.inbox, "correlation_id": correlation_id, "data": self.data}
        return fields, correlation_id

    def found(self, got: Any, correlation_id: bytes) -> bool:
        """Read the entries XREAD returned; return True when the reply is among them."""
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                if fields[b"correlation_id"] == correlation_id:
                    check(json.loads(fields[b"data"]))
                    return True
        return False

    def call(self, timeout: float = TIMEOUT) -> None:
        """Send one request and wait for its reply."""
        fields, correlation_id = self.next_request()
        self.client.xadd(RAW_STREAM, fields)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.client.xread({self.inbox: self.last_id}, block=int(left * 1000) or 1)
            if self.found(got, correlation_id):
                return
        raise TimeoutError(f"no reply within {timeout} s")

    async def acall(self, within: float = TIMEOUT) -> None:
        """``call`` with the asyncio client."""
        fields, correlation_id = self.next_request()
        await self.client.xadd(RAW_STREAM, fields)
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            got = await self.client.xread({self.inbox: self.last_id}, block=int(left * 1000) or 1)
            if self.found(got, correlation_id):
                return
        raise TimeoutError(f"no reply within {within} s")


def ours_sync(via: str) -> Callable[..., None]:
    """Return a sync call of ours: ``request()`` over ``via``."""
    from redis_broker import request

    destination = OURS_STREAM if via == "stream" else OURS_CHANNEL

    def call(timeout: float = TIMEOUT) -> None:
        check(request(destination, REQUEST, timeout=timeout, via=via).data)

    return call


def ours_async(via: str, timeout: float = TIMEOUT) -> Call:
    """Return an async call of ours: ``arequest()`` over ``via``."""
    from redis_broker import arequest

    destination = OURS_STREAM if via == "stream" else OURS_CHANNEL

    async def call() -> None:
        check((await arequest(destination, REQUEST, timeout=timeout, via=via)).data)

    return call


async def arequest_before(
    destination: str,
    data: Any,
    *,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 - arequest()'s own name
    via: str = "stream",
) -> Any:
    """``arequest()`` as it was before auto-pipelining, the anchor of measurement 5.

    The same inbox, headers, encoding and errors; each send goes on its own: the stream
    script by ``LuaScript.arun`` (EVALSHA on a pooled connection), a channel's PUBLISH by
    ``execute_command``, at most ``MAX_CONCURRENT_SENDS`` at a time per loop.
    """
    from redis_broker import requests as rq
    from redis_broker.conf import get_config
    from redis_broker.connection import apubsub_publish, atranslate_errors, get_async_redis
    from redis_broker.naming import prefixed
    from redis_broker.tracing import producing

    inbox = rq.get_inbox()
    correlation_id = uuid.uuid4().hex
    future = asyncio.wrap_future(inbox.expect(correlation_id))
    try:
        with producing("request", destination, client=True, conversation_id=correlation_id) as span:
            merged = rq._request_headers(inbox, correlation_id, timeout, None)
            message = rq._encode(via, data, "", span.headers(merged))
            async with _before_limit(), atranslate_errors():
                config = get_config()
                key = prefixed(config.key_prefix, destination)
                client = get_async_redis()
                if via == "stream":
                    args = rq._stream_args(config, message)
                    reply = await rq._SEND_TO_STREAM.arun(client, [key], args)
                    sent = await rq._asent(client, config, key, reply, message)
                else:
                    sent = await apubsub_publish(client, key, message) > 0
            if not sent:
                raise rq._nobody(via, destination)
            try:
                async with asyncio.timeout(timeout):
                    fields = await future
            except TimeoutError:
                raise rq._too_slow(via, destination, timeout) from None
    finally:
        inbox.forget(correlation_id)
    return rq._reply(fields, destination)


_before_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _before_limit() -> asyncio.Semaphore:
    """Return the running loop's limit of sends at once, as ``arequest()`` had it."""
    from redis_broker.requests import MAX_CONCURRENT_SENDS

    loop = asyncio.get_running_loop()
    if loop not in _before_limits:
        _before_limits[loop] = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
    return _before_limits[loop]


def ours_before(via: str, timeout: float = TIMEOUT) -> Call:
    """Return an async call of ours as it was before auto-pipelining (``arequest_before``)."""
    destination = OURS_STREAM if via == "stream" else OURS_CHANNEL

    async def call() -> None:
        check((await arequest_before(destination, REQUEST, timeout=timeout, via=via)).data)

    return call


@contextlib.asynccontextmanager
async def faststream_broker(url: str, **options: Any) -> AsyncIterator[Any]:
    """Yield a connected FastStream broker (no subscribers: a caller only)."""
    from faststream.redis import RedisBroker

    broker = RedisBroker(url, logger=None, client_name=CALLER_NAME, **options)
    async with broker:
        await broker.connect()
        yield broker


def faststream_call(broker: Any, via: str, timeout: float = TIMEOUT) -> Call:
    """Return an async call of FastStream's: ``broker.request()`` over ``via``."""
    where = {"stream": FS_STREAM} if via == "stream" else {"channel": FS_CHANNEL}

    async def call() -> None:
        reply = await broker.request(REQUEST, timeout=timeout, **where)
        check(await reply.decode())

    return call


def wait_answering_sync(call: Callable[..., None], what: str) -> None:
    """Call until one request is answered (the responder may still be starting)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            call(timeout=1.0)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer within 30 s, last {exc!r}") from exc
            time.sleep(0.1)


async def wait_answering(call: Call, what: str) -> None:
    """Await ``call`` until one request is answered; ``call`` should time out quickly."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await call()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer within 30 s, last {exc!r}") from exc
            await asyncio.sleep(0.1)


# --- 1. sequential latency ---------------------------------------------------------------


def timed_sync(call: Callable[..., None], count: int) -> list[float]:
    """Warm up, then return the milliseconds each of ``count`` sequential calls takes."""
    for _ in range(WARMUP):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def timed_async(call: Call, count: int) -> list[float]:
    """Warm up, then return the milliseconds each of ``count`` sequential awaits takes."""
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def latency_raw(url: str, count: int) -> list[float]:
    """The floor, sequential, with redis-py's sync client."""
    client = redis.Redis.from_url(url, client_name=CALLER_NAME)
    caller = RawCaller(client, "sync")
    try:
        wait_answering_sync(caller.call, "raw responder")
        return timed_sync(caller.call, count)
    finally:
        client.delete(caller.inbox)
        client.close()


def latency_raw_async(url: str, count: int) -> list[float]:
    """The floor, sequential, with redis-py's asyncio client (for ``arequest()``)."""

    async def run() -> list[float]:
        client = redis.asyncio.Redis.from_url(url, client_name=CALLER_NAME)
        caller = RawCaller(client, "async")
        try:
            await wait_answering(lambda: caller.acall(within=1.0), "raw responder")
            return await timed_async(caller.acall, count)
        finally:
            await client.delete(caller.inbox)
            await client.aclose()

    return asyncio.run(run())


def latency_ours_sync(via: str, count: int) -> list[float]:
    """Ours, ``request()`` from this (the main) thread."""
    call = ours_sync(via)
    wait_answering_sync(call, f"our {via} responder")
    return timed_sync(call, count)


def latency_ours_async(via: str, count: int, *, before: bool = False) -> list[float]:
    """Ours, ``arequest()`` (or ``arequest_before``) on a fresh event loop."""
    make = ours_before if before else ours_async

    async def run() -> list[float]:
        try:
            await wait_answering(make(via, timeout=1.0), f"our {via} responder")
            return await timed_async(make(via), count)
        finally:
            await close_ours()

    return asyncio.run(run())


async def close_ours() -> None:
    """Close the running loop's clients of ours before ``asyncio.run`` closes the loop
    (left open, their sockets would be collected later, with a ResourceWarning each)."""
    from redis_broker.connection import aclose_async_redis

    await aclose_async_redis()


def latency_faststream(url: str, via: str, count: int) -> list[float]:
    """FastStream's ``broker.request()`` on a fresh event loop and broker."""

    async def run() -> list[float]:
        async with faststream_broker(url) as broker:
            await wait_answering(
                faststream_call(broker, via, timeout=1.0), f"FastStream {via} responder"
            )
            return await timed_async(faststream_call(broker, via), count)

    return asyncio.run(run())


def bench_latency(url: str, count: int, repeat: int) -> dict[str, tuple[float, float] | None]:
    """Run every contender ``repeat`` rounds in turn; return its best p50 and best p99."""
    contenders: dict[str, Callable[[], list[float]]] = {
        "raw floor, stream": lambda: latency_raw(url, count),
        "raw floor asyncio, stream": lambda: latency_raw_async(url, count),
        "ours request(), stream": lambda: latency_ours_sync("stream", count),
        "ours arequest(), stream": lambda: latency_ours_async("stream", count),
        "ours before, stream": lambda: latency_ours_async("stream", count, before=True),
        "FastStream, stream": lambda: latency_faststream(url, "stream", count),
        "ours request(), channel": lambda: latency_ours_sync("channel", count),
        "ours arequest(), channel": lambda: latency_ours_async("channel", count),
        "ours before, channel": lambda: latency_ours_async("channel", count, before=True),
        "FastStream, channel": lambda: latency_faststream(url, "channel", count),
    }
    best: dict[str, tuple[float, float] | None] = dict.fromkeys(contenders, (1e9, 1e9))
    for _round in range(repeat):
        for name, run in contenders.items():
            if best[name] is None:
                continue  # failed in an earlier round
            try:
                p50, p99 = percentiles(run())
            except Exception:
                print(f"  !! {name} failed:")
                traceback.print_exc(file=sys.stdout)
                best[name] = None
                continue
            old = best[name]
            assert old is not None
            best[name] = (min(old[0], p50), min(old[1], p99))
    print(f"Sequential request latency, {count:,} requests, best of {repeat} rounds:")
    for name, figures in best.items():
        if figures is None:
            print(f"  {name:<26} failed")
        else:
            print(f"  {name:<26} p50 {figures[0]:6.2f} ms   p99 {figures[1]:6.2f} ms")
    return best


# --- 2. throughput -----------------------------------------------------------------------


async def spread(call: Call, callers: int, total: int) -> float:
    """Run ``callers`` tasks sharing ``total`` sequential calls; return calls per second."""
    each = total // callers

    async def caller() -> None:
        for _ in range(each):
            await call()

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
            for _ in range(callers):
                group.create_task(caller())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return each * callers / (time.perf_counter() - started)


def throughput_ours(via: str, total: int) -> float:
    """Ours: ``THROUGHPUT_CALLERS`` tasks calling ``arequest()``."""

    async def run() -> float:
        try:
            call = ours_async(via)
            await wait_answering(ours_async(via, timeout=1.0), f"our {via} responder")
            return await spread(call, THROUGHPUT_CALLERS, total)
        finally:
            await close_ours()

    return asyncio.run(run())


def throughput_faststream(url: str, via: str, total: int, **options: Any) -> float:
    """FastStream: ``THROUGHPUT_CALLERS`` tasks calling ``broker.request()``."""

    async def run() -> float:
        async with faststream_broker(url, **options) as broker:
            await wait_answering(
                faststream_call(broker, via, timeout=1.0), f"FastStream {via} responder"
            )
            return await spread(faststream_call(broker, via), THROUGHPUT_CALLERS, total)

    return asyncio.run(run())


def best_rate(name: str, run: Callable[[], float], repeat: int) -> tuple[float | None, str]:
    """Return the best of ``repeat`` runs, or None and the error type of the first failure."""
    best = 0.0
    for _ in range(repeat):
        try:
            best = max(best, run())
        except Exception as exc:
            return None, type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return best, ""


def bench_throughput(url: str, total: int, repeat: int) -> dict[str, float | None]:
    """Measure requests/s of 100 concurrent callers, ours and FastStream's, both ways."""
    print(f"{THROUGHPUT_CALLERS} concurrent callers sharing {total:,} requests, best of {repeat}:")
    rates: dict[str, float | None] = {}
    pool = {"max_connections": 2 * THROUGHPUT_CALLERS + 10}
    for via in ("stream", "channel"):
        rows: list[tuple[str, Callable[[], float]]] = [
            (f"ours arequest(), {via}", lambda via=via: throughput_ours(via, total)),
            (f"FastStream, {via}", lambda via=via: throughput_faststream(url, via, total)),
        ]
        for name, run in rows:
            rates[name], error = best_rate(name, run, repeat)
            if rates[name] is not None:
                print(f"  {name:<26} {rates[name]:>8,.0f} requests/s")
                continue
            print(f"  {name:<26}   failed: {error}")
            if name.startswith("FastStream"):
                bigger = f"{name}, max_connections={pool['max_connections']}"
                rates[bigger], error = best_rate(
                    bigger,
                    lambda via=via: throughput_faststream(url, via, total, **pool),
                    repeat,
                )
                shown = f"{rates[bigger]:>8,.0f} requests/s" if rates[bigger] else error
                print(f"  {'  same, pool of ' + str(pool['max_connections']):<26} {shown}")
    return rates


# --- 3. concurrency ladder ---------------------------------------------------------------


async def burst(call: Call, callers: int) -> list[BaseException]:
    """Send ``callers`` calls at once; return the errors (empty: all answered correctly)."""
    results = await asyncio.gather(*(call() for _ in range(callers)), return_exceptions=True)
    return [result for result in results if isinstance(result, BaseException)]


def ladder(make: Callable[[], contextlib.AbstractAsyncContextManager[Call]]) -> tuple[int, str]:
    """Climb ``LADDER``; return the largest rung completed and why the next one failed."""
    done, why = 0, ""
    for callers in LADDER:

        async def run(callers: int = callers) -> list[BaseException]:
            async with make() as call:
                return await burst(call, callers)

        try:
            errors = asyncio.run(run())
        except Exception as exc:
            errors = [exc]
        if errors:
            why = f"{callers:,}: {error_summary(errors)}"
            break
        done = callers
    return done, why


def bench_ladder(url: str) -> dict[str, int]:
    """Find the largest number of concurrent callers each side completes without error."""
    print(
        f"Largest concurrency without error ({', '.join(f'{n:,}' for n in LADDER)} callers, "
        f"one request each, timeout {BURST_TIMEOUT:g} s, default settings):"
    )

    def ours(via: str) -> Callable[[], contextlib.AbstractAsyncContextManager[Call]]:
        @contextlib.asynccontextmanager
        async def make() -> AsyncIterator[Call]:
            try:
                await wait_answering(ours_async(via, timeout=1.0), f"our {via} responder")
                yield ours_async(via, timeout=BURST_TIMEOUT)
            finally:
                await close_ours()

        return make

    def faststream(via: str) -> Callable[[], contextlib.AbstractAsyncContextManager[Call]]:
        @contextlib.asynccontextmanager
        async def make() -> AsyncIterator[Call]:
            async with faststream_broker(url) as broker:
                await wait_answering(faststream_call(broker, via, timeout=1.0), "FastStream")
                yield faststream_call(broker, via, timeout=BURST_TIMEOUT)

        return make

    largest: dict[str, int] = {}
    for via in ("stream", "channel"):
        for name, make in [
            (f"ours arequest(), {via}", ours(via)),
            (f"FastStream, {via}", faststream(via)),
        ]:
            largest[name], why = ladder(make)
            print(f"  {name:<26} {largest[name]:>6,}" + (f"   (failed at {why})" if why else ""))
    return largest


# --- 4. connections of 1,000 concurrent arequest() calls ---------------------------------


def own_ports(redis_port: int) -> set[int]:
    """Return the local ports of this process's TCP connections to Redis."""
    import psutil

    return {
        conn.laddr.port
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == redis_port
    }


def connections_child(url: str, calls: int) -> None:
    """Send ``calls`` concurrent ``arequest()`` calls, counting our connections meanwhile.

    Prints one JSON line: answered, errors, seconds, and the largest number of this
    process's connections seen in ``CLIENT LIST`` while the calls were in flight (by
    socket and by client name) and over the process's whole life, with the sample count.
    """
    redis_port = urlsplit(url).port or 6379
    monitor = redis.Redis.from_url(url, client_name=MONITOR_NAME)
    monitor_id = str(monitor.client_id())
    configure(url, CONNECTIONS_NAME)
    stats: dict[str, Any] = {"in_flight": 0, "ever": 0, "named": 0, "samples": 0, "commands": ""}
    in_flight = threading.Event()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            flying = in_flight.is_set()
            clients = monitor.client_list()
            ports = own_ports(redis_port)
            mine = [
                c
                for c in clients
                if c["id"] != monitor_id and int(c["addr"].rsplit(":", 1)[1]) in ports
            ]
            named = sum(1 for c in clients if c["name"] == CONNECTIONS_NAME)
            stats["ever"] = max(stats["ever"], len(mine))
            if flying and in_flight.is_set():
                if len(mine) >= stats["in_flight"]:
                    commands = Counter(c["cmd"] for c in mine).most_common()
                    stats["commands"] = ", ".join(f"{cmd} x{n}" for cmd, n in commands)
                stats["in_flight"] = max(stats["in_flight"], len(mine))
                stats["named"] = max(stats["named"], named)
                stats["samples"] += 1
            time.sleep(0.001)

    async def run() -> tuple[list[BaseException], float]:
        try:
            await wait_answering(ours_async("stream", timeout=1.0), "our stream responder")
            call = ours_async("stream", timeout=BURST_TIMEOUT)
            in_flight.set()
            started = time.perf_counter()
            errors = await burst(call, calls)
            elapsed = time.perf_counter() - started
            in_flight.clear()
            return errors, elapsed
        finally:
            await close_ours()

    sys.setswitchinterval(0.0005)  # let the sampler in more often while the loop is busy
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        errors, elapsed = asyncio.run(run())
    finally:
        stop.set()
        sampler.join()
    print(
        json.dumps(
            {
                "answered": calls - len(errors),
                "errors": error_summary(errors),
                "seconds": elapsed,
                **stats,
            }
        )
    )


def bench_connections(url: str) -> dict[str, Any] | None:
    """Run ``connections_child`` in a fresh process and print its figures."""
    print(f"{CONNECTIONS_CALLS:,} concurrent arequest() calls over a stream, in a fresh process:")
    client = redis.Redis.from_url(url)
    opened = client.info("stats")["total_connections_received"]
    done = subprocess.run(
        [sys.executable, __file__, "--connections", url, str(CONNECTIONS_CALLS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    opened = client.info("stats")["total_connections_received"] - opened
    client.close()
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        print(f"  !! failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return None
    figures: dict[str, Any] = json.loads(lines[-1])
    figures["accepted"] = opened
    print(
        f"  {figures['answered']:,} answered in {figures['seconds']:.2f} s"
        + (f", errors: {figures['errors']}" if figures["errors"] else "")
        + f"; the caller's connections while in flight: {figures['in_flight']} by socket, "
        f"{figures['named']} by client name ({figures['samples']} CLIENT LIST samples), "
        f"{figures['ever']} over the process's life\n"
        f"  largest sample by last command: {figures['commands']}\n"
        f"  connections Redis accepted meanwhile from any process, the monitor's included: "
        f"{opened}"
    )
    return figures


# --- 5. coalescing: arequest() against the uncoalesced send ------------------------------


async def loaded(call: Call, callers: int, each: int) -> tuple[float, list[float]]:
    """Run ``callers`` tasks, each making ``each`` sequential calls; return calls per
    second and the milliseconds of every call."""
    samples: list[float] = []

    async def caller() -> None:
        for _ in range(each):
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(callers):
                group.create_task(caller())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return callers * each / (time.perf_counter() - started), samples


def coalescing_run(via: str, callers: int, each: int, *, before: bool) -> tuple[float, ...]:
    """One round on a fresh loop: requests/s, p50 and p99 (ms), and for ours the
    commands per write of the auto-pipeline."""
    make = ours_before if before else ours_async

    async def run() -> tuple[float, ...]:
        from redis_broker.autopipeline import autopipeline
        from redis_broker.connection import get_async_redis

        try:
            await wait_answering(make(via, timeout=1.0), f"our {via} responder")
            pipeline = autopipeline(get_async_redis())
            batches, commands = pipeline.batches, pipeline.commands
            rate, samples = await loaded(make(via, timeout=BURST_TIMEOUT), callers, each)
            per_write = (pipeline.commands - commands) / max(pipeline.batches - batches, 1)
            return (rate, *percentiles(samples), per_write)
        finally:
            await close_ours()

    return asyncio.run(run())


def bench_coalescing(total: int, repeat: int) -> dict[str, tuple[float, ...]]:
    """Measure ``arequest()`` under 100 and 1,000 concurrent callers against ``before``."""
    print(
        f"Coalescing: {', '.join(f'{n:,}' for n in COALESCING_CALLERS)} concurrent callers, "
        f"each sending its next request when its reply is in, best of {repeat}:"
    )
    best: dict[str, tuple[float, ...]] = {}
    for via in ("stream", "channel"):
        for callers in COALESCING_CALLERS:
            each = max(total // callers, 5)
            for _round in range(repeat):
                for before in (False, True):
                    name = f"{'before' if before else 'arequest()'}, {via}, {callers:,}"
                    figures = coalescing_run(via, callers, each, before=before)
                    old = best.get(name)
                    if old is not None:
                        figures = (
                            max(old[0], figures[0]),
                            min(old[1], figures[1]),
                            min(old[2], figures[2]),
                            figures[3],
                        )
                    best[name] = figures
            for before in (False, True):
                name = f"{'before' if before else 'arequest()'}, {via}, {callers:,}"
                rate, p50, p99, per_write = best[name]
                writes = "" if before else f"   {per_write:5.1f} requests per write"
                print(
                    f"  {name:<27} {rate:>8,.0f} requests/s   p50 {p50:7.2f} ms   "
                    f"p99 {p99:7.2f} ms{writes}"
                )
            after = best[f"arequest(), {via}, {callers:,}"]
            then = best[f"before, {via}, {callers:,}"]
            print(
                f"  {'  arequest() / before':<27} {after[0] / then[0]:>8.2f}x throughput, "
                f"p50 {after[1] / then[1]:.2f}x, p99 {after[2] / then[2]:.2f}x"
            )
    return best


# --- main --------------------------------------------------------------------------------


def verdict(value: float | None, target: float) -> str:
    """Return ``[<= target] ok|MISSED`` for ``value`` (None: a contender failed)."""
    return f"[<= {target:g}] " + ("ok" if value is not None and value <= target else "MISSED")


def print_targets(
    latency: dict[str, tuple[float, float] | None], connections: dict[str, Any] | None
) -> None:
    """Print the issue's targets against this run's figures."""
    print("Targets (against the asyncio floor in parentheses, for information):")
    floor = latency.get("raw floor, stream")
    async_floor = latency.get("raw floor asyncio, stream")
    for via in ("stream", "channel"):
        theirs = latency.get(f"FastStream, {via}")
        for kind in ("request()", "arequest()"):
            ours = latency.get(f"ours {kind}, {via}")
            p50 = ours[0] / floor[0] if ours and floor else None
            p99 = ours[1] / theirs[1] if ours and theirs else None
            label = f"ours {kind}, {via}"
            shown = f"{p50:6.2f}x" if p50 is not None else "   n/a"
            extra = ""
            if kind == "arequest()" and ours and async_floor:
                extra = f" ({ours[0] / async_floor[0]:.2f}x the asyncio floor)"
            print(f"  {label + ': p50 / raw floor p50':<48} {shown} {verdict(p50, 2)}{extra}")
            shown = f"{p99:6.2f}x" if p99 is not None else "   n/a"
            print(f"  {label + ': p99 / FastStream p99':<48} {shown} {verdict(p99, 0.5)}")
        ours, before = latency.get(f"ours arequest(), {via}"), latency.get(f"ours before, {via}")
        lone = ours[0] / before[0] if ours and before else None
        label = f"lone arequest(), {via}: p50 / before p50"
        shown = f"{lone:6.2f}x" if lone is not None else "   n/a"
        print(f"  {label:<48} {shown} {verdict(lone, 1)}")
    if connections is None:
        print(f"  {CONNECTIONS_CALLS:,} concurrent arequest(): failed {verdict(None, 10)}")
        return
    # The calls may all be answered before the monitor's first sample: the connections
    # Redis accepted meanwhile, the monitor's excepted, bound the count in flight then.
    sampled = connections["samples"] > 0
    count = connections["in_flight"] if sampled else connections["accepted"] - 1
    all_answered = connections["answered"] == CONNECTIONS_CALLS
    label = f"{CONNECTIONS_CALLS:,} concurrent arequest(): caller's connections"
    print(
        f"  {label:<48} {count:>6}  {verdict(count if all_answered else None, CONNECTIONS_TARGET)}"
        + ("" if all_answered else " (not all answered)")
        + ("" if sampled else " (no sample in flight: all Redis accepted meanwhile)")
    )


def main() -> None:
    """Parse arguments, start the responders, run every measurement, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="500 sequential requests, 1,000 for throughput"
    )
    parser.add_argument("--requests", type=int, help="sequential requests (default 2,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per contender; best counts")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--connections", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, url = args.serve
        {"ours": serve_ours, "faststream": serve_faststream, "raw": serve_raw}[kind](url)
        return
    if args.connections:
        connections_child(args.connections[0], int(args.connections[1]))
        return

    count = args.requests or (500 if args.quick else 2_000)
    total = 1_000 if args.quick else 5_000

    from redis_broker.testing import RedisServer, stop_process

    server = RedisServer()
    url = server.start()
    responders: list[subprocess.Popen[bytes]] = []
    try:
        configure(url, CALLER_NAME)
        responders = [start_responder(kind, url) for kind in ("ours", "faststream", "raw")]
        client = redis.Redis.from_url(url)
        print(
            f"Redis {client.info()['redis_version']}, Python {sys.version.split()[0]}, "
            f"redis-py {redis.__version__}, FastStream {importlib.metadata.version('faststream')}"
            f", {os.cpu_count()} CPUs; request {json.dumps(REQUEST)}, reply {json.dumps(REPLY)}; "
            "responders in 3 processes"
        )
        client.close()
        latency = bench_latency(url, count, args.repeat)
        bench_throughput(url, total, args.repeat)
        bench_ladder(url)
        connections = bench_connections(url)
        bench_coalescing(total, args.repeat)
        print_targets(latency, connections)
    finally:
        for process in responders:
            stop_process(process)
        server.close()


if __name__ == "__main__":
    main()
