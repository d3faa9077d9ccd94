"""Benchmark: scrape time of ``metrics_view`` with 200 streams, against raw redis-py reads.

Starts a private redis-server and fills it: ``--streams`` streams of 50 entries, each
with a consumer group that has read 10 of them (left pending) through two consumers,
and a dead-letter stream for every tenth. Then times, ``--repeat`` times each:

* ours: ``metrics_view`` called with a bearer token (auth, the bounded SCAN, two
  pipelines, the outbox query, and the Prometheus text rendering);
* ours, reads only: ``read_figures`` (what the view asks Redis, into dataclasses);
* the anchor: a bare redis-py client doing the same Redis reads and nothing else
  (SCAN, one pipeline of TIME/XLEN/XINFO GROUPS/XLEN, one of XPENDING/XINFO CONSUMERS).

Prints the p50 and worst of each, the ratios to the anchor, and our p50 against the
100 ms target. The difference between the two "ours" lines is ``prometheus_client``
building and rendering the families (about 1,800 samples for 200 streams).

With ``--cluster`` it starts a private three-master Redis Cluster instead
(``RedisClusterServer``): the streams spread over the masters, ours reads them with the
cluster client (a SCAN per master, cluster pipelines split per node), and the anchor
does the same reads with a bare ``RedisCluster`` client.

    python bench/metrics.py [--streams 200] [--repeat 50] [--cluster]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
import redis
import redis.cluster
from django.conf import settings

TARGET_MS = 100.0
TOKEN = "bench-only-metrics-token-0123456789"
GROUP = "workers"
ENTRIES = 50


def configure(url: str, *, cluster: bool = False) -> None:
    """Configure a minimal Django project with the app, auth and an in-memory database."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "redis_broker",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        REDIS_BROKER={
            "URL": url,
            "CLUSTER": cluster,
            "STREAM_MAXLEN": None,
            "METRICS_TOKEN": TOKEN,
        },
    )
    django.setup()


def fill(client: redis.Redis, streams: int) -> None:
    """Create the streams, groups, pending entries and dead letters (pipelined)."""
    from redis_broker import wire
    from redis_broker.naming import dead_letter_name

    fields = wire.encode_entry({"order_id": 1, "total": "99.90"}, type="order.created")
    pipe = client.pipeline(transaction=False)
    for n in range(streams):
        stream = f"bench.s{n:03}"
        for _ in range(ENTRIES):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.xgroup_create(stream, GROUP, id="0")
        pipe.xreadgroup(GROUP, "worker-1", {stream: ">"}, count=6)
        pipe.xreadgroup(GROUP, "worker-2", {stream: ">"}, count=4)
        if n % 10 == 0:
            for _ in range(3):
                pipe.xadd(dead_letter_name(stream, ":dlq"), fields)  # type: ignore[arg-type]
    pipe.execute()


def stream_keys(client: redis.Redis) -> list[bytes]:
    """Return every stream key: one SCAN walk (per master on a cluster)."""
    if isinstance(client, redis.cluster.RedisCluster):
        return list(client.scan_iter(match="*", count=1000, _type="stream"))
    keys = []
    cursor = 0
    while True:
        cursor, batch = client.scan(cursor, match="*", count=1000, _type="stream")
        keys.extend(batch)
        if cursor == 0:
            return keys


def raw_reads(client: redis.Redis) -> int:
    """Do the scrape's Redis reads with a bare client; return the groups read."""
    from redis_broker.naming import dead_letter_name, dead_letter_source

    names = sorted(
        {dead_letter_source(key.decode(), ":dlq") or key.decode() for key in stream_keys(client)}
    )
    cluster = isinstance(client, redis.cluster.RedisCluster)
    pipe = client.pipeline(transaction=False)
    if not cluster:
        pipe.time()
    for key in names:
        pipe.xlen(key)
        pipe.xinfo_groups(key)
        pipe.xlen(dead_letter_name(key, ":dlq"))
    replies = [client.time()] if cluster else []
    replies += pipe.execute()
    pipe = client.pipeline(transaction=False)
    groups = 0
    for index, key in enumerate(names):
        for group in replies[2 + 3 * index]:
            pipe.xpending_range(key, group["name"], min="-", max="+", count=1)
            pipe.xinfo_consumers(key, group["name"])
            groups += 1
    pipe.execute()
    return groups


def timed(func: Callable[[], Any], repeat: int) -> list[float]:
    """Return ``repeat`` run times of ``func`` in milliseconds (after one warm-up run)."""
    func()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    """Fill Redis, time ours and the anchor, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="streams, one group each")
    parser.add_argument("--repeat", type=int, default=50, help="scrapes timed per side")
    parser.add_argument(
        "--cluster", action="store_true", help="a private three-master Redis Cluster"
    )
    args = parser.parse_args()

    from redis_broker.testing import RedisClusterServer, RedisServer

    server: RedisServer | RedisClusterServer = (
        RedisClusterServer() if args.cluster else RedisServer()
    )
    with server:
        configure(server.url, cluster=args.cluster)
        from django.core.management import call_command
        from django.test import RequestFactory
        from prometheus_client.parser import text_string_to_metric_families

        from redis_broker.connection import get_redis
        from redis_broker.metrics import metrics_view
        from redis_broker.metrics.scrape import read_figures

        call_command("migrate", verbosity=0)
        raw: Any = (
            redis.cluster.RedisCluster.from_url(server.url)
            if args.cluster
            else redis.Redis.from_url(server.url)
        )
        fill(raw, args.streams)
        request = RequestFactory().get("/broker/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

        def ours() -> bytes:
            response = metrics_view(request)
            assert response.status_code == 200, response.status_code
            return response.content

        body = ours().decode()
        samples = sum(len(f.samples) for f in text_string_to_metric_families(body))
        groups = raw_reads(raw)
        assert groups == args.streams, groups
        client = get_redis()

        def reads() -> object:
            return read_figures(client, prefix="", dead_letter_suffix=":dlq")

        ours_ms = timed(ours, args.repeat)
        reads_ms = timed(reads, args.repeat)
        raw_ms = timed(lambda: raw_reads(raw), args.repeat)
        raw.close()

    version = redis.__version__
    where = "a three-master Redis Cluster" if args.cluster else "one Redis"
    print(f"{args.streams} streams, {groups} groups, {samples} samples ({len(body):,} bytes)")
    print(f"on {where}")
    print(f"redis-py {version}; {args.repeat} scrapes per side\n")
    print(f"{'':34} {'p50 ms':>8} {'max ms':>8}")
    for label, timings in (
        ("ours: metrics_view (full scrape)", ours_ms),
        ("ours: read_figures (reads only)", reads_ms),
        ("anchor: raw redis-py reads only", raw_ms),
    ):
        print(f"{label:34} {statistics.median(timings):8.2f} {max(timings):8.2f}")
    p50 = statistics.median(ours_ms)
    anchor = statistics.median(raw_ms)
    print(f"\nratio full scrape/anchor (p50): {p50 / anchor:.2f}")
    print(f"ratio reads only/anchor (p50):  {statistics.median(reads_ms) / anchor:.2f}")
    verdict = "ok" if p50 < TARGET_MS else "TOO SLOW"
    print(f"target: p50 under {TARGET_MS:.0f} ms for {args.streams} streams: {verdict}")


if __name__ == "__main__":
    main()
