"""Tests of ``ConsumerRunner`` in this process: delivery, retries, dead letters, lost state."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis

from redis_broker import publish, publish_many
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.testing import wait_for
from tests.testapp.consumers import HANDLED, attempts_key

from .helpers import dead_letters

pytestmark = pytest.mark.usefixtures("fast_consumers")


def run_burst(*selectors: str, **options: Any) -> tuple[int, list[str], ConsumerRunner]:
    """Run the selected consumers until nothing is left; return status, output and runner."""
    lines: list[str] = []
    runner = ConsumerRunner(selectors, burst=True, relay_outbox=False, echo=lines.append, **options)
    return runner.run(), lines, runner


def handled(client: redis.Redis) -> list[tuple[str, int, int]]:
    """Return (event id, pid, delivery count) of every successful handler call."""
    rows = [line.split() for line in client.lrange(HANDLED, 0, -1)]
    return [(event_id, int(pid), int(count)) for event_id, pid, count in rows]


def event_ids(client: redis.Redis, stream: str) -> list[str]:
    """Return the event ids published to ``stream``, in order."""
    return [fields["event_id"] for _, fields in client.xrange(stream)]


def test_every_entry_is_handled_exactly_once_and_acked(redis_client: redis.Redis) -> None:
    """Tests the happy path: 1,000 entries, each handled once, nothing left pending."""
    publish_many("test.orders", [{"n": n} for n in range(1000)])
    code, lines, _ = run_burst("scripted")
    assert code == 0
    seen = [event_id for event_id, _, count in handled(redis_client)]
    assert sorted(seen) == sorted(event_ids(redis_client, "test.orders"))
    assert len(set(seen)) == 1000
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0
    assert lines[-1].startswith("processed=1000 failed=0 dead-lettered=0 pending=0")


@pytest.mark.django_db(transaction=True)
def test_sync_handlers_run_in_threads_and_may_use_the_orm(redis_client: redis.Redis) -> None:
    """Tests that a sync handler querying the database handles every entry."""
    publish_many("test.sync", [{"n": n, "sleep_ms": 2} for n in range(120)])
    code, _, runner = run_burst("scripted_sync")
    assert code == 0
    assert len({event_id for event_id, _, _ in handled(redis_client)}) == 120
    assert runner.workers[0].stats.processed == 120
    assert redis_client.xpending("test.sync", "workers")["pending"] == 0
    assert redis_client.xlen(dead_letters("test.sync")) == 0


@pytest.mark.django_db(transaction=True)
def test_sync_handlers_never_start_with_a_stale_database_connection(
    redis_client: redis.Redis,
) -> None:
    """Tests the connection hygiene: each call's expired connection is closed after it."""
    from django.db import connection

    from tests.testapp.models import Customer

    fresh: list[bool] = []

    def handler(message: StreamMessage) -> None:
        fresh.append(connection.connection is None)  # CONN_MAX_AGE = 0: closed after each call
        Customer.objects.count()

    publish_many("test.hygiene", [{"n": n} for n in range(5)])
    spec = StreamConsumerSpec(func=handler, stream="test.hygiene", group="g", name="hygiene")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    assert fresh == [True] * 5


def test_handler_failing_twice_is_acked_on_the_third_delivery(redis_client: redis.Redis) -> None:
    """Tests that a raising handler is retried with back-off until it succeeds."""
    publish("test.orders", {"fail_times": 2})
    (event_id,) = event_ids(redis_client, "test.orders")
    code, _, runner = run_burst("scripted")
    assert code == 0
    assert handled(redis_client)[0][0] == event_id
    assert handled(redis_client)[0][2] == 3  # delivery_count seen by the handler
    assert redis_client.get(attempts_key(event_id)) == "3"
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0
    assert redis_client.exists(dead_letters("test.orders")) == 0
    assert (runner.workers[0].stats.failed, runner.workers[0].stats.processed) == (2, 1)


def test_entry_is_dead_lettered_after_max_deliveries(redis_client: redis.Redis) -> None:
    """Tests that an always-failing entry lands in the dead-letter stream with contract fields."""
    entry_id = publish("test.orders", {"fail_times": 99}, type="order.created")
    (original,) = redis_client.xrange("test.orders")
    code, lines, _ = run_burst("scripted")
    assert code == 0
    assert redis_client.get(attempts_key(original[1]["event_id"])) == "3"  # MAX_DELIVERIES
    ((_, dead),) = redis_client.xrange(dead_letters("test.orders"))
    assert dead.pop("traceback").endswith("RuntimeError: planned failure 3")
    assert dead == {
        **original[1],
        "original_stream": "test.orders",
        "original_id": entry_id,
        "error": "RuntimeError: planned failure 3",
        "delivery_count": "3",
    }
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0
    assert "dead-lettered=1" in lines[-1]


def test_reject_dead_letters_at_once(redis_client: redis.Redis) -> None:
    """Tests that raising Reject skips the retries."""
    publish("test.orders", {"reject": True})
    (event_id,) = event_ids(redis_client, "test.orders")
    run_burst("scripted")
    assert redis_client.get(attempts_key(event_id)) == "1"
    ((_, dead),) = redis_client.xrange(dead_letters("test.orders"))
    assert dead["error"].startswith("redis_broker.exceptions.Reject: ")
    assert dead["delivery_count"] == "1"


