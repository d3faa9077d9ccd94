"""Tests of ``output=``: one output per handled input, none for dead letters or None."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from redis_broker import broadcast, publish, publish_many, push
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import ChannelConsumerSpec, ListConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.testing import wait_for
from tests.testapp.consumers import BILLED, attempts_key

from .helpers import Worker, dead_letters, published_ids

STREAM = "test.billing"


def outputs(client: redis.Redis, stream: str = BILLED) -> list[tuple[str, Any]]:
    """Return (input event id, data) of every output entry."""
    return [
        (json.loads(fields["headers"])["input_event_id"], json.loads(fields["data"]))
        for _, fields in client.xrange(stream)
    ]


def run_burst(*selectors: str) -> int:
    """Run the selected consumers until nothing is left; return the exit status."""
    return ConsumerRunner(selectors, burst=True, relay_outbox=False, echo=lambda line: None).run()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_each_input_yields_exactly_one_output_through_kills_and_reclaims(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests 1,000 inputs, workers killed mid-way, others reclaiming: 1,000 outputs, one each."""
    publish_many(STREAM, [{"n": n, "sleep_ms": 3} for n in range(1000)])
    inputs = published_ids(redis_client, STREAM)
    for threshold in (150, 450):
        victim = start_worker("bill", "--concurrency", "8", BATCH_SIZE=20)
        wait_for(lambda t=threshold: redis_client.xlen(BILLED) >= t, timeout=30, message="outputs")
        victim.signal(signal.SIGKILL)
        victim.wait()
    rescuers = [start_worker("bill", "--concurrency", "8", BATCH_SIZE=20) for _ in range(2)]
    rescuers[0].expect(
        lambda: (
            redis_client.xpending(STREAM, "billing")["pending"] == 0
            and redis_client.xlen(BILLED) >= 1000
        ),
        "every input acked with its output",
        timeout=60,
    )
    made = Counter(event_id for event_id, _ in outputs(redis_client))
    assert redis_client.xlen(dead_letters(STREAM)) == 0
    assert set(made) == inputs
    assert max(made.values()) == 1
    assert redis_client.xlen(BILLED) == 1000
    for worker in rescuers:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output


@pytest.mark.usefixtures("fast_consumers")
def test_dead_lettered_and_none_returning_inputs_yield_no_output(redis_client: redis.Redis) -> None:
    """Tests that only a handled input with a value makes an output."""
    rejected = publish(STREAM, {"n": 1, "reject": True})
    exhausted = publish(STREAM, {"n": 2, "fail_times": 99})
    publish(STREAM, {"n": 3, "none": True})
    publish(STREAM, {"n": 4, "fail_times": 1})
    assert run_burst("bill") == 0
    assert [data["order"] for _, data in outputs(redis_client)] == [4]
    dead = [fields["original_id"] for _, fields in redis_client.xrange(dead_letters(STREAM))]
    assert dead == [rejected, exhausted]


@pytest.mark.usefixtures("fast_consumers")
def test_list_and_channel_consumers_append_their_outputs_too(redis_client: redis.Redis) -> None:
    """Tests ``output=`` on a list consumer (with the item's removal) and a channel consumer."""

    def double(message: StreamMessage) -> dict[str, Any]:
        return {"twice": message.data * 2}

    push("numbers", 21)
    pushed = json.loads(redis_client.lindex("numbers", 0) or "{}")["event_id"]
    # The output shares the list's hash tag: one atomic step touches both (a cluster's rule).
    spec = ListConsumerSpec(func=double, list="numbers", name="double", output="{numbers}.doubled")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    ((source, data),) = outputs(redis_client, "{numbers}.doubled")
    assert (source, data) == (pushed, {"twice": 42})
    assert redis_client.llen("numbers") == 0

    channel_spec = ChannelConsumerSpec(
        func=double, pattern="numbers.live", name="live", output="live.doubled"
    )
    live = ConsumerRunner(specs=[channel_spec], relay_outbox=False, echo=lambda line: None)
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    wait_for(lambda: live.subscriber and live.subscriber.subscribed.is_set(), message="live")
    broadcast("numbers.live", 5)
    wait_for(lambda: redis_client.xlen("live.doubled") == 1, message="the channel's output")
    live.stop()
    thread.join(timeout=15)
    assert outputs(redis_client, "live.doubled")[0][1] == {"twice": 10}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_on_a_reclaimed_entry_append_one_output(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests a worker paused past CLAIM_IDLE_MS mid-call: another one reclaims and handles
    the entries, the first one finishes them too when it resumes; one output each."""
    publish_many(STREAM, [{"n": n, "sleep_ms": 500} for n in range(4)])
    inputs = published_ids(redis_client, STREAM)
    first = start_worker("bill", CLAIM_IDLE_MS=300)
    first.wait_for_line("Running")
    wait_for(lambda: redis_client.xpending(STREAM, "billing")["pending"] == 4, message="taken")
    first.signal(signal.SIGSTOP)  # a long pause: it cannot renew its claim
    second = start_worker("bill", CLAIM_IDLE_MS=300)
    wait_for(lambda: redis_client.xlen(BILLED) == 4, message="the second worker's outputs")
    first.signal(signal.SIGCONT)
    # The first worker still holds the four entries in its lanes: it handles them too...
    first.expect(
        lambda: all(int(redis_client.get(attempts_key(e)) or 0) == 2 for e in inputs),
        "the paused worker's calls",
    )
    first.wait_for_line("processed=4")
    for worker in (first, second):  # ...and its warm stop settles them
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    assert redis_client.xpending(STREAM, "billing")["pending"] == 0
    made = Counter(event_id for event_id, _ in outputs(redis_client))
    assert set(made) == inputs and max(made.values()) == 1  # ...without a second output
