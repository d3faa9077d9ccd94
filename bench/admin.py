"""Benchmark: render time of every admin inspector page on a stream of 1,000,000 entries.

Starts a private redis-server, fills one stream (pipelined XADDs), gives it a consumer
group with pending entries, a dead-letter stream and a Pub/Sub subscriber, then times
each inspector page through Django's test client (in-memory SQLite, a logged-in
superuser). Prints the median and worst of several renders per page, and the stream
entries each page asked Redis for (from INFO commandstats), against a 300 ms target.

Then the search (``redis_broker.inspector.search``): an event id found at several depths
of the stream (the newest entry, the 100,000th newest, the middle, the oldest), a
payload substring at the oldest entry, and the chunk size of the Lua scan, each with
where the entry was and how many entries were scanned; the 300 ms target is met only
while the entry is within the first few hundred thousand scanned (printed, not fatal).

Last, the overview's paging (``queries.stream_page``) in an emptied database: 200
streams, then 50,000 (pipelined XADDs, one entry each; every 10th with a group, every
50th with a dead-letter stream), timing the first page, a page far into the walk, the
live poll of a page (its span), a page filtered by name, and, for comparison, what
sorted pages would cost before any row is read: one SCAN of the whole keyspace and a
sort. ``--cluster`` runs that part alone on a private three-master cluster.

    python bench/admin.py [--entries 1000000] [--repeat 7] [--streams 50000]
                          [--overview-only] [--cluster]
"""

from __future__ import annotations

import argparse
import html
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
import redis
import redis.cluster
from django.conf import settings

STREAM = "shop.orders"
GROUP = "billing"
TARGET_MS = 300.0
BATCH = 5000
#: Keys of other types added beside the streams of the overview's paging benchmark.
OTHER_KEYS = 200_000

urlpatterns: list[Any] = []  # filled in configure(): this module is the bench's URLconf


