"""Benchmark: our stream consumers against a raw redis-py loop and FastStream.

Pre-fills one stream with entries of about 200 bytes of JSON (our wire format), then
consumes the same data once per contender, each in its own consumer group:

* ours, async handler and sync handler (``ConsumerRunner`` in burst mode);
* raw redis-py asyncio: ``XREADGROUP COUNT 100``, ``json.loads`` of ``data``, await the
  handler, one ``XACK`` per batch: what a team would hand-write;
* FastStream's Redis stream subscriber in a consumer group, per message and ``batch=True``.

Then whole processes, start-up included: ``manage.py runconsumers --burst`` against a
raw redis-py loop run as a script, each consuming every entry in a new group.

Then publish-to-handler latency (p50/p99) at 2,000 entries/s for ours, raw and FastStream
(the producer is a separate process), and the worker's peak RSS after 20k and after all
entries (a fresh process, so earlier runs do not count).

The cost of metrics: ours again with ``REDIS_BROKER["METRICS"] = False`` (no counter,
no histogram), interleaved with metrics on, and the ratio (target: on >= 90 % of off).

How cost grows with streams: the same number of entries spread over 1, 10 and 100
streams, one consumer each, all in one runner; per-entry cost of each and max/min
(target: within 20 %).

Then the engine's figures again (throughput against the raw loop, whole processes, 1/10/
100 streams) in a child process that runs without hiredis: ``hiredis`` is hidden from it
(``sys.modules["hiredis"] = None`` before redis-py is imported), so redis-py, ours and the
raw loop alike, parse replies and pack commands in pure Python, as on an install
without hiredis. ``--no-hiredis`` runs a whole invocation that way.

Child processes run with bytecode caches, as an installed package has them: their
``PYTHONDONTWRITEBYTECODE`` is dropped and ``PYTHONPYCACHEPREFIX`` points at a
temporary directory, which an untimed first run of each fills.

    python bench/consume.py            # 100,000 entries
    python bench/consume.py --quick    # 20,000 entries, shorter latency runs
    python bench/consume.py --metrics-cost   # only the metrics on/off comparison
    python bench/consume.py --engine   # only the engine's figures, with and without hiredis
    python bench/consume.py --engine --no-hiredis   # only without hiredis

With ``--cluster`` it starts a private three-master Redis Cluster beside its private
single Redis and measures instead: the same consumers (ours async and sync, the raw
loop) on both, with the ratio cluster/single node; then three streams, each with a
consumer, placed on three masters (names chosen by slot) against all three on one
master (one hash tag), consumed by one process and by three, with the CPU each
redis-server and the consumer processes used (what limits the rate).

    python bench/consume.py --cluster [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import configure_consumers, fill_stream  # noqa: E402

#: Set in the environment of a run without hiredis, so that its child processes (the
#: burst and raw-loop scripts, the producer) run without it too.
NO_HIREDIS = "BENCH_NO_HIREDIS"
if "--no-hiredis" in sys.argv or os.environ.get(NO_HIREDIS):
    os.environ[NO_HIREDIS] = "1"
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis: ImportError

import redis  # noqa: E402
import redis.asyncio  # noqa: E402
import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402
from django.conf import settings  # noqa: E402

STREAM = "bench.consume"
LATENCY_STREAM = "bench.latency"
PAYLOAD = {"order_id": 123456, "customer": "c" * 120, "total": "99.90", "items": [1, 2, 3]}
#: FastStream per message is ~30x slower; this many entries give a stable rate.
FASTSTREAM_PER_MESSAGE_CAP = 20_000
#: A throughput contender: its name, its entry count, a run given a group name, its rounds.
Contender = tuple[str, int, Callable[[str], Any], int]


def configure(url: str, *, cluster: bool = False) -> None:
    """Configure Django for the app alone on ``url`` (``cluster``: a cluster)."""
    configure_consumers(url, **({"CLUSTER": True} if cluster else {}))


def raw_client(url: str, *, cluster: bool = False) -> Any:
    """Return a sync redis-py client of ``url`` (``cluster``: a cluster client)."""
    if cluster:
        return redis.cluster.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def prefill(url: str, count: int, *, stream: str = STREAM, cluster: bool = False) -> int:
    """Append ``count`` entries in our wire format; return the size of one ``data`` field."""
    client = raw_client(url, cluster=cluster)
    try:
        return fill_stream(client, stream, count, PAYLOAD, type="order.created")
    finally:
        client.close()


def group(
    url: str, name: str, stream: str = STREAM, start: str = "0", *, cluster: bool = False
) -> None:
    """Create consumer group ``name`` at ``start`` (FastStream would create it at ``$``)."""
    client = raw_client(url, cluster=cluster)
    client.xgroup_create(stream, name, id=start, mkstream=True)
    client.close()


# --- contenders (throughput) -------------------------------------------------------------


def run_ours(handler: Callable[[Any], Any], name: str, *, metrics: bool = True) -> None:
    """Consume the whole stream with our runner in burst mode (metrics on or off)."""
    from django.test import override_settings

    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    spec = StreamConsumerSpec(func=handler, stream=STREAM, group=name, name=name)
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "METRICS": metrics}):
        ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None).run()


async def run_raw(
    url: str,
    name: str,
    count: int,
    handler: Callable[[Any], Awaitable[None]],
    *,
    cluster: bool = False,
) -> None:
    """The hand-written loop: XREADGROUP COUNT 100, decode, await the handler, XACK the batch."""
    if cluster:
        client: Any = redis.asyncio.cluster.RedisCluster.from_url(url)
    else:
        client = redis.asyncio.Redis.from_url(url)
    done = 0
    while done < count:
        reply = await client.xreadgroup(name, "raw-1", {STREAM: ">"}, count=100, block=1000)
        if not reply:
            break
        entries = reply[0][1]
        for _entry_id, fields in entries:
            await handler(json.loads(fields[b"data"]))
        await client.xack(STREAM, name, *[entry_id for entry_id, _ in entries])
        done += len(entries)
    await client.aclose()


async def run_faststream(url: str, name: str, count: int, *, batch: bool) -> None:
    """Consume with FastStream's stream subscriber in a consumer group."""
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url, logger=None)
    seen = 0
    finished = asyncio.Event()
    sub = StreamSub(STREAM, group=name, consumer="fs-1", batch=batch, max_records=100)

    if batch:

        @broker.subscriber(stream=sub)
        async def handle_batch(body: list[Any]) -> None:
            nonlocal seen
            seen += len(body)
            if seen >= count:
                finished.set()

    else:

        @broker.subscriber(stream=sub)
        async def handle(body: Any) -> None:
            nonlocal seen
            seen += 1
            if seen >= count:
                finished.set()

    async with broker:
        await broker.start()
        await finished.wait()


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Return the wall-clock and the CPU seconds (this process, all threads) ``fn`` takes."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


