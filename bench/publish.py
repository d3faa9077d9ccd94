"""Benchmark: publish() and publish_many() against raw redis-py on the same work.

Runs on a private redis-server (or REDIS_URL), in one process, and prints throughputs
and the ratios ours/raw. "Raw" is what a team would hand-write to produce the same
entries: json.dumps of the payload, a uuid4 and a timestamp, then XADD with the same
approximate MAXLEN. A second raw figure (one pre-encoded field) shows the floor.

Then 100 asyncio tasks awaiting ``apublish()`` and a durable ``abroadcast()``, auto-pipelined,
against what they sent before (``bench/publish.py``'s ``concurrent_cost``).

Then the cost of metrics per publish(): publish() with ``REDIS_BROKER["METRICS"]`` on
and off (interleaved; a Redis round trip is noisy next to a counter), and the counter
increment itself, timed alone (target: <= 0.1 ms per publish()).

    python bench/publish.py [--seconds 3] [--batch 100]

With ``--cluster`` it starts a private Redis Cluster (three masters, one replica each)
beside its private single Redis and prints, for publish(), publish_many() and the raw
equivalents, the rate on each and the ratio cluster/single node; then publish() with
``WAIT_REPLICAS = 1`` (the failover promise) against publish() without it.

    python bench/publish.py --cluster [--seconds 3] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
import redis
from django.conf import settings

PAYLOAD = {"order_id": 123456, "customer": "c" * 120, "total": "99.90", "items": [1, 2, 3]}
MAXLEN = 100_000


def raw_fields() -> dict[str, str]:
    """Return what a hand-written producer would append: the same four fields."""
    return {
        "type": "order.created",
        "data": json.dumps(PAYLOAD),
        "event_id": str(uuid.uuid4()),
        "published_at": datetime.now(UTC).isoformat(),
    }


#: The durable channels of the concurrent measurement (a capped stream beside Pub/Sub).
DURABLE = "bench.live.ours"
DURABLE_BEFORE = "bench.live.before"


def configure(url: str) -> None:
    settings.configure(
        INSTALLED_APPS=["redis_broker"],
        REDIS_BROKER={
            "URL": url,
            "STREAM_MAXLEN": MAXLEN,
            "WEBSOCKET": {"DURABLE_CHANNELS": ["bench.live.*"]},
        },
        DATABASES={},
    )
    django.setup()


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Return events per second of ``fn`` (which returns how many events it sent)."""
    fn()  # warm up: connection, caches
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        done += fn()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--batch", type=int, default=100, help="entries per publish_many")
    parser.add_argument(
        "--cluster", action="store_true", help="compare a private Redis Cluster with a single node"
    )
    args = parser.parse_args()

    if args.cluster:
        from bench.cluster import single_and_cluster

        with single_and_cluster(masters=3, replicas=1) as (url, cluster):
            measure_cluster(url, cluster.url, args.seconds, args.batch)
        return

    from redis_broker.testing import redis_url_or_private

    with redis_url_or_private() as url:
        measure(url, args.seconds, args.batch)


