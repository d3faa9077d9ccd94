"""Tests of list consumers: at least once through kills and stops, retries, dead letters."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from redis_broker import push
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import ListConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.naming import dead_letter_name
from redis_broker.testing import wait_for
from tests.testapp.consumers import HANDLED, JOBS, attempts_key

from .helpers import Worker, handled_ids

DLQ = dead_letter_name(JOBS, ":dlq")


def processing_items(client: redis.Redis) -> int:
    """Return how many items all processing lists of ``test.jobs`` hold."""
    return sum(client.llen(key) for key in client.scan_iter(f"{JOBS}:processing:*"))


def pushed_ids(client: redis.Redis, count: int) -> list[str]:
    """Push ``count`` items to ``test.jobs`` in one round trip; return their event ids."""
    from redis_broker import wire

    elements = [wire.encode_message({"n": n}) for n in range(count)]
    client.rpush(JOBS, *elements)
    return [json.loads(element)["event_id"] for element in elements]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_item_is_handled_when_a_worker_is_killed_and_restarted(
    redis_client: redis.Redis, start_worker: Callable[..., Worker], capsys: Any
) -> None:
    """Tests 10,000 items, two workers, one killed with kill -9 and restarted: none lost."""
    ids = pushed_ids(redis_client, 10_000)
    fast = {"HEARTBEAT_INTERVAL": 0.3, "BATCH_SIZE": 50}
    steady = start_worker("run_job", "--concurrency", "4", **fast)
    victim = start_worker("run_job", "--concurrency", "4", **fast)
    wait_for(lambda: redis_client.llen(HANDLED) >= 3_000, timeout=60, message="a third done")
    victim.signal(signal.SIGKILL)
    victim.wait()
    restarted = start_worker("run_job", "--concurrency", "4", **fast)
    restarted.wait_for_line("Running")  # its SIGTERM handler is in place from then on
    steady.expect(
        lambda: set(ids) <= set(handled_ids(redis_client)), "every item handled", timeout=90
    )
    wait_for(lambda: processing_items(redis_client) == 0, message="empty processing lists")
    counts = Counter(handled_ids(redis_client))
    duplicates = sum(n - 1 for n in counts.values())
    with capsys.disabled():
        print(f"\n  list consumer after kill -9: {duplicates} of 10,000 items handled twice")
    assert duplicates <= 4 * 50 * 2  # at most what the dead worker held (lanes + a batch)
    assert redis_client.llen(JOBS) == 0
    for worker in (steady, restarted):
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sigterm_leaves_nothing_in_the_processing_lists(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the warm stop: handled items are removed, the rest go back to the list."""
    for n in range(200):
        push(JOBS, {"n": n, "sleep_ms": 20})
    worker = start_worker("run_job", "--concurrency", "4", BATCH_SIZE=20)
    wait_for(lambda: redis_client.llen(HANDLED) >= 10, timeout=15, message="work in flight")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.output
    assert processing_items(redis_client) == 0
    assert redis_client.llen(JOBS) + redis_client.llen(HANDLED) == 200  # none lost, none twice
    assert 0 < redis_client.llen(JOBS) < 200


@pytest.mark.usefixtures("fast_consumers")
@pytest.mark.django_db(transaction=True)
def test_a_failing_item_is_retried_then_dead_lettered_after_max_deliveries(
    redis_client: redis.Redis,
) -> None:
    """Tests retries with back-off and the dead-letter stream ``test.jobs:dlq``."""
    push(JOBS, {"fail_times": 99}, type="job.run")
    push(JOBS, {"fail_times": 1})
    runner = ConsumerRunner(["run_job"], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    ((_, dead),) = redis_client.xrange(DLQ)
    assert dead["original_stream"] == JOBS
    assert dead["delivery_count"] == "3"  # MAX_DELIVERIES in the fast settings
    assert "RuntimeError: planned failure 3" in dead["error"]
    assert (json.loads(dead["data"]), dead["type"]) == ({"fail_times": 99}, "job.run")
    assert redis_client.get(attempts_key(dead["event_id"])) == "3"
    assert [
        count for _, _, count in (line.split() for line in redis_client.lrange(HANDLED, 0, -1))
    ] == ["2"]
    assert processing_items(redis_client) == 0
    assert redis_client.llen(JOBS) == 0


@pytest.mark.usefixtures("fast_consumers")
@pytest.mark.django_db(transaction=True)
def test_reject_dead_letters_an_item_at_once(redis_client: redis.Redis) -> None:
    """Tests ``Reject`` from a list consumer: one delivery, then the dead-letter stream."""
    push(JOBS, {"reject": True})
    runner = ConsumerRunner(["run_job"], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    ((_, dead),) = redis_client.xrange(DLQ)
    assert dead["delivery_count"] == "1"
    assert dead["error"].startswith("redis_broker.exceptions.Reject")


@pytest.mark.usefixtures("fast_consumers")
def test_elements_other_producers_pushed_are_delivered_as_data(redis_client: redis.Redis) -> None:
    """Tests plain text and foreign JSON elements, and a poison one dead-lettered."""
    seen: list[Any] = []

    def handler(message: StreamMessage) -> None:
        seen.append((message.data, message.stream, message.delivery_count))

    redis_client.rpush("foreign", "hello", '{"a": 1}', "[" * 1000 + "]" * 1000, "[1, 2]")
    spec = ListConsumerSpec(func=handler, list="foreign", name="foreign")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    assert seen == [("hello", "foreign", 1), ({"a": 1}, "foreign", 1), ([1, 2], "foreign", 1)]
    ((_, dead),) = redis_client.xrange(dead_letter_name("foreign", ":dlq"))
    assert "nested deeper" in dead["error"]
