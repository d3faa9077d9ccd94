"""Tests of channel consumers: patterns with parameters, one connection, resubscription."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from redis_broker import broadcast
from redis_broker.connection import pubsub_publish
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import ChannelConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.testing import RedisServer, wait_for
from tests.testapp.consumers import PRICES

from .helpers import Worker

pytestmark = pytest.mark.usefixtures("fast_consumers")

#: Why the pattern tests skip on a cluster (tests/cluster tests the refusal instead).
NO_PATTERNS = "a Redis Cluster has no sharded patterns: a pattern consumer refuses to start"


def prices(client: redis.Redis) -> list[list[str]]:
    """Return what ``on_price`` recorded: symbol, event id and channel of each message."""
    return [line.split() for line in client.lrange(PRICES, 0, -1)]


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[ConsumerRunner], None]]:
    """Return ``start(runner)``: run a runner in a thread; it is stopped and joined after."""
    started: list[tuple[ConsumerRunner, threading.Thread]] = []

    def start(runner: ConsumerRunner) -> None:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        wait_for(lambda: runner.workers and runner._stop is not None, message="a running runner")

    yield start
    for runner, thread in started:
        runner.stop()
        thread.join(timeout=15)
        assert not thread.is_alive()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_parameter_of_the_pattern_is_passed_as_a_keyword(
    redis_client: redis.Redis, start_worker: Callable[..., Worker], redis_broker_cluster: bool
) -> None:
    """Tests ``@channel_consumer("test.prices.{symbol}")`` receiving ``test.prices.ABC``."""
    if redis_broker_cluster:
        pytest.skip(NO_PATTERNS)
    worker = start_worker("on_price")
    worker.wait_for_line("Running")
    assert broadcast("test.prices.ABC", {"price": 10}) == 1
    worker.expect(lambda: prices(redis_client), "the price message")
    ((symbol, event_id, channel),) = prices(redis_client)
    assert (symbol, channel) == ("ABC", "test.prices.ABC")
    assert len(event_id) == 36
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output


def test_one_process_holds_one_pubsub_connection_for_every_channel_consumer(
    redis_client: redis.Redis,
    run_in_thread: Callable[[ConsumerRunner], None],
    redis_broker_cluster: bool,
) -> None:
    """Tests five channel consumers (three names, two patterns) on one Pub/Sub connection."""
    if redis_broker_cluster:
        pytest.skip(NO_PATTERNS)
    seen: list[tuple[str, dict[str, Any]]] = []

    def make(pattern: str) -> ChannelConsumerSpec:
        def handler(message: StreamMessage, **params: Any) -> None:
            seen.append((message.stream, params))

        return ChannelConsumerSpec(func=handler, pattern=pattern, name=pattern)

    patterns = ["a.one", "a.two", "a.three", "b.*", "c.{x}.{y}"]
    runner = ConsumerRunner(
        specs=[make(p) for p in patterns], relay_outbox=False, echo=lambda line: None
    )
    run_in_thread(runner)
    wait_for(lambda: runner.subscriber and runner.subscriber.subscribed.is_set(), message="live")
    subscribed = [c for c in redis_client.client_list() if int(c["sub"]) or int(c["psub"])]
    assert len(subscribed) == 1, subscribed
    assert (int(subscribed[0]["sub"]), int(subscribed[0]["psub"])) == (3, 2)
    broadcast("a.two", 1)
    broadcast("b.anything", 2)
    broadcast("c.left.right", 3)
    wait_for(lambda: len(seen) == 3, message="three messages")
    assert sorted(seen) == [
        ("a.two", {}),
        ("b.anything", {}),
        ("c.left.right", {"x": "left", "y": "right"}),
    ]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_channel_consumers_subscribe_again_after_redis_restarts(
    redis_server_factory: Callable[[], RedisServer],
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tests a Redis restart: within 2 s the process is subscribed again and handles messages."""
    # A single Redis of its own, in a cluster session too (tests/cluster restarts a shard).
    monkeypatch.setenv("REDIS_CLUSTER", "0")
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        worker = start_worker("on_price", "--no-outbox", redis_url=server.url)
        worker.wait_for_line("Running")
        client.publish("test.prices.A", '{"type":"","data":1,"event_id":"e1","published_at":""}')
        wait_for(lambda: prices(client) == [["A", "e1", "test.prices.A"]], message="before")
        server.stop()
        server.start()
        wait_for(lambda: client.pubsub_numpat() == 1, timeout=2.0, message="subscribed again")
        client.publish("test.prices.B", '{"type":"","data":2,"event_id":"e2","published_at":""}')
        worker.expect(lambda: prices(client) == [["B", "e2", "test.prices.B"]], "the one after")
        worker.wait_for_line("may have been missed")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        client.close()


def test_a_malformed_message_is_dropped_and_the_next_one_handled(
    redis_client: redis.Redis, run_in_thread: Callable[[ConsumerRunner], None]
) -> None:
    """Tests that a message nested 1,000 deep neither stops the subscriber nor the consumer."""
    seen: list[Any] = []
    spec = ChannelConsumerSpec(func=lambda m: seen.append(m.data), pattern="poison", name="p")
    runner = ConsumerRunner(specs=[spec], relay_outbox=False, echo=lambda line: None)
    run_in_thread(runner)
    wait_for(lambda: runner.subscriber and runner.subscriber.subscribed.is_set(), message="live")
    pubsub_publish(redis_client, "poison", "[" * 1000 + "]" * 1000)  # SPUBLISH on a cluster
    broadcast("poison", {"fine": True})
    wait_for(lambda: seen == [{"fine": True}], message="the message after the poison")
    assert runner.workers[0].stats.failed == 1