def test_malformed_entry_is_dead_lettered_and_the_next_is_processed(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that entries without JSON ``data`` never reach the handler nor block the stream.

    The log names each entry by its id as text (``1700000000000-0``), not a bytes repr.
    """
    bad_json = redis_client.xadd("test.orders", {"data": "{not json"})
    no_data = redis_client.xadd("test.orders", {"body": "x"})
    publish("test.orders", {"n": 1})
    with caplog.at_level(logging.INFO, logger="redis_broker"):
        code, _, _ = run_burst("scripted")
    assert code == 0
    assert f"entry {bad_json} is malformed" in caplog.text
    assert "b'" not in caplog.text
    dead = redis_client.xrange(dead_letters("test.orders"))
    assert [fields["original_id"] for _, fields in dead] == [bad_json, no_data]
    assert all("MalformedEntry" in fields["error"] for _, fields in dead)
    assert dead[1][1]["body"] == "x"  # the original fields are kept
    assert len(handled(redis_client)) == 1
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0


def test_pending_entry_trimmed_from_the_stream_is_acked_and_counted(
    redis_client: redis.Redis,
) -> None:
    """Tests that a pending id whose body is gone is acked instead of crashing the loop."""
    publish_many("test.orders", [{"n": n} for n in range(3)])
    redis_client.xgroup_create("test.orders", "workers", id="0")
    redis_client.xreadgroup("workers", "me", {"test.orders": ">"})  # now pending with "me"
    first = redis_client.xrange("test.orders")[0][0]
    redis_client.xdel("test.orders", first)
    code, _, runner = run_burst("scripted", consumer_name="me")
    assert code == 0
    assert runner.workers[0].stats.trimmed == 1
    assert len(handled(redis_client)) == 2
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0


def test_entries_abandoned_by_another_consumer_are_reclaimed(redis_client: redis.Redis) -> None:
    """Tests XAUTOCLAIM: entries idle past CLAIM_IDLE_MS with a dead consumer are taken over."""
    publish_many("test.orders", [{"n": n} for n in range(5)])
    redis_client.xgroup_create("test.orders", "workers", id="0")
    redis_client.xreadgroup("workers", "dead", {"test.orders": ">"})
    wait_for(
        lambda: redis_client.xpending_range("test.orders", "workers", "-", "+", 10, idle=300),
        message="entries idle for CLAIM_IDLE_MS",
    )
    code, _, runner = run_burst("scripted")
    assert code == 0
    assert runner.workers[0].stats.reclaimed == 5
    assert sorted(count for _, _, count in handled(redis_client)) == [2] * 5
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0


def test_batch_slower_than_claim_idle_is_not_reclaimed_by_its_own_worker(
    redis_client: redis.Redis,
) -> None:
    """Tests that handled entries whose acks wait for the next read are not taken back."""
    publish_many("test.orders", [{"n": n, "sleep_ms": 30} for n in range(20)])
    code, _, runner = run_burst("scripted", concurrency=1)  # ~600 ms > CLAIM_IDLE_MS
    assert code == 0
    assert runner.workers[0].stats.reclaimed == 0
    assert sorted(count for _, _, count in handled(redis_client)) == [1] * 20


def test_lost_group_is_recreated_with_one_warning(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that NOGROUP after a flush re-creates the group and processing goes on."""
    runner = ConsumerRunner(["scripted"], relay_outbox=False, echo=lambda line: None)
    thread = threading.Thread(target=runner.run)
    caplog.set_level(logging.WARNING, logger="redis_broker")
    thread.start()
    try:
        wait_for(lambda: redis_client.exists("test.orders"), message="the group")
        publish("test.orders", {"n": 1})
        wait_for(lambda: redis_client.llen(HANDLED) == 1, message="the first entry")
        redis_client.flushdb()
        publish("test.orders", {"n": 2})
        (event_id,) = event_ids(redis_client, "test.orders")
        wait_for(lambda: redis_client.lrange(HANDLED, 0, -1), message="the entry after the flush")
        assert handled(redis_client)[0][0] == event_id
    finally:
        runner.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()
    warnings = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "data",
    ["[" * 1000 + "]" * 1000, "9" * 5000, b"\xff\xfe not utf-8"],
    ids=["nested-1000-deep", "huge-number", "bad-utf-8"],
)
def test_a_poison_entry_is_dead_lettered_at_once_and_the_next_100_are_handled(
    redis_client: redis.Redis, redis_broker_url: str, data: str | bytes
) -> None:
    """Tests that no payload a producer writes stalls a consumer: it goes to the DLQ once."""
    raw = redis.Redis.from_url(redis_broker_url)  # bytes in, as another producer writes them
    try:
        poison_id = raw.xadd("test.orders", {"data": data, "event_id": "poison"}).decode()
    finally:
        raw.close()
    publish_many("test.orders", [{"n": n} for n in range(100)])
    code, _, runner = run_burst("scripted")
    assert code == 0
    assert len(handled(redis_client)) == 100
    ((_, dead),) = redis_client.xrange(dead_letters("test.orders"))
    assert dead["original_id"] == poison_id
    assert "MalformedEntry: " in dead["error"]
    assert dead["delivery_count"] == "1"
    assert runner.workers[0].stats.dead_lettered == 1
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0
