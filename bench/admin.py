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

    python bench/admin.py [--entries 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
import redis
from django.conf import settings

STREAM = "shop.orders"
GROUP = "billing"
TARGET_MS = 300.0
BATCH = 5000

urlpatterns: list[Any] = []  # filled in configure(): this module is the bench's URLconf


def configure(url: str) -> None:
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
        REDIS_BROKER={"URL": url, "STREAM_MAXLEN": None},
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


def main() -> None:
    """Fill Redis, render every page ``--repeat`` times, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="stream length")
    parser.add_argument("--repeat", type=int, default=7, help="renders per page")
    args = parser.parse_args()

    from redis_broker.testing import RedisServer

    with RedisServer() as server:
        configure(server.url)
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.test import Client
        from django.urls import reverse

        call_command("migrate", verbosity=0)
        client = Client()
        client.force_login(User.objects.create_superuser("admin", "a@example.com", "admin"))
        raw = redis.Redis.from_url(server.url)
        ids = fill(raw, args.entries)
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
                {"q": EVENT_IDS[max(0, args.entries - 100_000)]},
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
            for _ in range(args.repeat):
                started = time.perf_counter()
                response = client.get(path, params)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, label
            calls = entries_read(raw) / args.repeat
            median = statistics.median(timings)
            worst = max(worst, median)
            ok = "yes" if median < TARGET_MS else "NO"
            print(f"{label:32} {median:10.1f} {max(timings):8.1f} {calls:12.0f}  {ok}")
        print(f"\nslowest page median {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
        bench_search(raw, args.entries, max(3, args.repeat // 2))
        subscriber.close()
        raw.close()
        sys.exit(0 if worst < TARGET_MS else 1)


if __name__ == "__main__":
    main()
