"""Tests of the in-process instruments (``redis_broker.metrics.process``) and the health
server (``redis_broker.health``), in this process, against the test Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from redis_broker import (
    Reject,
    StreamMessage,
    apublish,
    broadcast,
    publish,
    publish_many,
    push,
    request,
)
from redis_broker.conf import get_config
from redis_broker.connection import aclose_async_redis
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.consumers.streams import GroupWorker
from redis_broker.exceptions import NoResponders, RemoteError, RequestTimeout
from redis_broker.health import HealthServer, ProcessHealth
from redis_broker.requests import reset_inbox
from redis_broker.testing import free_port, wait_for
from tests.test_checks import only, run_check


def published(kind: str) -> float:
    """Return ``redis_broker_published_total{kind}`` of this process."""
    return REGISTRY.get_sample_value("redis_broker_published_total", {"kind": kind}) or 0.0


def requests_total(outcome: str) -> float:
    """Return ``redis_broker_requests_total{outcome}`` of this process."""
    return REGISTRY.get_sample_value("redis_broker_requests_total", {"outcome": outcome}) or 0.0


def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path``; return (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_every_publish_path_is_counted_by_kind() -> None:
    """Tests publish, publish_many (per entry), apublish, broadcast and push."""
    before = {kind: published(kind) for kind in ("stream", "channel", "list")}
    publish("orders", {"n": 1})
    publish_many("orders", [{"n": 2}, {"n": 3}, {"n": 4}])

    async def publish_async() -> None:
        try:
            await apublish("orders", {"n": 5})
        finally:
            await aclose_async_redis()

    asyncio.run(publish_async())
    broadcast("news", {"n": 6})
    push("jobs", {"n": 7})
    assert published("stream") - before["stream"] == 5
    assert published("channel") - before["channel"] == 1
    assert published("list") - before["list"] == 1


def test_metrics_off_counts_nothing() -> None:
    """Tests that ``REDIS_BROKER["METRICS"] = False`` leaves the counters alone."""
    before = published("stream")
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "METRICS": False}):
        publish("orders", {"n": 1})
    assert published("stream") == before


def test_a_request_nobody_answers_is_counted_as_no_responders() -> None:
    """Tests ``redis_broker_requests_total{outcome="no_responders"}``."""
    before = requests_total("no_responders")
    with pytest.raises(NoResponders):
        request("nobody.home", {"q": 1}, timeout=1)
    assert requests_total("no_responders") - before == 1


@pytest.fixture
def health_server() -> Iterator[tuple[ProcessHealth, int]]:
    """Serve a ProcessHealth without consumers on a free port, for one test."""
    health = ProcessHealth([], get_config())
    health.started = True
    server = HealthServer(health, port=0)
    port = server.start()
    yield health, port
    server.stop()


def test_the_health_server_serves_prometheus_text_and_json_verdicts(
    health_server: tuple[ProcessHealth, int],
) -> None:
    """Tests /metrics (parsed by prometheus_client), /livez and /readyz, 404 elsewhere."""
    _, port = health_server
    publish("orders", {"n": 1})
    status, text = get(port, "/metrics")
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"redis_broker_published", "redis_broker_requests"} <= names
    assert get(port, "/livez") == (200, json.dumps({"status": "ok", "problems": []}))
    assert get(port, "/readyz")[0] == 200
    assert get(port, "/nope")[0] == 404


def test_livez_names_an_event_loop_that_stopped_ticking(
    health_server: tuple[ProcessHealth, int],
) -> None:
    """Tests that a loop stamp older than LIVENESS_TIMEOUT turns /livez 503."""
    health, port = health_server
    health.loop_at = time.monotonic() - health.timeout - 1
    status, body = get(port, "/livez")
    assert status == 503
    [problem] = json.loads(body)["problems"]
    assert problem["consumer"] == ""
    assert problem["reason"].startswith("the event loop has not run for")


def test_readyz_names_a_redis_that_does_not_answer() -> None:
    """Tests /readyz against an address where nothing listens: 503 with the address."""
    port = free_port()
    with override_settings(REDIS_BROKER={"URL": f"redis://127.0.0.1:{port}/0"}):
        health = ProcessHealth([], get_config())
    health.started = True
    server = HealthServer(health, port=0)
    try:
        status, body = get(server.start(), "/readyz")
    finally:
        server.stop()
    assert status == 503
    [problem] = json.loads(body)["problems"]
    assert f"127.0.0.1:{port}" in problem["reason"] and "does not answer" in problem["reason"]


def test_readyz_is_503_until_the_runner_has_created_its_groups(
    health_server: tuple[ProcessHealth, int],
) -> None:
    """Tests the "starting" answer of a runner that has not finished starting."""
    health, port = health_server
    health.started = False
    status, body = get(port, "/readyz")
    assert status == 503
    assert json.loads(body)["problems"][0]["reason"].startswith("starting")


def test_a_consumer_with_work_waiting_and_no_progress_is_not_live() -> None:
    """Tests the rule no subprocess test reaches quickly: entries handed out (in flight),
    no read returned and no outcome came in for LIVENESS_TIMEOUT. An idle consumer with
    the same old stamp stays live."""

    def handler(message: Any) -> None:
        pass

    spec = StreamConsumerSpec(func=handler, stream="orders", group="g", name="handler")
    worker = GroupWorker(spec, config=get_config(), consumer="c")
    long_ago = time.monotonic() - worker.liveness_timeout - 1
    worker.progress_at = long_ago
    assert worker.liveness_problem() is None  # idle: nothing waits for it
    worker.full_read = True  # its last read filled a batch: more waits
    problem = worker.liveness_problem()
    assert problem is not None and problem.startswith("no progress for")
    assert worker.describe_for_heartbeat()["live"] is False


def test_a_liveness_timeout_not_longer_than_block_ms_is_e010() -> None:
    """Tests that LIVENESS_TIMEOUT must exceed BLOCK_MS (a read would look like a stall)."""
    error = only(run_check({"CONSUMERS": {"BLOCK_MS": 2000, "LIVENESS_TIMEOUT": 2}}))
    assert error.id == "redis_broker.E010"
    assert error.msg.startswith(
        "REDIS_BROKER['CONSUMERS']['LIVENESS_TIMEOUT'] (2 s) must be longer than BLOCK_MS"
    )


def test_metrics_that_is_not_a_bool_is_e003() -> None:
    """Tests that ``METRICS`` must be True or False."""
    error = only(run_check({"METRICS": "yes"}))
    assert error.id == "redis_broker.E003"
    assert error.msg == "REDIS_BROKER['METRICS'] must be bool, not str."


def consumed(stream: str, group: str, outcome: str) -> float:
    """Return ``redis_broker_consumed_total`` of one consumer and outcome, in this process."""
    labels = {"stream": stream, "group": group, "outcome": outcome}
    return REGISTRY.get_sample_value("redis_broker_consumed_total", labels) or 0.0


def answer(message: StreamMessage) -> Any:
    """Answer as the payload says: "no" is rejected, "slow" takes a second, else echo."""
    if message.data == "no":
        raise Reject("no")
    if message.data == "slow":
        time.sleep(1)
    return message.data


def fail_on_odd(message: StreamMessage) -> None:
    """Raise on odd numbers (a channel consumer: the message is dropped)."""
    if int(message.data) % 2:
        raise ValueError("odd")


@pytest.fixture
def runner() -> Iterator[ConsumerRunner]:
    """Run a stream, a list and a channel consumer in this process until the test ends."""
    reset_inbox()
    runner = ConsumerRunner(
        specs=[
            StreamConsumerSpec(func=answer, stream="m.rpc", group="g", name="rpc"),
            ListConsumerSpec(func=answer, list="m.jobs", name="jobs"),
            ChannelConsumerSpec(func=fail_on_odd, pattern="m.ticks.*", name="ticks"),
        ],
        relay_outbox=False,
        echo=lambda line: None,
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    wait_for(lambda: runner.subscriber is not None and runner.subscriber.subscribed.is_set())
    yield runner
    runner.stop()
    thread.join(timeout=15)
    reset_inbox()


def test_requests_and_list_and_channel_consumers_are_counted_where_they_settle(
    runner: ConsumerRunner, redis_client: redis.Redis
) -> None:
    """Tests request outcomes (replied, remote_error, timeout) and the consumed outcomes of
    a list (acked, dead_lettered: the dead-letter stream's length) and of a channel pattern
    (acked, dropped), all counted by the one registry of this process."""
    before = {o: requests_total(o) for o in ("replied", "remote_error", "timeout")}
    assert request("m.rpc", "hi", timeout=5).data == "hi"
    with pytest.raises(RemoteError):
        request("m.rpc", "no", timeout=5)
    with pytest.raises(RequestTimeout):
        request("m.rpc", "slow", timeout=0.2)
    assert {o: requests_total(o) - n for o, n in before.items()} == {
        "replied": 1,
        "remote_error": 1,
        "timeout": 1,
    }
    push("m.jobs", "ok")
    push("m.jobs", "no")
    for n in range(4):
        broadcast(f"m.ticks.{n}", n)
    wait_for(
        lambda: (
            consumed("m.jobs", "", "acked") + consumed("m.jobs", "", "dead_lettered") == 2
            and consumed("m.ticks.*", "", "acked") + consumed("m.ticks.*", "", "dropped") == 4
        ),
        message="every item and message settled",
    )
    assert consumed("m.jobs", "", "dead_lettered") == redis_client.xlen("m.jobs:dlq") == 1
    assert consumed("m.ticks.*", "", "dropped") == 2
    # Of the three requests, "hi" and the late "slow" are acked, "no" is dead-lettered.
    wait_for(lambda: consumed("m.rpc", "g", "acked") == 2)
    assert consumed("m.rpc", "g", "dead_lettered") == redis_client.xlen("m.rpc:dlq") == 1