# --- whole processes, start-up included ------------------------------------------------


def burst_child(url: str, name: str) -> None:
    """Run ``runconsumers --burst`` with one trivial consumer in group ``name``."""
    configure(url)
    from django.core.management import call_command

    from redis_broker import stream_consumer

    @stream_consumer(STREAM, group=name, name="bench")
    async def handle(message: Any) -> None:
        pass

    call_command("runconsumers", "--burst", "--no-outbox", verbosity=0)


def raw_child(url: str, name: str, count: int) -> None:
    """Consume ``count`` entries with the hand-written loop."""

    async def handler(data: Any) -> None:
        pass

    asyncio.run(run_raw(url, name, count, handler))


_PYCACHE = tempfile.TemporaryDirectory(prefix="bench-consume-pycache-")


def child_env() -> dict[str, str]:
    """Return the environment of a timed child: bytecode cached (in a temporary
    directory), as an installed package's is, whatever this shell says."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": _PYCACHE.name}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def process_seconds(*args: str) -> float:
    """Return the wall-clock seconds a child process of this script takes, start to exit."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.DEVNULL, env=child_env()
    )
    return time.perf_counter() - started


def whole_processes(url: str, entries: int, repeat: int) -> float:
    """Print ``runconsumers --burst`` against the raw loop script over every entry, start-up
    included (best of ``repeat``, interleaved, after an untimed run of each that fills
    the bytecode cache); return raw / burst."""
    group(url, "burst-warm", start="$")
    process_seconds("--burst-child", url, "burst-warm")
    group(url, "rawp-warm", start="$")
    process_seconds("--raw-child", url, "rawp-warm", "0")
    burst, raw = float("inf"), float("inf")
    for attempt in range(repeat):
        group(url, f"burst-{attempt}")
        burst = min(burst, process_seconds("--burst-child", url, f"burst-{attempt}"))
        group(url, f"rawp-{attempt}")
        raw = min(raw, process_seconds("--raw-child", url, f"rawp-{attempt}", str(entries)))
    ratio = raw / burst
    print(f"Whole processes over {entries:,} entries, start-up included, best of {repeat}:")
    print(f"  runconsumers --burst   {burst:6.2f} s   {entries / burst:>10,.0f} entries/s")
    print(f"  raw loop script        {raw:6.2f} s   {entries / raw:>10,.0f} entries/s")
    print(f"  burst / raw            {ratio:6.2f}x [>= 0.8] {'ok' if ratio >= 0.8 else 'MISSED'}")
    return ratio


