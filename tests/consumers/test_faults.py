"""Fault tests: real ``runconsumers`` processes killed, stopped, split, and left without Redis."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import redis

from redis_broker import publish_many
from redis_broker.testing import RedisServer, wait_for
from tests.testapp.consumers import HANDLED

from .helpers import Worker, handled_ids, handled_pids, published_ids

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_second_worker_claims_what_a_killed_worker_left(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests kill -9 mid-batch: after CLAIM_IDLE_MS another worker handles every entry."""
    publish_many("test.orders", [{"n": n, "sleep_ms": 20} for n in range(200)])
    victim = start_worker("scripted", "--concurrency", "2")
    wait_for(lambda: redis_client.llen(HANDLED) >= 10, timeout=15, message="a started batch")
    victim.signal(signal.SIGKILL)
    victim.wait()
    abandoned = redis_client.xpending("test.orders", "workers")["pending"]
    assert abandoned > 0  # killed in the middle of a batch
    rescuer = start_worker("scripted", "--concurrency", "16")
    everything = published_ids(redis_client)
    rescuer.expect(
        lambda: everything <= set(handled_ids(redis_client)), "every event handled", timeout=30
    )
    wait_for(
        lambda: redis_client.xpending("test.orders", "workers")["pending"] == 0,
        message="nothing pending",
    )
    assert handled_pids(redis_client)[rescuer.pid] >= abandoned
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait() == 0


def test_sigterm_finishes_and_acks_in_flight_entries_then_exits_0(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the warm stop: exit 0, and no handled entry is left pending."""
    publish_many("test.orders", [{"n": n, "sleep_ms": 20} for n in range(300)])
    worker = start_worker("scripted", "--concurrency", "4")
    wait_for(lambda: redis_client.llen(HANDLED) >= 20, timeout=15, message="work in flight")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.output
    assert "SIGTERM: stopping" in worker.output
    done = set(handled_ids(redis_client))
    pending = {
        row["message_id"]
        for row in redis_client.xpending_range("test.orders", "workers", "-", "+", 1000)
    }
    pending_events = {
        fields["event_id"]
        for entry_id, fields in redis_client.xrange("test.orders")
        if entry_id in pending
    }
    assert len(done) < 300  # it did stop early
    assert not done & pending_events
    assert redis_client.llen(HANDLED) == len(done)  # and nothing was handled twice


def test_worker_resumes_after_redis_restarts(
    redis_server_factory: Callable[[], RedisServer], start_worker: Callable[..., Worker]
) -> None:
    """Tests that a worker survives Redis going away and handles entries published after."""
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        worker = start_worker("scripted", "--no-outbox", redis_url=server.url)
        worker.wait_for_line("Running 1 consumer(s)")
        client.xadd("test.orders", {"data": '{"n": 1}', "event_id": "before"})
        wait_for(lambda: handled_ids(client) == ["before"], message="the entry before")
        server.stop()
        worker.wait_for_line("Redis unreachable")
        server.start()
        client.xadd("test.orders", {"data": '{"n": 2}', "event_id": "after"})
        worker.expect(lambda: handled_ids(client) == ["after"], "the entry after", timeout=10)
        assert worker.process.poll() is None
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
        assert worker.output.count("Redis unreachable") == 1  # one warning, then quiet retries
    finally:
        client.close()


def test_two_workers_split_the_work_without_overlap(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests scaling out: two processes in one group share entries, none handled twice."""
    first = start_worker("scripted", "--concurrency", "1", BATCH_SIZE=10)
    second = start_worker("scripted", "--concurrency", "1", BATCH_SIZE=10)
    first.wait_for_line("Running")
    second.wait_for_line("Running")
    publish_many("test.orders", [{"n": n, "sleep_ms": 5} for n in range(300)])
    first.expect(lambda: redis_client.llen(HANDLED) >= 300, "all 300 handled", timeout=30)
    for worker in (first, second):
        worker.signal(signal.SIGTERM)
    assert first.wait() == 0 and second.wait() == 0
    ids = handled_ids(redis_client)
    assert len(ids) == len(set(ids)) == 300
    pids = handled_pids(redis_client)
    assert pids[first.pid] > 0 and pids[second.pid] > 0, pids


def test_worker_recreates_its_group_after_flushall(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests NOGROUP: the group is created again with one warning and work goes on."""
    worker = start_worker("scripted")
    worker.wait_for_line("Running")
    publish_many("test.orders", [{"n": 1}])
    wait_for(lambda: redis_client.llen(HANDLED) == 1, message="the first entry")
    redis_client.flushall()
    publish_many("test.orders", [{"n": n} for n in range(3)])
    after = published_ids(redis_client)
    worker.expect(lambda: set(handled_ids(redis_client)) == after, "entries after the flush")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert worker.output.count("is gone") == 1, worker.output


def test_second_sigterm_stops_at_once_leaving_entries_pending(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the cold stop: a second signal abandons slow handlers; their entries stay pending."""
    publish_many("test.orders", [{"n": n, "sleep_ms": 60_000} for n in range(3)])
    worker = start_worker("scripted")
    worker.wait_for_line("Running")  # the group exists
    wait_for(
        lambda: redis_client.xpending("test.orders", "workers")["pending"] == 3,
        message="three slow entries in flight",
    )
    worker.signal(signal.SIGTERM)
    worker.wait_for_line("SIGTERM: stopping")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 1
    assert "stopping at once" in worker.output
    assert redis_client.llen(HANDLED) == 0
    assert redis_client.xpending("test.orders", "workers")["pending"] == 3  # for a reclaim
