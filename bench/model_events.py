"""Benchmark: the cost of model events on saves, in one run.

Times one transaction of 1,000 ``Tick.objects.create()`` calls (a small model: two
fields), commit included, three ways: no events configured, ``on_commit`` delivery
(events buffered, one pipelined XADD round trip at commit) and ``outbox`` delivery (an
outbox row beside every save, the transaction's rows written together just before the
commit, so "commit" includes writing them). Private redis-server (or REDIS_URL), SQLite
in a temporary file (or ``--database-url``, an empty scratch database). Rounds are
interleaved, each round's event modes bracketed by two baselines; prints each mode's
best time and the median of the rounds' ratios events/no events (targets: on_commit
<= 1.3, outbox <= 1.6).

``--parts`` then prices the pieces of an outbox save, per row, on the same database: a
round trip, the save itself, an outbox row INSERTed on its own (as every save did
before rows waited for the commit), and a row written together with the others.

    python bench/model_events.py [--saves 1000] [--rounds 11] [--database-url URL] [--parts]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django
from django.conf import settings

from redis_broker.testing import redis_url_or_private

TARGETS = {"on_commit": 1.3, "outbox": 1.6}


def configure(url: str, database: dict[str, object]) -> None:
    settings.configure(
        INSTALLED_APPS=["redis_broker", "tests.testapp"],
        DATABASES={"default": database},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        REDIS_BROKER={"URL": url},
    )
    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--saves", type=int, default=1000, help="saves per transaction")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds per mode")
    parser.add_argument(
        "--database-url",
        help="an empty scratch database to use instead of SQLite (its tables are created)",
    )
    parser.add_argument(
        "--parts", action="store_true", help="also price the pieces of an outbox save"
    )
    args = parser.parse_args()

    with (
        redis_url_or_private() as url,
        tempfile.TemporaryDirectory(prefix="bench-model-events-") as tmp,
    ):
        if args.database_url:
            import environ  # lazy: django-environ is needed only with --database-url

            database = environ.Env.db_url_config(args.database_url)
        else:
            sqlite = str(Path(tmp) / "bench.sqlite3")
            database = {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite}
        configure(url, database)
        run(url, args.saves, args.rounds)
        if args.parts:
            parts(args.saves)


def run(url: str, saves: int, rounds: int) -> None:
    # Imported once configure() has run: these need settings and loaded apps.
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.db.models.signals import post_save
    from django.test import override_settings

    from redis_broker.connection import get_redis
    from redis_broker.models import OutboxEvent
    from tests.testapp.models import Tick

    call_command("migrate", run_syncdb=True, verbosity=0)

    def clean() -> None:
        Tick.objects.all().delete()
        OutboxEvent.objects.all().delete()
        get_redis().delete("testapp.tick")

    commit_times: dict[str, list[float]] = {}

    def one_transaction(mode: str = "none") -> float:
        started = time.perf_counter()
        with transaction.atomic():
            for i in range(saves):
                Tick.objects.create(name=f"tick {i}", value=i)
            committing = time.perf_counter()
        ended = time.perf_counter()
        commit_times.setdefault(mode, []).append(ended - committing)
        return ended - started

    def with_events(delivery: str) -> Callable[[], float]:
        def timed() -> float:
            spec = {"testapp.Tick": {"delivery": delivery}}
            clean()
            with override_settings(REDIS_BROKER={"URL": url, "MODEL_EVENTS": spec}):
                get_redis().ping()  # the override dropped the client; reconnect untimed
                elapsed = one_transaction(delivery)
                published = get_redis().xlen("testapp.tick")
                stored = OutboxEvent.objects.count()
            # Receivers stay connected but do nothing once the model is unconfigured;
            # the baseline must not pay even that, so it runs first in each round.
            expected = (saves, 0) if delivery == "on_commit" else (0, saves)
            assert (published, stored) == expected, (delivery, published, stored)
            return elapsed

        return timed

    def without_events() -> float:
        clean()
        return one_transaction()

    modes: dict[str, Callable[[], float]] = {
        "none": without_events,
        "on_commit": with_events("on_commit"),
        "outbox": with_events("outbox"),
    }
    for fn in modes.values():
        fn()  # warm up: connections, caches, SQLite pages
    times: dict[str, list[float]] = {name: [] for name in modes}
    ratios: dict[str, list[float]] = {"on_commit": [], "outbox": []}

    def baseline() -> float:
        # Measure the baseline with no receiver connected at all.
        connected = list(post_save.receivers)
        post_save.receivers = [r for r in connected if "redis_broker" not in str(r[0])]
        post_save.sender_receivers_cache.clear()
        try:
            return modes["none"]()
        finally:
            post_save.receivers = connected
            post_save.sender_receivers_cache.clear()

    for _ in range(rounds):
        # Each round brackets the event modes between two baselines, so a round's
        # ratios compare runs a few hundred milliseconds apart: on a shared machine
        # whose speed drifts, the median of these paired ratios is steadier than a
        # ratio of best times taken minutes apart.
        before = baseline()
        measured = {name: modes[name]() for name in ("on_commit", "outbox")}
        after = baseline()
        times["none"] += [before, after]
        for name, elapsed in measured.items():
            times[name].append(elapsed)
            ratios[name].append(elapsed / ((before + after) / 2))

    base = min(times["none"])
    vendor = connection.vendor
    print(f"{saves} saves of a small model in one transaction ({vendor}, commit included)")
    print(f"best of {rounds} rounds; ratio = median of the rounds' events/no-events ratios")
    print(
        f"  no events : {base * 1000:8.1f} ms  ({saves / base:,.0f} saves/s)  "
        f"commit {min(commit_times['none']) * 1000:.1f} ms"
    )
    for name in ("on_commit", "outbox"):
        t = min(times[name])
        ratio = statistics.median(ratios[name])
        verdict = "ok" if ratio <= TARGETS[name] else "ABOVE TARGET"
        print(
            f"  {name:<10}: {t * 1000:8.1f} ms  ({saves / t:,.0f} saves/s)  "
            f"+{(t - base) / saves * 1e6:.0f} us/event  commit "
            f"{min(commit_times[name]) * 1000:.1f} ms  "
            f"ratio {ratio:.2f} (best/best {t / base:.2f}; target <= {TARGETS[name]}) {verdict}"
        )


def parts(rows: int) -> None:
    """Print what each piece of an outbox save costs per row (best of 5, rolled back)."""
    from django.db import connection, transaction

    from redis_broker import outbox_rows, wire
    from tests.testapp.models import Tick

    event = ("testapp.tick", wire.encode_entry({"pk": 1, "fields": {}}, type="testapp.tick"))
    waiting = [(*event, outbox_rows._created_at(connection))] * rows

    def round_trips() -> None:
        with connection.cursor() as cursor:
            for _ in range(rows):
                cursor.execute("SELECT 1")

    def saves() -> None:
        for i in range(rows):
            Tick.objects.create(name=f"tick {i}", value=i)

    def single_inserts() -> None:
        for _ in range(rows):
            outbox_rows._write_one(event, connection)

    pieces: dict[str, Callable[[], None]] = {
        "a round trip (SELECT 1)": round_trips,
        "a save, no events": saves,
        "an outbox row INSERTed on its own": single_inserts,
        "a row in a multi-row INSERT": lambda: outbox_rows._insert_rows(connection, waiting),
    }
    if outbox_rows._rows_for(connection).copies:
        pieces["a row in a COPY (psycopg 3)"] = lambda: outbox_rows._copy_rows(connection, waiting)
    print(f"per row, {rows} rows in a transaction rolled back ({connection.vendor}):")
    for label, piece in pieces.items():
        best = float("inf")
        for _ in range(5):
            with transaction.atomic():
                started = time.perf_counter()
                piece()
                best = min(best, time.perf_counter() - started)
                transaction.set_rollback(True)
        print(f"  {label:<36}: {best / rows * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