# --- latency -----------------------------------------------------------------------------


def produce(url: str, rate: int, count: int) -> None:
    """Publish ``count`` entries at ``rate`` per second, each stamped with its send time."""
    from redis_broker import wire

    client = redis.Redis.from_url(url)
    interval = 1 / rate
    next_at = time.perf_counter()
    for n in range(count):
        now = time.perf_counter()
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        fields = wire.encode_entry({"n": n, "sent": time.time_ns(), "pad": "x" * 120})
        client.xadd(LATENCY_STREAM, fields)
    client.close()


def start_producer(url: str, rate: int, count: int) -> subprocess.Popen[bytes]:
    """Start the producer in its own process, so it does not share our GIL."""
    return subprocess.Popen(
        [sys.executable, __file__, "--produce", url, str(rate), str(count)], cwd=ROOT
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Return p50 and p99 of ``samples`` (milliseconds)."""
    cuts = statistics.quantiles(samples, n=100)
    return statistics.median(samples), cuts[98]


def latency_ours(url: str, rate: int, count: int) -> tuple[float, float]:
    """Measure publish-to-handler latency of our runner (async handler, default BLOCK_MS)."""
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    samples: list[float] = []
    runner: ConsumerRunner

    async def handler(message: Any) -> None:
        samples.append((time.time_ns() - message.data["sent"]) / 1e6)
        if len(samples) >= count:
            runner.stop()

    group(url, "lat-ours", LATENCY_STREAM, "$")
    spec = StreamConsumerSpec(func=handler, stream=LATENCY_STREAM, group="lat-ours", name="lat")
    runner = ConsumerRunner(specs=[spec], relay_outbox=False, echo=lambda line: None)
    producer = start_producer(url, rate, count)
    runner.run()
    producer.wait()
    return percentiles(samples)


def latency_raw(url: str, rate: int, count: int) -> tuple[float, float]:
    """Measure publish-to-handler latency of the raw loop."""
    samples: list[float] = []

    async def consume() -> None:
        client = redis.asyncio.Redis.from_url(url)
        await client.xgroup_create(LATENCY_STREAM, "lat-raw", id="$", mkstream=True)
        producer = start_producer(url, rate, count)
        while len(samples) < count:
            reply = await client.xreadgroup(
                "lat-raw", "raw-1", {LATENCY_STREAM: ">"}, count=100, block=1000
            )
            if not reply:
                continue
            entries = reply[0][1]
            for _entry_id, fields in entries:
                data = json.loads(fields[b"data"])
                samples.append((time.time_ns() - data["sent"]) / 1e6)
            await client.xack(LATENCY_STREAM, "lat-raw", *[e[0] for e in entries])
        await client.aclose()
        await asyncio.to_thread(producer.wait)

    asyncio.run(consume())
    return percentiles(samples)


def latency_faststream(url: str, rate: int, count: int) -> tuple[float, float]:
    """Measure publish-to-handler latency of FastStream's stream subscriber (per message)."""
    from faststream.redis import RedisBroker, StreamSub

    samples: list[float] = []

    async def consume() -> None:
        broker = RedisBroker(url, logger=None)
        finished = asyncio.Event()
        group(url, "lat-fs", LATENCY_STREAM, "$")

        @broker.subscriber(stream=StreamSub(LATENCY_STREAM, group="lat-fs", consumer="fs-1"))
        async def handle(body: Any) -> None:
            # FastStream parses the ``data`` field of a foreign entry as the body.
            samples.append((time.time_ns() - body["sent"]) / 1e6)
            if len(samples) >= count:
                finished.set()

        async with broker:
            await broker.start()
            producer = start_producer(url, rate, count)
            await finished.wait()
            await asyncio.to_thread(producer.wait)

    asyncio.run(consume())
    return percentiles(samples)


# --- memory ------------------------------------------------------------------------------


def rss_child(url: str, count: int) -> None:
    """Consume ``count`` entries with our runner; print peak RSS (KiB) at 20k and at the end."""
    configure(url)
    marks: dict[int, int] = {}
    seen = 0
    first_mark = min(20_000, count // 5)

    async def handler(message: Any) -> None:
        nonlocal seen
        seen += 1
        if seen in (first_mark, count):
            marks[seen] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    group(url, "rss")
    run_ours(handler, "rss")
    print(json.dumps({str(k): v for k, v in marks.items()}))


def peak_rss(url: str, count: int) -> dict[int, int]:
    """Run ``rss_child`` in a fresh process and return its marks."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", url, str(count)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


# --- main --------------------------------------------------------------------------------


def metrics_cost(url: str, entries: int) -> None:
    """Print ours with metrics on and off (interleaved, best of each) and the ratios."""
    print(f"Metrics cost, best of interleaved runs ({entries:,} entries; target on/off >= 0.90):")
    for kind, handler in [("async", _trivial_async), ("sync", _trivial_sync)]:
        best: dict[bool, tuple[float, float]] = {True: (0.0, 0.0), False: (0.0, 0.0)}
        for round_ in range(2):  # on, off, on, off: drift on a busy machine hits both
            for on in (True, False):
                name = f"m{kind}-{'on' if on else 'off'}-{round_}"
                rate, cpu = measure(
                    url,
                    name,
                    entries,
                    lambda g, on=on, handler=handler: run_ours(handler, g, metrics=on),
                )
                best[on] = (max(best[on][0], rate), max(best[on][1], cpu))
        for on in (True, False):
            print(
                f"  {kind:<5} metrics {'on ' if on else 'off'}  {best[on][0]:>10,.0f} entries/s"
                f"   {best[on][1]:>10,.0f} per CPU second"
            )
        ratio, cpu_ratio = best[True][0] / best[False][0], best[True][1] / best[False][1]
        per_entry_us = (1 / best[True][1] - 1 / best[False][1]) * 1e6
        print(
            f"  {kind:<5} on/off {ratio:5.2f}x, CPU {cpu_ratio:5.2f}x "
            f"({per_entry_us:+.2f} us CPU per entry) "
            f"{'ok' if min(ratio, cpu_ratio) >= 0.9 else 'MISSED'}"
        )


async def _trivial_async(message: Any) -> None:
    pass


def _trivial_sync(message: Any) -> None:
    pass


async def _trivial_raw(data: Any) -> None:
    pass


def measure(url: str, name: str, count: int, run: Callable[[str], Any]) -> tuple[float, float]:
    """Run ``run`` once in a new group ``name``; return its wall-clock and CPU rates.

    The CPU rate (entries per CPU second of the consumer) shrugs off other load on the
    machine; the Redis server's own work is not in it.
    """
    group(url, name)
    wall, cpu = timed(lambda: run(name))
    return count / wall, count / cpu


def throughput(
    url: str, contenders: list[Contender], repeat: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Print and return the best wall-clock and CPU rates of ``(name, entries, run, runs)``
    contenders, interleaved round by round (drift on a busy machine hits all alike)."""
    rates: dict[str, float] = {}
    cpu_rates: dict[str, float] = {}
    for attempt in range(repeat):
        for name, _count, run, runs in contenders:
            if attempt < runs:
                rate, cpu = measure(url, f"{name}-{attempt}", _count, run)
                rates[name] = max(rates.get(name, 0.0), rate)
                cpu_rates[name] = max(cpu_rates.get(name, 0.0), cpu)
    for name, count, _run, _runs in contenders:
        print(
            f"  {name:<18} {rates[name]:>10,.0f} entries/s   "
            f"{cpu_rates[name]:>10,.0f} per CPU second   ({count:,} entries)"
        )
    return rates, cpu_rates


def print_ratios(checks: list[tuple[str, float, float | None]]) -> None:
    """Print ``(label, ratio, target)`` lines with ok/MISSED against the target."""
    for label, ratio, target in checks:
        verdict = (
            "" if target is None else (f"[>= {target}] " + ("ok" if ratio >= target else "MISSED"))
        )
        print(f"  {label:<26} {ratio:6.2f}x {verdict}")


#: The layouts of the streams run: the same entries over this many streams.
STREAM_COUNTS = (1, 10, 100)


def streams_cost(url: str, entries: int, repeat: int) -> None:
    """Print the per-entry cost of one runner consuming ``entries`` spread over 1, 10 and
    100 streams (one consumer each, one group name), best of ``repeat``, and max/min."""
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    layouts = {n: [f"bench.streams.{n}.{i}" for i in range(n)] for n in STREAM_COUNTS}
    for n, names in layouts.items():
        for name in names:
            prefill(url, entries // n, stream=name)
    best = {n: (float("inf"), float("inf")) for n in layouts}
    for attempt in range(repeat):
        for n, names in layouts.items():
            name = f"spread-{attempt}"
            for stream in names:
                group(url, name, stream)
            specs = [
                StreamConsumerSpec(func=_trivial_async, stream=stream, group=name, name=f"c{i}")
                for i, stream in enumerate(names)
            ]
            runner = ConsumerRunner(
                specs=specs, burst=True, relay_outbox=False, echo=lambda line: None
            )
            wall, cpu = timed(runner.run)
            total = entries // n * n
            best[n] = (min(best[n][0], wall / total * 1e6), min(best[n][1], cpu / total * 1e6))
    print(
        f"The same {entries:,} entries over 1, 10 and 100 streams, a consumer each, one "
        f"process (runner in burst mode, start-up included; best of {repeat}):"
    )
    for n, (wall_us, cpu_us) in best.items():
        print(f"  {n:>3} stream(s)   {wall_us:5.2f} us per entry   {cpu_us:5.2f} us CPU per entry")
    walls, cpus = [w for w, _ in best.values()], [c for _, c in best.values()]
    spread, cpu_spread = max(walls) / min(walls), max(cpus) / min(cpus)
    print(
        f"  max/min {spread:5.2f}x, CPU {cpu_spread:5.2f}x [<= 1.2] "
        f"{'ok' if max(spread, cpu_spread) <= 1.2 else 'MISSED'}"
    )


def header(url: str, entries: int, size: int) -> None:
    """Print the versions, the parser redis-py uses, and the data's size."""
    import redis.utils

    client = redis.Redis.from_url(url)
    hiredis = (
        f"hiredis {importlib.metadata.version('hiredis')}"
        if redis.utils.HIREDIS_AVAILABLE
        else "no hiredis (pure-Python parser and packer)"
    )
    print(
        f"Redis {client.info()['redis_version']}, Python {sys.version.split()[0]}, "
        f"redis-py {redis.__version__} with {hiredis}; "
        f"{entries:,} entries, data {size} bytes, "
        f"{client.memory_usage(STREAM) // entries} bytes per entry in Redis"
    )
    client.close()


def engine_contenders(url: str, entries: int, repeat: int) -> list[Contender]:
    """Return the engine's contenders: ours (async and sync handlers) and the raw loop."""
    return [
        ("ours-async", entries, lambda g: run_ours(_trivial_async, g), repeat),
        ("ours-sync", entries, lambda g: run_ours(_trivial_sync, g), repeat),
        ("raw", entries, lambda g: asyncio.run(run_raw(url, g, entries, _trivial_raw)), repeat),
    ]


def engine_ratios(
    rates: dict[str, float], cpu_rates: dict[str, float]
) -> list[tuple[str, float, float | None]]:
    """Return the engine's ratios to the raw loop, wall-clock and CPU, with their targets."""
    return [
        ("async / raw", rates["ours-async"] / rates["raw"], 0.9),
        ("async / raw, CPU", cpu_rates["ours-async"] / cpu_rates["raw"], None),
        ("sync / raw", rates["ours-sync"] / rates["raw"], 0.5),
        ("sync / raw, CPU", cpu_rates["ours-sync"] / cpu_rates["raw"], None),
    ]


def engine(url: str, entries: int, repeat: int) -> None:
    """Print the engine's figures: ours against the raw loop in this process, whole
    processes, and 1/10/100 streams."""
    print(f"Throughput, best of {repeat}, interleaved:")
    rates, cpu_rates = throughput(url, engine_contenders(url, entries, repeat), repeat)
    print("Ratios of entries/s (targets in brackets):")
    print_ratios(engine_ratios(rates, cpu_rates))
    whole_processes(url, entries, repeat)
    streams_cost(url, entries, repeat)


def without_hiredis(entries: int, repeat: int) -> None:
    """Run the engine's figures again in a child process that runs without hiredis."""
    print("\nWithout hiredis (a child process with hiredis hidden from redis-py):", flush=True)
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--engine",
            "--no-hiredis",
            f"--entries={entries}",
            f"--repeat={repeat}",
        ],
        check=True,
        env=child_env(),
    )


def main() -> None:
    """Parse arguments, run every measurement, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries, short latency runs")
    parser.add_argument("--entries", type=int, help="entries to pre-fill (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; best counts")
    parser.add_argument("--produce", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--burst-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--raw-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--metrics-cost", action="store_true", help="only compare metrics on and off"
    )
    parser.add_argument(
        "--cluster", action="store_true", help="compare a private Redis Cluster with a single node"
    )
    parser.add_argument(
        "--engine",
        action="store_true",
        help="only the engine's figures (against the raw loop, whole processes, 1/10/100 "
        "streams), with hiredis and then without",
    )
    parser.add_argument(
        "--no-hiredis",
        action="store_true",
        help="hide hiredis from redis-py in this run and its children (pure-Python parser)",
    )
    parser.add_argument("--spread-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spread_child:
        spread_child(*args.spread_child)
        return
    if args.cluster:
        cluster_main(args.entries or (20_000 if args.quick else 100_000), args.repeat)
        return
    if args.burst_child:
        burst_child(*args.burst_child)
        return
    if args.raw_child:
        raw_child(args.raw_child[0], args.raw_child[1], int(args.raw_child[2]))
        return
    if args.produce:
        url, rate, count = args.produce
        produce(url, int(rate), int(count))
        return
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return

    entries = args.entries or (20_000 if args.quick else 100_000)
    latency_count = 4_000 if args.quick else 10_000
    hidden = bool(os.environ.get(NO_HIREDIS))

    from redis_broker.testing import RedisServer

    server = RedisServer()
    url = server.start()
    try:
        configure(url)
        header(url, entries, prefill(url, entries))
        if args.engine:
            engine(url, entries, args.repeat)
        elif args.metrics_cost:
            metrics_cost(url, entries)
        else:
            everything(url, entries, args.repeat, latency_count)
    finally:
        server.close()
    if not hidden and not args.metrics_cost:
        without_hiredis(entries, args.repeat)


def everything(url: str, entries: int, repeat: int, latency_count: int) -> None:
    """Print every figure of the default run."""
    fs_count = min(entries, FASTSTREAM_PER_MESSAGE_CAP)
    contenders = [
        *engine_contenders(url, entries, repeat),
        (
            "faststream",
            fs_count,
            lambda g: asyncio.run(run_faststream(url, g, fs_count, batch=False)),
            1,
        ),
        (
            "faststream-batch",
            entries,
            lambda g: asyncio.run(run_faststream(url, g, entries, batch=True)),
            repeat,
        ),
    ]
    print(f"Throughput, best of {repeat}, interleaved (FastStream per message: one run):")
    rates, cpu_rates = throughput(url, contenders, repeat)
    print("Ratios of entries/s (targets in brackets):")
    print_ratios(
        [
            *engine_ratios(rates, cpu_rates),
            ("async / FastStream", rates["ours-async"] / rates["faststream"], 10),
            ("async / FastStream batch", rates["ours-async"] / rates["faststream-batch"], 1.5),
            ("sync / FastStream", rates["ours-sync"] / rates["faststream"], None),
        ]
    )
    whole_processes(url, entries, repeat)

    print(f"Publish-to-handler latency at 2,000 entries/s ({latency_count:,} entries):")
    for name, latency in [
        ("ours", latency_ours),
        ("raw", latency_raw),
        ("faststream", latency_faststream),
    ]:
        p50, p99 = latency(url, 2000, latency_count)
        print(f"  {name:<12} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")

    metrics_cost(url, entries)

    marks = peak_rss(url, entries)
    first, last = marks[min(marks)], marks[max(marks)]
    growth = (last - first) / first * 100
    print(
        f"Peak RSS of an async worker: {first / 1024:.1f} MiB after {min(marks):,} entries, "
        f"{last / 1024:.1f} MiB after {max(marks):,} ({growth:+.1f} %) "
        f"[<= +10 %] {'ok' if growth <= 10 else 'MISSED'}"
    )
    streams_cost(url, entries, repeat)


# --- --cluster ---------------------------------------------------------------------------


def cluster_main(entries: int, repeat: int) -> None:
    """Run the ``--cluster`` measurements on a private single Redis and cluster."""
    from bench.cluster import single_and_cluster

    with single_and_cluster(masters=3) as (single_url, cluster):
        configure(single_url)
        same_work(single_url, cluster.url, entries, repeat)
        spread(cluster, entries, repeat)


def same_work(single_url: str, cluster_url: str, entries: int, repeat: int) -> None:
    """Print ours (async, sync) and the raw loop on one stream, single node against cluster."""
    from django.test import override_settings

    async def trivial(message: Any) -> None:
        pass

    def trivial_sync(message: Any) -> None:
        pass

    targets = {"single": (single_url, False), "cluster": (cluster_url, True)}
    for url, on_cluster in targets.values():
        prefill(url, entries, cluster=on_cluster)
    best: dict[tuple[str, str], float] = {}
    for attempt in range(repeat):  # single, cluster, single, ...: drift hits both alike
        for target, (url, on_cluster) in targets.items():
            broker = {**settings.REDIS_BROKER, "URL": url, "CLUSTER": on_cluster}
            contenders: list[tuple[str, Callable[[str], Any]]] = [
                ("ours-async", lambda g: run_ours(trivial, g)),
                ("ours-sync", lambda g: run_ours(trivial_sync, g)),
                (
                    "raw",
                    lambda g, u=url, c=on_cluster: asyncio.run(
                        run_raw(u, g, entries, _raw_trivial, cluster=c)
                    ),
                ),
            ]
            with override_settings(REDIS_BROKER=broker):
                for name, run in contenders:
                    group_name = f"{name}-{attempt}"
                    group(url, group_name, cluster=on_cluster)
                    wall, _cpu = timed(lambda g=group_name, r=run: r(g))
                    key = (name, target)
                    best[key] = max(best.get(key, 0.0), entries / wall)
    print(
        f"One stream, {entries:,} entries, single Redis against a 3-master cluster "
        f"(entries/s, best of {repeat}):"
    )
    print(f"  {'':<12} {'single':>10} {'cluster':>10}  cluster/single")
    for name in ("ours-async", "ours-sync", "raw"):
        single, on_cluster = best[name, "single"], best[name, "cluster"]
        print(f"  {name:<12} {single:>10,.0f} {on_cluster:>10,.0f}  {on_cluster / single:6.2f}")


async def _raw_trivial(data: Any) -> None:
    pass


def spread(cluster: Any, entries: int, repeat: int) -> None:
    """Print three streams' consumers on three masters against the same on one master.

    Each layout is consumed by one process (one runner, three consumers) and by three
    (one consumer each, started and imported before the clock starts). Beside the rate:
    the CPU each master's redis-server used, and the consumer processes', per second
    of the run (1.0 = one core busy the whole time).
    """
    from django.test import override_settings

    from bench.cluster import masters, names_by_master, names_on_one_master

    per_stream = entries // 3
    layouts = {
        "3 masters": names_by_master(cluster, "bench.spread.", 3),
        "1 master": names_on_one_master("bench.one", 3),
    }
    for streams in layouts.values():
        for stream in streams:
            prefill(cluster.url, per_stream, stream=stream, cluster=True)
    nodes = masters(cluster)
    results: dict[tuple[str, str], tuple[float, float, list[float]]] = {}
    broker = {**settings.REDIS_BROKER, "URL": cluster.url, "CLUSTER": True}
    with override_settings(REDIS_BROKER=broker):
        for attempt in range(repeat):
            for layout, streams in layouts.items():
                for mode in ("1 process", "3 processes"):
                    name = f"spread-{attempt}-{mode[0]}"
                    for stream in streams:
                        group(cluster.url, name, stream, cluster=True)
                    run = _spread_in_process if mode == "1 process" else _spread_in_children
                    rate, client_cores, server_cores = run(
                        cluster.url, streams, name, per_stream, nodes
                    )
                    if rate > results.get((layout, mode), (0.0, 0.0, []))[0]:
                        results[layout, mode] = (rate, client_cores, server_cores)
    print(
        f"Three streams of {per_stream:,} entries, a consumer each, on 3 masters against "
        f"1 master (best of {repeat}; CPU in cores busy during the run):"
    )
    for mode in ("1 process", "3 processes"):
        for layout in layouts:
            rate, client_cores, server_cores = results[layout, mode]
            servers = " ".join(f"{cores:.2f}" for cores in sorted(server_cores, reverse=True))
            print(
                f"  {mode:<11} {layout:<9} {rate:>10,.0f} entries/s   consumers "
                f"{client_cores:.2f}, redis-servers {servers}"
            )
        ratio = results["3 masters", mode][0] / results["1 master", mode][0]
        verdict = "ok" if ratio >= 1.5 else "MISSED"
        print(f"  {mode:<11} 3 masters / 1 master {ratio:6.2f}x [>= 1.5] {verdict}")
    # What limits the rate: CPU per entry on each side, from one process on one master.
    rate, client_cores, server_cores = results["1 master", "1 process"]
    client_us, server_us = client_cores / rate * 1e6, sum(server_cores) / rate * 1e6
    print(
        f"  CPU per entry: {client_us:.1f} us in the consumer process, {server_us:.1f} us in "
        f"redis-server: one master on one core keeps up with about {1e6 / server_us:,.0f} "
        f"entries/s, one consumer process with {1e6 / client_us:,.0f}"
    )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"  (this machine: {os.cpu_count()} cores for the consumers and every node; "
        f"load average {load})"
    )


class _Window:
    """CPU the redis-servers spend over a stretch of wall-clock time."""

    def __init__(self, nodes: list[Any]) -> None:
        from bench.cluster import cpu_seconds

        self.nodes, self.cpu_seconds = nodes, cpu_seconds
        self.before, self.started = cpu_seconds(nodes), time.perf_counter()

    def close(self, entries: int, client_cpu: float, ended: float | None = None) -> Any:
        """Return entries/s, the consumers' cores and each server's cores busy since
        the start (until ``ended``, a ``perf_counter`` time, or now)."""
        after = self.cpu_seconds(self.nodes)
        wall = (ended or time.perf_counter()) - self.started
        servers = [(a - b) / wall for a, b in zip(after, self.before, strict=True)]
        return entries / wall, client_cpu / wall, servers


def _spread_in_process(
    url: str, streams: list[str], name: str, per_stream: int, nodes: list[Any]
) -> tuple[float, float, list[float]]:
    """Consume ``streams`` with one runner here; return entries/s, its cores and the
    servers' (see ``_Window``)."""
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    async def trivial(message: Any) -> None:
        pass

    specs = [
        StreamConsumerSpec(func=trivial, stream=stream, group=name, name=f"c{i}")
        for i, stream in enumerate(streams)
    ]
    runner = ConsumerRunner(specs=specs, burst=True, relay_outbox=False, echo=lambda line: None)
    window = _Window(nodes)
    _wall, cpu = timed(runner.run)
    return window.close(per_stream * len(streams), cpu)


def _spread_in_children(
    url: str, streams: list[str], name: str, per_stream: int, nodes: list[Any]
) -> tuple[float, float, list[float]]:
    """Consume each stream in a process of its own, all started (Django imported) before
    the clock starts; return entries/s, their cores and the servers' (``_Window``)."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--spread-child", url, stream, name],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for stream in streams
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    window = _Window(nodes)
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    cpu, ends = 0.0, []
    for child in children:
        out, _ = child.communicate()
        child_cpu, end = out.strip().splitlines()[-1].split()
        cpu, ends = cpu + float(child_cpu), [*ends, float(end)]
    # Until the last child finished consuming; their exits (interpreter teardown) are
    # not consuming.
    return window.close(per_stream * len(streams), cpu, max(ends))


def spread_child(url: str, stream: str, name: str) -> None:
    """Consume one stream in burst mode once told to go; print the CPU seconds it took
    and when it finished (``perf_counter``)."""
    configure(url, cluster=True)
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    async def trivial(message: Any) -> None:
        pass

    spec = StreamConsumerSpec(func=trivial, stream=stream, group=name, name="c")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    print("ready", flush=True)
    sys.stdin.readline()
    _wall, cpu = timed(runner.run)
    print(cpu, time.perf_counter(), flush=True)  # the parent shares this monotonic clock


if __name__ == "__main__":
    main()
