"""Tests that no handler stalls its consumer: stuck calls, slow calls, shutdown, burst, names.

Each test runs real ``runconsumers`` processes against the test Redis, so what is
checked is what an operator sees: entries handled, entries pending, exit codes, lines.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable

import pytest
import redis
import redis.asyncio

from redis_broker import publish, publish_many
from redis_broker.conf import get_config
from redis_broker.connection import build_async_client
from redis_broker.heartbeat import WorkerInfo, live_workers
from redis_broker.testing import wait_for
from tests.testapp.consumers import HANDLED, SPANS, attempts_key

from .helpers import Worker, handled_ids, published_ids

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def event_of(client: redis.Redis, stream: str, entry_id: str) -> str:
    """Return the event id of one entry."""
    return str(client.xrange(stream, entry_id, entry_id)[0][1]["event_id"])


def pending(client: redis.Redis, stream: str) -> int:
    """Return how many entries of the test group are pending."""
    return int(client.xpending(stream, "workers")["pending"])


@pytest.mark.parametrize(
    ("name", "stream"), [("scripted_sync", "test.sync"), ("scripted", "test.orders")]
)
def test_a_stuck_handler_does_not_stop_later_entries(
    redis_client: redis.Redis, start_worker: Callable[..., Worker], name: str, stream: str
) -> None:
    """Tests a handler that never returns: the 100 entries after it are all handled."""
    worker = start_worker(name, "--concurrency", "4", SLOW_CALL_WARNING=0.5)
    worker.wait_for_line("Running")
    stuck_id = publish(stream, {"stuck": True})
    publish_many(stream, [{"n": n} for n in range(100)])
    later = published_ids(redis_client, stream) - {event_of(redis_client, stream, stuck_id)}
    worker.expect(lambda: set(handled_ids(redis_client)) == later, "the 100 later entries")
    # The stuck call is reported once, by entry id, and its age shows in the status line.
    line = worker.wait_for_line(f"running on entry {stuck_id}")
    assert "for " in line
    worker.wait_for_line("oldest-call=")
    assert worker.output.count(f"running on entry {stuck_id}") == 1
    assert pending(redis_client, stream) == 1


def test_sigterm_with_a_stuck_sync_handler_exits_after_the_grace_naming_the_entry(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the warm stop's limit: after SHUTDOWN_GRACE the process exits non-zero."""
    worker = start_worker("scripted_sync", SHUTDOWN_GRACE=1.0)
    worker.wait_for_line("Running")
    stuck_id = publish("test.sync", {"stuck": True})
    attempts = attempts_key(event_of(redis_client, "test.sync", stuck_id))
    wait_for(lambda: redis_client.get(attempts), message="the stuck call")
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    code = worker.wait(timeout=15)
    assert time.monotonic() - started < 1.0 + 2.0, worker.output
    assert code == 1, worker.output
    assert "Cold stop" in worker.output
    assert re.search(rf"abandoned 1 in-flight entries \({re.escape(stuck_id)}\)", worker.output), (
        worker.output
    )
    assert pending(redis_client, "test.sync") == 1  # left for another worker


