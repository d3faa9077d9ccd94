"""The database outbox: events kept when Redis is away, the transactional ``outbox``
delivery, and the relay that publishes them in order.

These tests use ``django_db(transaction=True)``: what they check happens at commit
(events fall back to the outbox in an ``on_commit`` callback), and the relay reads the
outbox from its own thread and connection, which only sees committed rows.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from redis_broker import wire
from redis_broker.models import OutboxEvent
from redis_broker.outbox import OutboxBacklog, OutboxRelay, backlog, store
from redis_broker.testing import RedisServer, wait_for
from tests.helpers import closing_db, manage, subprocess_env
from tests.testapp.models import Invoice, Order

from .helpers import broker_settings, read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def rows(n: int, stream: str = "shop.orders", start: int = 0) -> list[tuple[str, dict[str, str]]]:
    """Return ``n`` encoded events numbered from ``start`` for ``stream``."""
    return [(stream, wire.encode_entry({"n": i}, type="test.n")) for i in range(start, start + n)]


@pytest.fixture
def stoppable_redis(redis_server_factory: object) -> Iterator[RedisServer]:
    """Point REDIS_BROKER at a private Redis the test may stop and start again."""
    server: RedisServer = redis_server_factory()  # type: ignore[operator]
    with broker_settings(URL=server.url, CLUSTER=False, RETRIES=0, SOCKET_CONNECT_TIMEOUT=0.5):
        yield server


def stream_of(server: RedisServer, stream: str) -> list[wire.DecodedEntry]:
    """Return ``stream``'s entries on ``server``."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return read_stream(client, stream)
    finally:
        client.close()