def measure(url: str, seconds: float, batch_size: int) -> None:
    """Time ours and raw redis-py against the Redis at ``url`` and print the ratios."""
    configure(url)
    from redis_broker import publish, publish_many

    raw = redis.Redis.from_url(url)
    payload_text = json.dumps(PAYLOAD)
    print(f"Redis {raw.info()['redis_version']} at {url}; payload {len(payload_text)} bytes")

    def ours_one() -> int:
        publish("bench.ours", PAYLOAD, type="order.created")
        return 1

    def raw_one() -> int:
        raw.xadd("bench.raw", raw_fields(), maxlen=MAXLEN, approximate=True)
        return 1

    def raw_one_floor() -> int:
        raw.xadd("bench.floor", {"data": payload_text}, maxlen=MAXLEN, approximate=True)
        return 1

    batch = [PAYLOAD] * batch_size

    def ours_many() -> int:
        publish_many("bench.ours", batch, type="order.created")
        return batch_size

    def raw_many() -> int:
        pipe = raw.pipeline(transaction=False)
        for _ in range(batch_size):
            pipe.xadd("bench.raw", raw_fields(), maxlen=MAXLEN, approximate=True)
        pipe.execute()
        return batch_size

    def raw_many_floor() -> int:
        pipe = raw.pipeline(transaction=False)
        for _ in range(batch_size):
            pipe.xadd("bench.floor", {"data": payload_text}, maxlen=MAXLEN, approximate=True)
        pipe.execute()
        return batch_size

    # Interleave ours and raw twice so drift on a busy machine hits both alike.
    results: dict[str, list[float]] = {}
    for _ in range(2):
        for name, fn in [
            ("publish()", ours_one),
            ("raw xadd", raw_one),
            ("raw xadd, one pre-encoded field", raw_one_floor),
            (f"publish_many() x{batch_size}", ours_many),
            (f"raw pipeline x{batch_size}", raw_many),
            (f"raw pipeline x{batch_size}, one pre-encoded field", raw_many_floor),
        ]:
            results.setdefault(name, []).append(rate(fn, seconds / 2))
    best = {name: max(values) for name, values in results.items()}
    width = max(map(len, best))
    for name, value in best.items():
        print(f"  {name:<{width}}  {value:>10,.0f} entries/s")
    one = best["publish()"] / best["raw xadd"]
    many = best[f"publish_many() x{batch_size}"] / best[f"raw pipeline x{batch_size}"]
    print(f"ratio publish()/raw xadd:               {one:.2f}  (target >= 0.85)")
    print(f"ratio publish_many()/raw pipeline:      {many:.2f}  (target >= 0.85)")
    floor = best[f"raw pipeline x{batch_size}, one pre-encoded field"]
    floor_ratio = best[f"publish_many() x{batch_size}"] / floor
    print(f"ratio publish_many()/pre-encoded floor:  {floor_ratio:.2f}  (4 fields vs 1)")
    raw.close()
    concurrent_cost(url, seconds)
    metrics_cost(seconds)


TASKS = 100


async def abroadcast_before(channel: str, data: Any) -> int:
    """A durable ``abroadcast()`` as it was before auto-pipelining: the same encoding,
    span and errors, the script sent on its own (``LuaScript.arun``: EVALSHA on a pooled
    connection)."""
    from redis_broker.conf import get_config
    from redis_broker.connection import atranslate_errors, get_async_redis
    from redis_broker.metrics.process import count_published
    from redis_broker.publishing import _DURABLE_BROADCAST, _durable_args
    from redis_broker.tracing import producing

    config = get_config()
    with producing("broadcast", channel) as span:
        keys, args = _durable_args(config, channel, data, "order.created", span.headers(None))
        span.message_id(args[3])
        async with atranslate_errors():
            client = get_async_redis()
            _entry_id, receivers = await _DURABLE_BROADCAST["PUBLISH"].arun(client, keys, args)
    if config.metrics:
        count_published("channel")
    return int(receivers)