def test_slow_sync_entries_use_the_whole_concurrency_at_once(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests ten 2-second sync calls at concurrency 16: all overlap, done in < 1.5x one call."""
    publish_many("test.sync", [{"n": n, "sleep_ms": 2000} for n in range(10)])
    worker = start_worker("scripted_sync", "--burst", "--concurrency", "16")
    assert worker.wait(timeout=30) == 0, worker.output
    spans = [tuple(map(float, line.split())) for line in redis_client.lrange(SPANS, 0, -1)]
    assert len(spans) == 10
    first_end = min(end for _, end in spans)
    assert all(start < first_end for start, _ in spans)  # every call ran at the same time
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    assert elapsed < 1.5 * 2.0, spans


@pytest.mark.parametrize(
    ("name", "stream"), [("scripted", "test.orders"), ("scripted_sync", "test.sync")]
)
def test_burst_finishes_what_a_killed_worker_left_pending(
    redis_client: redis.Redis, start_worker: Callable[..., Worker], name: str, stream: str
) -> None:
    """Tests ``--burst`` after ``kill -9``: every event is handled, then it exits 0."""
    publish_many(stream, [{"n": n, "sleep_ms": 50} for n in range(40)])
    victim = start_worker(name, "--concurrency", "8", BATCH_SIZE=20)
    wait_for(lambda: redis_client.llen(HANDLED) >= 3, timeout=15, message="calls under way")
    victim.signal(signal.SIGKILL)
    victim.wait()
    assert pending(redis_client, stream) > 0  # the dead worker holds entries
    burst = start_worker(name, "--burst")
    assert burst.wait(timeout=30) == 0, burst.output
    assert published_ids(redis_client, stream) <= set(handled_ids(redis_client))
    assert pending(redis_client, stream) == 0


def test_burst_waits_for_entries_a_live_worker_is_still_handling(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests that burst's exit 0 means done: it waits for another live worker's calls."""
    live = start_worker("scripted", CLAIM_IDLE_MS=60_000)
    live.wait_for_line("Running")
    publish_many("test.orders", [{"n": n, "sleep_ms": 1500} for n in range(3)])
    wait_for(lambda: pending(redis_client, "test.orders") == 3, message="the live worker's calls")
    burst = start_worker("scripted", "--burst", CLAIM_IDLE_MS=60_000)
    assert burst.wait(timeout=30) == 0, burst.output
    assert pending(redis_client, "test.orders") == 0
    assert redis_client.llen(HANDLED) == 3  # handled by the live worker, once each


def test_a_second_live_process_with_the_same_consumer_name_is_refused(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests ``--consumer-name`` clashes: the second process exits 1 and says why."""
    first = start_worker("scripted", "--consumer-name", "billing-1", HEARTBEAT_INTERVAL=0.3)
    first.wait_for_line("Running")
    second = start_worker("scripted", "--consumer-name", "billing-1", HEARTBEAT_INTERVAL=0.3)
    assert second.wait(timeout=15) == 1
    assert "'billing-1' is in use by a live worker" in second.output
    assert "Running" not in second.output
    assert first.process.poll() is None
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.output


def test_a_restarted_worker_takes_its_name_back_after_a_crash(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests that a name held by a killed process is free again once its heartbeat expires."""
    first = start_worker("scripted", "--consumer-name", "billing-1", HEARTBEAT_INTERVAL=0.3)
    first.wait_for_line("Running")
    first.signal(signal.SIGKILL)
    first.wait()
    again = start_worker("scripted", "--consumer-name", "billing-1", HEARTBEAT_INTERVAL=0.3)
    again.wait_for_line("Running")
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.output
    assert not redis_client.exists("redis-broker:worker:billing-1")  # released on exit


def test_live_workers_lists_a_running_worker_and_forgets_it_after_it_stops(
    start_worker: Callable[..., Worker],
) -> None:
    """Tests the heartbeat others read: name, pid and consumers while it runs, gone after."""

    async def names() -> dict[str, WorkerInfo]:
        client = build_async_client(get_config())  # a cluster client on a cluster
        try:
            return {info.name: info for info in await live_workers(client, "")}
        finally:
            await client.aclose()

    worker = start_worker("scripted", "--consumer-name", "mailer-7", HEARTBEAT_INTERVAL=0.3)
    worker.wait_for_line("Running")
    info = asyncio.run(names())["mailer-7"]
    assert info.pid == worker.pid
    [consumer] = info.consumers
    progress_age = consumer.pop("progress_age_s")
    assert consumer == {
        "kind": "stream",
        "name": "scripted",
        "stream": "test.orders",
        "group": "workers",
        "in_flight": 0,
        "oldest_call_s": None,
        "live": True,
        "ready": True,
        "problem": None,
    }
    assert 0 <= progress_age < 5
    first_beat = info.beat_at
    wait_for(lambda: asyncio.run(names())["mailer-7"].beat_at > first_beat, message="a beat")
    # The claim is written before the groups exist ("starting"); beats after it are ready.
    later = asyncio.run(names())["mailer-7"]
    assert (later.live, later.ready, later.problems) == (True, True, ())
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert "mailer-7" not in asyncio.run(names())


def test_a_live_worker_keeps_its_slow_calls_from_other_workers(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests claim renewal: calls three times CLAIM_IDLE_MS long are handled once, not twice."""
    first = start_worker("scripted", CLAIM_IDLE_MS=300)
    first.wait_for_line("Running")
    publish_many("test.orders", [{"n": n, "sleep_ms": 900} for n in range(3)])
    wait_for(lambda: pending(redis_client, "test.orders") == 3, message="three slow calls")
    second = start_worker("scripted", CLAIM_IDLE_MS=300)
    second.wait_for_line("Running")
    first.expect(lambda: redis_client.llen(HANDLED) == 3, "the three calls")
    wait_for(lambda: pending(redis_client, "test.orders") == 0, message="the acks")
    for event_id in published_ids(redis_client, "test.orders"):
        assert redis_client.get(attempts_key(event_id)) == "1"
    for worker in (first, second):
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