def configure(url: str, *, cluster: bool = False) -> None:
    """Configure a minimal Django project with the admin and the inspector."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "redis_broker",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF=__name__,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        STATIC_URL="static/",
        USE_TZ=True,
        REDIS_BROKER={"URL": url, "STREAM_MAXLEN": None, "CLUSTER": cluster},
    )
    django.setup()
    from django.contrib import admin
    from django.urls import path

    urlpatterns.append(path("admin/", admin.site.urls))


#: Event ids of the entries the search looks for, by position (0 = the oldest).
EVENT_IDS: dict[int, str] = {}


def fill(client: redis.Redis, entries: int) -> list[bytes]:
    """Append ``entries`` wire-format entries with pipelined XADDs; return a few ids.

    Each entry has its own event id; those at the positions the search benchmark looks
    for are kept in ``EVENT_IDS``.
    """
    from redis_broker import wire

    template = wire.encode_entry({"order_id": 0, "total": "99.90"}, type="order.created")
    wanted = {0, entries // 2, max(0, entries - 100_000), entries - 1}
    ids: list[bytes] = []
    started = time.perf_counter()
    for offset in range(0, entries, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(offset, min(offset + BATCH, entries)):
            event_id = wire.new_event_id()
            if n in wanted:
                EVENT_IDS[n] = event_id
            pipe.execute_command(
                "XADD",
                STREAM,
                "*",
                wire.TYPE,
                template[wire.TYPE],
                wire.DATA,
                f'{{"order_id":{n},"total":"99.90","note":"<b>{n}</b>"}}',
                wire.EVENT_ID,
                event_id,
                wire.PUBLISHED_AT,
                template[wire.PUBLISHED_AT],
            )
        replies = pipe.execute()
        ids.append(replies[0])
    print(f"filled {entries:,} entries in {time.perf_counter() - started:.1f} s")
    return ids


def bench_search(raw: redis.Redis, entries: int, repeat: int) -> None:
    """Time the stream search at several depths and chunk sizes; print where each entry was."""
    from redis_broker.connection import get_redis
    from redis_broker.inspector import search

    client = get_redis()

    def timed(by: search.SearchBy, needle: str, window: int) -> tuple[float, float, int, int]:
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            result = search.search_entries(
                client, prefix="", name=STREAM, by=by, needle=needle, window=window
            )
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings), max(timings), result.scanned, len(result.entries)

    print(f"\nsearch of {STREAM} ({entries:,} entries), chunk {search.SEARCH_CHUNK:,}")
    head = f"{'what (position from the newest)':48} {'median ms':>10} {'max ms':>8}"
    print(f"{head} {'scanned':>10}  found  <300ms")
    cases: list[tuple[str, search.SearchBy, str]] = [
        ("entry id (any position: XRANGE id id)", "id", raw.xrange(STREAM, count=1)[0][0].decode()),
    ]
    for position, event_id in sorted(EVENT_IDS.items(), reverse=True):
        depth = entries - position
        cases.append((f"event id, entry {depth:,} from the newest", "event_id", event_id))
    cases.append((f"payload contains, entry {entries:,} (oldest)", "payload", '"order_id":0,'))
    for label, by, needle in cases:
        median, worst, scanned, found = timed(by, needle, search.MAX_SEARCH_WINDOW)
        ok = "yes" if median < TARGET_MS else "no"
        print(f"{label:48} {median:10.1f} {worst:8.1f} {scanned:10,} {found:6}  {ok}")
    oldest = EVENT_IDS[0]
    print("\nchunk size of the Lua scan (event id of the oldest entry; worst single EVAL)")
    for chunk in (1000, 2000, 5000, 10_000, 50_000):
        search.SEARCH_CHUNK = chunk
        calls = []
        original = search._SCAN.run

        def spy(*args: Any, _run: Any = original, _calls: list[float] = calls) -> Any:
            started = time.perf_counter()
            try:
                return _run(*args)
            finally:
                _calls.append((time.perf_counter() - started) * 1000)

        search._SCAN.run = spy  # type: ignore[method-assign]
        median, _, scanned, _ = timed("event_id", oldest, search.MAX_SEARCH_WINDOW)
        search._SCAN.run = original  # type: ignore[method-assign]
        per_entry = median * 1000 / max(1, scanned)
        print(
            f"  chunk {chunk:>6,}: {median:8.1f} ms for {scanned:,} entries "
            f"({per_entry:.2f} µs each), longest EVAL {max(calls):.1f} ms"
        )
    search.SEARCH_CHUNK = 2000


def prepare(client: redis.Redis, ids: list[bytes]) -> None:
    """Add a consumer group with 1,000 pending entries and 1,000 dead letters."""
    from redis_broker import wire

    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "worker-1", {STREAM: ">"}, count=1000)
    pipe = client.pipeline(transaction=False)
    for n in range(1000):
        fields = wire.encode_entry({"order_id": n}, type="order.created")
        pipe.xadd(
            STREAM + ":dlq",
            wire.dead_letter_fields(  # type: ignore[arg-type]
                fields,
                original_stream=STREAM,
                original_id=ids[0].decode(),
                error="ValueError: payment provider said no",
                delivery_count=5,
            ),
        )
    pipe.execute()


def entries_read(client: redis.Redis) -> int:
    """Return how many XRANGE/XREVRANGE/XPENDING calls ran since the last reset."""
    stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("xrange", "xrevrange", "xpending")
    )


def time_page(
    client: Any, path: str, params: dict[str, Any], repeat: int
) -> tuple[list[float], Any]:
    """Render ``path`` once to warm up, then ``repeat`` times; return the times in ms and
    the last response."""
    response = client.get(path, params)  # warm up: templates, connections
    assert response.status_code == 200, (path, params, response.status_code)
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, params)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, params)
    return timings, response


def add_streams(raw: Any, start: int, stop: int) -> None:
    """Create streams ``bench.s<n>`` for n in [start, stop), one entry each, pipelined;
    every 10th gets a consumer group and every 50th a dead-letter stream of one entry."""
    from redis_broker.naming import dead_letter_name

    for offset in range(start, stop, BATCH):
        pipe = raw.pipeline(transaction=False)
        for n in range(offset, min(offset + BATCH, stop)):
            name = f"bench.s{n:05d}"
            pipe.xadd(name, {"type": "order.created", "data": f'{{"n":{n}}}'})
            if n % 10 == 0:
                pipe.xgroup_create(name, GROUP, id="0")
            if n % 50 == 0:
                pipe.xadd(dead_letter_name(name, ":dlq"), {"data": "{}", "error": "boom"})
        pipe.execute()


def scan_calls(raw: Any) -> int:
    """Return the SCAN calls every master has served since the last reset."""
    if isinstance(raw, redis.cluster.RedisCluster):
        infos = raw.info("commandstats", target_nodes=raw.PRIMARIES)
    else:
        infos = {"": raw.info("commandstats")}
    return sum(int(info.get("cmdstat_scan", {}).get("calls", 0)) for info in infos.values())


def reset_stats(raw: Any) -> None:
    """Reset INFO commandstats on every master."""
    if isinstance(raw, redis.cluster.RedisCluster):
        raw.config_resetstat(target_nodes=raw.PRIMARIES)
    else:
        raw.config_resetstat()


def flush(raw: Any) -> None:
    """Empty the database (every master's on a cluster)."""
    if isinstance(raw, redis.cluster.RedisCluster):
        raw.flushdb(target_nodes=raw.PRIMARIES)
    else:
        raw.flushdb()


def bench_overview(client: Any, raw: Any, streams: int, repeat: int) -> float:
    """Time the overview's paging at 200 and at ``streams`` streams; return the slowest median.

    Starts from an emptied database. Prints median and worst ms per case, the streams
    the page listed, and the SCAN calls per render (from INFO commandstats).
    """
    from django.urls import reverse

    from redis_broker.connection import get_redis
    from redis_broker.inspector import nodes, queries

    overview = reverse("admin:redis_broker_broker_changelist")
    live = reverse("admin:redis_broker_overview_live")
    flush(raw)
    worst = 0.0
    print(f"\noverview paging, {queries.STREAM_PAGE} streams a page unless said")
    print(f"{'case':46} {'median ms':>10} {'max ms':>8} {'streams':>8} {'SCANs':>6}  <300ms")

    def row(label: str, path: str, params: dict[str, Any]) -> float:
        reset_stats(raw)
        timings, response = time_page(client, path, params, repeat)
        calls = scan_calls(raw) / (repeat + 1)
        if path.startswith(live):
            shown = len(response.json()["streams"])
        else:
            shown = response.content.decode().count("<tr data-rb-stream=")
        median = statistics.median(timings)
        ok = "yes" if median < TARGET_MS else "NO"
        print(f"{label:46} {median:10.1f} {max(timings):8.1f} {shown:8} {calls:6.0f}  {ok}")
        return median

    def next_link(response: Any) -> str | None:
        """Return the page's "Next page" URL, read from its HTML (no test instrumentation)."""
        found = re.search(r'href="([^"]*)" rel="next" id="rb-next-page"', response.content.decode())
        return html.unescape(found[1]).split("#")[0] if found else None

    def far_page(hops: int) -> str:
        """Return the URL of the page ``hops`` "Next page" links after the first."""
        path = overview
        for _ in range(hops):
            following = next_link(client.get(path))
            if following is None:
                break
            path = following
        return path

    def sorted_cost() -> None:
        """Print what sorted pages would cost before reading any row: every stream's name
        (one SCAN walk of the whole keyspace) and a sort."""
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            keys, _ = nodes.scan_keys(get_redis(), patterns=nodes.key_patterns(""), type_="stream")
            timings.append((time.perf_counter() - started) * 1000)
        print(
            f"{'(sorted pages: SCAN all ' + format(len(keys), ',') + ' streams, sort)':46} "
            f"{statistics.median(timings):10.1f} {max(timings):8.1f}"
        )

    filled = 0
    for total in sorted({min(200, streams), streams}):
        started = time.perf_counter()
        add_streams(raw, filled, total)
        filled = total
        print(f"-- {total:,} streams (filled in {time.perf_counter() - started:.1f} s)")
        worst = max(worst, row("first page", overview, {}))
        worst = max(worst, row("first page, 200 a page", overview, {"count": 200}))
        if total <= 200:
            continue
        hops = total // queries.STREAM_PAGE // 2
        worst = max(worst, row(f"page {hops + 1} (half way)", far_page(hops), {}))
        body = client.get(overview).content.decode()
        live_url = html.unescape(re.search(r'data-url="([^"]*)"', body)[1])  # type: ignore[index]
        worst = max(worst, row("live poll of the first page (its span)", live_url, {}))
        matches = sum(1 for n in range(total) if "s123" in f"bench.s{n:05d}")
        label = f"name contains 's123' ({matches}+ match)"
        worst = max(worst, row(label, overview, {"q": "s123"}))
        sorted_cost()
        pages, path = 0, f"{overview}?count=200"
        started = time.perf_counter()
        while path is not None:
            pages += 1
            path = next_link(client.get(path))
        took = time.perf_counter() - started
        print(f"   (walking every page, 200 a page: {pages} pages in {took:.1f} s)")
        # Keys of other kinds in the same database (a cache, sessions): a page still
        # reads about a page of keys; sorted pages would walk them all.
        started = time.perf_counter()
        for offset in range(0, OTHER_KEYS, BATCH):
            pipe = raw.pipeline(transaction=False)
            for n in range(offset, offset + BATCH):
                pipe.set(f"cache.{n}", "x")
            pipe.execute()
        took = time.perf_counter() - started
        print(f"-- and {OTHER_KEYS:,} other keys (strings; added in {took:.1f} s)")
        worst = max(worst, row("first page", overview, {}))
        worst = max(worst, row(f"page {hops + 1} (half way)", far_page(hops), {}))
        sorted_cost()
    return worst


def bench_pages(client: Any, raw: redis.Redis, entries: int, repeat: int) -> float:
    """Fill one stream of ``entries`` entries, time every page and the search; return the
    slowest page's median."""
    from django.urls import reverse

    ids = fill(raw, entries)
    prepare(raw, ids)
    subscriber = raw.pubsub()
    subscriber.subscribe("chat.lobby")
    middle = ids[len(ids) // 2].decode()
    pending = [p["message_id"].decode() for p in raw.xpending_range(STREAM, GROUP, "-", "+", 5)]

    def url(name: str, **kwargs: str) -> str:
        return reverse(f"admin:redis_broker_{name}", kwargs=kwargs or None)

    pages: list[tuple[str, str, dict[str, Any]]] = [
        ("overview", url("broker_changelist"), {}),
        ("stream, newest page", url("stream", stream=STREAM), {}),
        ("stream, 100 per page", url("stream", stream=STREAM), {"count": 100}),
        ("stream, page in the middle", url("stream", stream=STREAM), {"before": middle}),
        ("stream, id range filter", url("stream", stream=STREAM), {"end": middle}),
        ("groups & consumers", url("groups", stream=STREAM), {}),
        ("pending entries", url("pending", stream=STREAM, group=GROUP), {}),
        ("dead letters", url("dead_letters", stream=STREAM), {}),
        ("pub/sub channels", url("pubsub"), {}),
        ("outbox backlog", url("outbox"), {}),
        ("live overview (JSON poll)", url("overview_live"), {}),
        ("workers", url("workers"), {}),
        ("search: entry id", url("search", stream=STREAM), {"q": middle}),
        (
            "search: event id, 100,000th newest",
            url("search", stream=STREAM),
            {"q": EVENT_IDS[max(0, entries - 100_000)]},
        ),
        ("confirm: ack 5", url("ack", stream=STREAM, group=GROUP), {"ids": pending}),
        ("confirm: trim", url("trim", stream=STREAM), {}),
    ]
    print(f"Redis {raw.info()['redis_version']}; {STREAM}: {raw.xlen(STREAM):,} entries\n")
    print(f"{'page':32} {'median ms':>10} {'max ms':>8} {'range calls':>12}  ok")
    worst = 0.0
    for label, path, params in pages:
        response = client.get(path, params)  # warm up: templates, connections
        assert response.status_code == 200, (label, response.status_code)
        raw.config_resetstat()
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path, params)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, label
        calls = entries_read(raw) / repeat
        median = statistics.median(timings)
        worst = max(worst, median)
        ok = "yes" if median < TARGET_MS else "NO"
        print(f"{label:32} {median:10.1f} {max(timings):8.1f} {calls:12.0f}  {ok}")
    print(f"\nslowest page median {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
    bench_search(raw, entries, max(3, repeat // 2))
    subscriber.close()
    return worst


def main() -> None:
    """Fill Redis, render every page ``--repeat`` times, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="stream length")
    parser.add_argument("--repeat", type=int, default=7, help="renders per page")
    parser.add_argument(
        "--streams", type=int, default=50_000, help="streams for the overview's paging (0: none)"
    )
    parser.add_argument(
        "--overview-only", action="store_true", help="only the overview's paging, not the pages"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the overview's paging on a private three-master cluster (implies --overview-only)",
    )
    args = parser.parse_args()

    from redis_broker.testing import RedisClusterServer, RedisServer

    server: Any = RedisClusterServer(3) if args.cluster else RedisServer()
    with server:
        configure(server.url, cluster=args.cluster)
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.test import Client

        call_command("migrate", verbosity=0)
        client = Client()
        client.force_login(User.objects.create_superuser("admin", "a@example.com", "admin"))
        raw: Any = (
            redis.cluster.RedisCluster.from_url(server.url)
            if args.cluster
            else redis.Redis.from_url(server.url)
        )
        worst = 0.0
        if not (args.overview_only or args.cluster):
            worst = bench_pages(client, raw, args.entries, args.repeat)
        if args.streams:
            where = "a three-master cluster" if args.cluster else "a single Redis"
            print(f"\n{where}")
            worst = max(worst, bench_overview(client, raw, args.streams, args.repeat))
            print(f"\nslowest median {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
        raw.close()
        sys.exit(0 if worst < TARGET_MS else 1)


if __name__ == "__main__":
    main()