def concurrent_cost(url: str, seconds: float) -> None:
    """100 asyncio tasks, each awaiting ``apublish()`` one at a time (auto-pipelined: one
    write per pass of the loop), against raw redis-py's async ``xadd`` awaited the same
    way, and against one raw pipeline of 100 XADDs at a time (the same total); then a
    lone caller against redis-py's ``xadd`` (what ``apublish()`` sent before). Then the
    same for a durable ``abroadcast()`` (one script: XADD and PUBLISH), 100 tasks and a
    lone one, against ``abroadcast_before`` (the script sent on its own, as before)."""
    import asyncio

    import redis.asyncio

    from redis_broker import abroadcast, apublish
    from redis_broker.connection import aclose_async_redis, get_async_redis

    async def run(step: Callable[[], Any], tasks: int, per_call: int, span: float) -> float:
        done = 0
        deadline = time.perf_counter() + span

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await step()
                done += per_call

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return done / (time.perf_counter() - started)

    async def measure_all() -> dict[str, float]:
        raw = redis.asyncio.Redis.from_url(url)

        def ours() -> Any:
            return apublish("bench.c.ours", PAYLOAD, type="order.created")

        def raw_one() -> Any:
            return raw.xadd("bench.c.raw", raw_fields(), maxlen=MAXLEN, approximate=True)

        async def raw_pipeline() -> None:
            pipe = raw.pipeline(transaction=False)
            for _ in range(TASKS):
                pipe.xadd("bench.c.raw", raw_fields(), maxlen=MAXLEN, approximate=True)
            await pipe.execute()

        def before() -> Any:  # what apublish() sent until auto-pipelining
            return get_async_redis().xadd(
                "bench.c.before", raw_fields(), maxlen=MAXLEN, approximate=True
            )

        def durable() -> Any:
            return abroadcast(DURABLE, PAYLOAD, type="order.created")

        def durable_before() -> Any:
            return abroadcast_before(DURABLE_BEFORE, PAYLOAD)

        results: dict[str, list[float]] = {}
        for _ in range(2):
            for name, step, tasks, per_call in [
                (f"{TASKS} tasks, apublish()", ours, TASKS, 1),
                (f"{TASKS} tasks, raw async xadd", raw_one, TASKS, 1),
                (f"raw async pipeline x{TASKS}", raw_pipeline, 1, TASKS),
                ("1 task, apublish()", ours, 1, 1),
                ("1 task, client.xadd (before)", before, 1, 1),
                (f"{TASKS} tasks, durable abroadcast()", durable, TASKS, 1),
                (f"{TASKS} tasks, durable, script.arun (before)", durable_before, TASKS, 1),
                ("1 task, durable abroadcast()", durable, 1, 1),
                ("1 task, durable, script.arun (before)", durable_before, 1, 1),
            ]:
                await run(step, tasks, per_call, 0.2)  # warm up
                results.setdefault(name, []).append(await run(step, tasks, per_call, seconds / 2))
        await raw.aclose()
        await aclose_async_redis()
        return {name: max(values) for name, values in results.items()}

    best = asyncio.run(measure_all())
    print(f"Concurrent async publishing ({TASKS} tasks, one call at a time each):")
    width = max(map(len, best))
    for name, value in best.items():
        print(f"  {name:<{width}}  {value:>10,.0f} entries/s")
    ours = best[f"{TASKS} tasks, apublish()"]
    one_by_one = ours / best[f"{TASKS} tasks, raw async xadd"]
    pipelined = ours / best[f"raw async pipeline x{TASKS}"]
    print(f"ratio apublish()/raw async xadd:        {one_by_one:.2f}  (target >= 3)")
    print(f"ratio apublish()/raw async pipeline:    {pipelined:.2f}  (target >= 0.7)")
    lone = best["1 task, apublish()"] / best["1 task, client.xadd (before)"]
    print(f"ratio lone apublish()/before:           {lone:.2f}  (target >= 1, no slower)")
    durable = best[f"{TASKS} tasks, durable abroadcast()"]
    durable /= best[f"{TASKS} tasks, durable, script.arun (before)"]
    print(f"ratio durable abroadcast()/before:      {durable:.2f}  ({TASKS} tasks)")
    lone = best["1 task, durable abroadcast()"] / best["1 task, durable, script.arun (before)"]
    print(f"ratio lone durable abroadcast()/before: {lone:.2f}  (target >= 1, no slower)")