def test_commit_with_redis_down_keeps_events_and_relay_delivers_them_in_order(
    stoppable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that commits succeed without Redis and relayoutbox --burst later delivers in order."""
    stoppable_redis.stop()
    with caplog.at_level(logging.WARNING, logger="redis_broker.outbox"):
        with transaction.atomic():
            order = Order.objects.create(status="new")
        order.status = "paid"
        order.save()
    assert Order.objects.get().status == "paid"
    stored = list(OutboxEvent.objects.values_list("stream", "fields"))
    assert [(s, f["type"]) for s, f in stored] == [
        ("shop.orders", "testapp.order.created"),
        ("shop.orders", "testapp.order.updated"),
    ]
    assert "wait in the outbox" in caplog.text
    assert backlog().count == 2

    stoppable_redis.start()
    out = io.StringIO()
    call_command("relayoutbox", "--burst", stdout=out)
    assert "Relayed 2 outbox event(s)." in out.getvalue()
    entries = stream_of(stoppable_redis, "shop.orders")
    assert [e.type for e in entries] == ["testapp.order.created", "testapp.order.updated"]
    assert [e.event_id for e in entries] == [f["event_id"] for _, f in stored]
    assert not OutboxEvent.objects.exists()


def test_new_events_queue_behind_waiting_outbox_rows(stoppable_redis: RedisServer) -> None:
    """Tests that once a stream has rows waiting, new events join them rather than overtake."""
    stoppable_redis.stop()
    Order.objects.create(status="first")
    stoppable_redis.start()
    Order.objects.create(status="second")
    assert stream_of(stoppable_redis, "shop.orders") == []
    assert OutboxEvent.objects.count() == 2
    assert OutboxRelay().drain() == 2
    statuses = [e.data["fields"]["status"] for e in stream_of(stoppable_redis, "shop.orders")]
    assert statuses == ["first", "second"]


def test_relayoutbox_burst_fails_when_redis_is_unreachable(stoppable_redis: RedisServer) -> None:
    """Tests that a burst relay without Redis exits with an error and keeps the rows."""
    store(rows(1))
    stoppable_redis.stop()
    with pytest.raises(CommandError, match="unavailable"):
        call_command("relayoutbox", "--burst")
    assert OutboxEvent.objects.count() == 1


def test_outbox_delivery_writes_the_row_in_the_same_transaction(
    redis_client: redis.Redis,
) -> None:
    """Tests that outbox delivery stores the event with the change, and only the relay sends it."""
    with pytest.raises(RuntimeError), transaction.atomic():
        Invoice.objects.create(number="rolled-back")
        assert OutboxEvent.objects.count() == 1
        raise RuntimeError("abort")
    assert not OutboxEvent.objects.exists()
    with transaction.atomic():
        invoice = Invoice.objects.create(number="INV-1", amount=Decimal("9.90"))
    assert redis_client.xlen("billing.invoices") == 0
    assert OutboxRelay().drain() == 1
    [entry] = read_stream(redis_client, "billing.invoices")
    assert entry.type == "testapp.invoice.created"
    assert entry.data == {
        "pk": invoice.pk,
        "fields": {"id": invoice.pk, "number": "INV-1", "amount": "9.90"},
    }


def test_outbox_rows_are_visible_to_query_observers(redis_client: redis.Redis) -> None:
    """Tests that the outbox INSERT shows up where Django users look for queries.

    Unobserved, SQLite takes a faster path past Django's cursor wrapper; with an
    ``execute_wrapper`` or query capture in place (``assertNumQueries``, ``DEBUG``) the
    INSERT goes through Django's cursor and is seen.
    """
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper), transaction.atomic():
        Invoice.objects.create(number="INV-W")
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        Invoice.objects.create(number="INV-C")
    outbox_table = OutboxEvent._meta.db_table
    assert sum(outbox_table in sql for sql in seen) == 1
    assert sum(outbox_table in query["sql"] for query in captured.captured_queries) == 1
    assert [f["type"] for f in OutboxEvent.objects.values_list("fields", flat=True)] == [
        "testapp.invoice.created",
        "testapp.invoice.created",
    ]


def test_backlog_counts_rows_and_dates_the_oldest() -> None:
    """Tests the backlog figures: every waiting row counted, the oldest one's time given."""
    assert backlog() == OutboxBacklog(count=0, oldest=None)
    store(rows(3))
    first = OutboxEvent.objects.order_by("id").first()
    assert first is not None
    OutboxEvent.objects.filter(pk=first.pk).update(created_at=first.created_at - timedelta(hours=1))
    waiting = backlog()
    assert waiting.count == 3
    assert waiting.oldest == first.created_at - timedelta(hours=1)
    assert waiting.oldest_age_seconds is not None and waiting.oldest_age_seconds >= 3600


@pytest.mark.slow
def test_outbox_delivery_survives_process_killed_right_after_commit(
    redis_client: redis.Redis,
) -> None:
    """Tests that a child SIGKILLed right after committing loses no event: the relay sends it."""
    code = (
        "import os, signal\n"
        "from django.db import transaction\n"
        "from tests.testapp.models import Invoice\n"
        "with transaction.atomic():\n"
        "    Invoice.objects.create(number='INV-KILLED')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = manage("shell", "-c", code, env=subprocess_env())
    output, _ = child.communicate(timeout=60)
    assert child.returncode == -9, output
    assert Invoice.objects.get().number == "INV-KILLED"
    assert redis_client.xlen("billing.invoices") == 0

    relay = manage("relayoutbox", "--burst", env=subprocess_env())
    output, _ = relay.communicate(timeout=60)
    assert relay.returncode == 0, output
    [entry] = read_stream(redis_client, "billing.invoices")
    assert entry.type == "testapp.invoice.created"
    assert entry.data["fields"]["number"] == "INV-KILLED"
    assert not OutboxEvent.objects.exists()


async def test_relay_once_publishes_one_batch_in_id_order(redis_client: redis.Redis) -> None:
    """Tests that relay_once sends at most BATCH_SIZE rows, oldest first, deleting only those."""
    await database_sync_to_async(store)(rows(3, "a") + rows(2, "b") + rows(1, "a", start=3))
    relay = OutboxRelay()
    with broker_settings(OUTBOX={"BATCH_SIZE": 4, "POLL_MS": 50}):
        try:
            assert await relay.relay_once() == 4
            assert await database_sync_to_async(OutboxEvent.objects.count)() == 2
            assert await relay.relay_once() == 2
            assert await relay.relay_once() == 0
        finally:
            await relay.aclose()
    assert [e.data["n"] for e in read_stream(redis_client, "a")] == [0, 1, 2, 3]
    assert [e.data["n"] for e in read_stream(redis_client, "b")] == [0, 1]


async def test_relay_run_outlives_a_redis_outage(
    stoppable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that run() logs and backs off while Redis is down, then delivers everything."""
    await database_sync_to_async(store)(rows(3))
    stoppable_redis.stop()
    stop = asyncio.Event()
    with caplog.at_level(logging.DEBUG, logger="redis_broker.outbox"):
        task = asyncio.create_task(OutboxRelay().run(stop))
        await asyncio.to_thread(
            wait_for, lambda: "Outbox relay paused" in caplog.text, message="relay warning"
        )
        assert not task.done()
        await asyncio.to_thread(stoppable_redis.start)
        await asyncio.to_thread(
            wait_for,
            lambda: len(stream_of(stoppable_redis, "shop.orders")) == 3,
            message="relayed after the outage",
        )
        await database_sync_to_async(store)(rows(1, start=3))
        await asyncio.to_thread(
            wait_for,
            lambda: len(stream_of(stoppable_redis, "shop.orders")) == 4,
            message="relayed while polling",
        )
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [e.data["n"] for e in stream_of(stoppable_redis, "shop.orders")] == [0, 1, 2, 3]
    assert "Outbox relay resumed" in caplog.text


def test_row_redis_refuses_blocks_only_its_stream(redis_client: redis.Redis) -> None:
    """Tests that a refused entry stays (with its error) and holds back only its own stream.

    Entries the failed pipeline did append may go out twice (at least once), with the
    same event_id, but never out of order."""
    redis_client.set("bad", "a string, not a stream")
    store(rows(2, "bad") + rows(2, "good"))
    relay = OutboxRelay()
    with pytest.raises(redis.ResponseError, match="Redis refused outbox rows .* 'bad'.*WRONGTYPE"):
        relay.relay_batch()
    with pytest.raises(redis.ResponseError):
        relay.relay_batch()  # the suspect stream goes one by one; "good" is sent
    left = list(OutboxEvent.objects.values_list("stream", "attempts"))
    assert [stream for stream, _ in left] == ["bad", "bad"]
    assert "WRONGTYPE" in OutboxEvent.objects.first().last_error  # type: ignore[union-attr]
    redis_client.delete("bad")
    assert relay.drain() == 2
    assert [e.data["n"] for e in read_stream(redis_client, "bad")] == [0, 1]
    good = read_stream(redis_client, "good")
    assert [e.data["n"] for e in good][:2] == [0, 1]
    assert [e.data["n"] for e in {e.event_id: e for e in good}.values()] == [0, 1]


async def test_a_stuck_row_is_logged_once_with_its_cause_not_at_every_attempt(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A row Redis keeps refusing is one ERROR line naming the key and its cause.

    The attempts go on (with back-off) at DEBUG; there is no traceback: the cause is
    known, and a traceback every few seconds drowned every other line.
    """
    redis_client.set("bad", "a string, not a stream")
    await database_sync_to_async(store)(rows(1, "bad"))
    stop = asyncio.Event()

    @closing_db
    def attempts() -> int:
        return int(OutboxEvent.objects.values_list("attempts", flat=True).get())

    with (
        broker_settings(OUTBOX={"POLL_MS": 10}),
        caplog.at_level(logging.DEBUG, logger="redis_broker.outbox"),
    ):
        task = asyncio.create_task(OutboxRelay().run(stop))
        await asyncio.to_thread(
            wait_for, lambda: attempts() >= 4, message="four attempts", timeout=20
        )
        stop.set()
        await asyncio.wait_for(task, 10)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].exc_info is None
    assert "'bad' exists and is not a stream" in loud[0].getMessage()
    quiet = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "refused" in r.getMessage()
    ]
    assert len(quiet) >= 3


def test_two_relays_publish_every_row_exactly_once(redis_client: redis.Redis) -> None:
    """Tests that concurrent relays (SKIP LOCKED) never publish a row twice and keep order."""
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED needs PostgreSQL (set DATABASE_URL)")
    streams = ["s1", "s2", "s3"]
    for start in range(0, 300, 10):
        store([event for s in streams for event in rows(10, s, start)])
    errors: list[BaseException] = []

    def relay_until_empty() -> None:
        relay = OutboxRelay(batch_size=7)
        try:
            while OutboxEvent.objects.exists():
                relay.relay_batch()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay_until_empty) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for stream in streams:
        assert [e.data["n"] for e in read_stream(redis_client, stream)] == list(range(300))