def measure_cluster(single_url: str, cluster_url: str, seconds: float, batch_size: int) -> None:
    """Time the same publishes on a single Redis and on a cluster; print both and the ratio.

    Ours and raw alternate between the two targets twice; the best of each counts.
    """
    from django.test import override_settings

    from bench.cluster import client
    from redis_broker import publish, publish_many

    configure(single_url)
    targets = {
        "single": ({"URL": single_url}, client(single_url, cluster=False)),
        "cluster": ({"URL": cluster_url, "CLUSTER": True}, client(cluster_url, cluster=True)),
    }
    batch = [PAYLOAD] * batch_size
    encoded = json.dumps(PAYLOAD)

    def work(raw: Any) -> list[tuple[str, Callable[[], int]]]:
        def ours_one() -> int:
            publish("bench.ours", PAYLOAD, type="order.created")
            return 1

        def ours_many() -> int:
            publish_many("bench.ours", batch, type="order.created")
            return batch_size

        def raw_one() -> int:
            raw.xadd("bench.raw", {"data": encoded}, maxlen=MAXLEN, approximate=True)
            return 1

        def raw_many() -> int:
            pipe = raw.pipeline(transaction=False)
            for _ in range(batch_size):
                pipe.xadd("bench.raw", {"data": encoded}, maxlen=MAXLEN, approximate=True)
            pipe.execute()
            return batch_size

        return [
            ("publish()", ours_one),
            (f"publish_many() x{batch_size}", ours_many),
            ("raw xadd, one field", raw_one),
            (f"raw pipeline x{batch_size}, one field", raw_many),
        ]

    best: dict[tuple[str, str], float] = {}
    for _ in range(2):
        for target, (broker, raw) in targets.items():
            with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, **broker}):
                for name, fn in work(raw):
                    value = rate(fn, seconds / 2)
                    best[name, target] = max(best.get((name, target), 0.0), value)
    names = [name for name, _ in work(None)]
    width = max(map(len, names))
    print(f"Single Redis against a 3-master cluster with a replica each ({PAYLOAD_NOTE}):")
    print(f"  {'':<{width}}  {'single':>12}  {'cluster':>12}  cluster/single")
    for name in names:
        single, on_cluster = best[name, "single"], best[name, "cluster"]
        print(
            f"  {name:<{width}}  {single:>12,.0f}  {on_cluster:>12,.0f}  {on_cluster / single:6.2f}"
        )
    # The failover promise: each publish() waits until a replica holds its entry.
    waited = 0.0
    broker = {**settings.REDIS_BROKER, "URL": cluster_url, "CLUSTER": True, "WAIT_REPLICAS": 1}
    with override_settings(REDIS_BROKER=broker):
        for _ in range(2):
            waited = max(waited, rate(work(None)[0][1], seconds / 2))
    plain = best["publish()", "cluster"]
    print(
        f"  publish() with WAIT_REPLICAS=1 on the cluster: {waited:,.0f} entries/s, "
        f"{waited / plain:.2f} of publish() without ({(1 / waited - 1 / plain) * 1e6:+.0f} us each)"
    )
    for _, raw in targets.values():
        raw.close()


#: How the cluster table names what it publishes.
PAYLOAD_NOTE = "entries/s, best of 2"


def metrics_cost(seconds: float) -> None:
    """Print what counting costs per publish(): on/off, and the counter alone."""
    from django.test import override_settings

    from redis_broker import publish
    from redis_broker.metrics.process import count_published

    def ours_one() -> int:
        publish("bench.metrics", PAYLOAD, type="order.created")
        return 1

    best = {True: 0.0, False: 0.0}
    for _ in range(3):
        for on in (True, False):
            with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "METRICS": on}):
                best[on] = max(best[on], rate(ours_one, seconds / 3))
    added_us = (1 / best[True] - 1 / best[False]) * 1e6
    calls = 1_000_000
    started = time.perf_counter()
    for _ in range(calls):
        count_published("stream")
    counter_us = (time.perf_counter() - started) / calls * 1e6
    print("Metrics cost per publish() (target <= 100 us):")
    print(f"  publish(), metrics on   {best[True]:>10,.0f} entries/s")
    print(f"  publish(), metrics off  {best[False]:>10,.0f} entries/s")
    print(f"  on/off {best[True] / best[False]:.3f}x: {added_us:+.2f} us per publish() (noisy)")
    verdict = "ok" if counter_us <= 100 else "MISSED"
    print(f"  the counter alone: {counter_us:.3f} us per publish() {verdict}")


if __name__ == "__main__":
    main()
