"""Tests of a worker's ``/metrics``, ``/livez`` and ``/readyz``, and of ``probeconsumers``.

Each test runs a real ``runconsumers --metrics-port 0`` process and reads its endpoints
over HTTP, as Prometheus and a Kubernetes probe would; the figures are compared with
what Redis itself says (XLEN, XINFO GROUPS, XPENDING, the dead-letter stream).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from redis_broker import publish, publish_many
from redis_broker.testing import RedisServer, wait_for
from tests.helpers import manage, subprocess_env
from tests.testapp.consumers import attempts_key

from .helpers import Worker, dead_letters, handled_ids

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STREAM, GROUP = "test.orders", "workers"
LABELS = {"stream": STREAM, "group": GROUP}


def health_port(worker: Worker) -> int:
    """Return the port the worker's health server bound (it was started with port 0)."""
    line = worker.wait_for_line("Metrics and health on")
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    assert match is not None, line
    return int(match.group(1))


def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the worker's health server; return (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Return one sample's value (KeyError when the worker does not expose it)."""
    return samples[(name, tuple(sorted(labels.items())))]


def probe(*args: str) -> tuple[int, str]:
    """Run ``manage.py probeconsumers`` with ``args``; return (exit status, its last line).

    The last line is the verdict; system-check warnings may come before it (on a cluster,
    those about the test app's pattern subscriptions).
    """
    env = subprocess_env(DJANGO_SETTINGS_MODULE="tests.consumers.settings")
    process = manage("probeconsumers", *args, env=env)
    output, _ = process.communicate(timeout=30)
    lines = output.strip().splitlines()
    return process.returncode, lines[-1] if lines else ""


def test_worker_metrics_after_a_scripted_scenario_equal_what_redis_says(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests that /metrics parses and its figures equal XLEN, XINFO, XPENDING and the DLQ.

    Ten entries succeed, one fails once and is retried, one is rejected (dead-lettered).
    """
    worker = start_worker("scripted", "--metrics-port", "0")
    port = health_port(worker)
    worker.wait_for_line("Running")
    publish_many(STREAM, [{"n": n} for n in range(10)])
    publish(STREAM, {"fail_times": 1})
    publish(STREAM, {"reject": True})
    dlq = dead_letters(STREAM)

    def settled() -> bool:
        return (
            redis_client.xlen(dlq) == 1
            and len(handled_ids(redis_client)) == 11
            and int(redis_client.xpending(STREAM, GROUP)["pending"]) == 0
        )

    worker.expect(settled, "11 entries handled, 1 dead-lettered, nothing pending")
    # The counters move when outcomes are collected: read until they stop moving.
    worker.expect(
        lambda: (
            sample(scrape(port), "redis_broker_consumed_total", **LABELS, outcome="acked") == 11
        ),
        "11 acked in /metrics",
    )
    samples = scrape(port)
    group = next(g for g in redis_client.xinfo_groups(STREAM) if g["name"] == GROUP)
    event_ids = [fields["event_id"] for _, fields in redis_client.xrange(STREAM)]
    calls = sum(int(redis_client.get(attempts_key(e)) or 0) for e in event_ids)
    consumed = {
        outcome: sample(samples, "redis_broker_consumed_total", **LABELS, outcome=outcome)
        for outcome in ("acked", "retried", "dead_lettered", "skipped_expired", "dropped")
    }
    assert consumed["acked"] == len(handled_ids(redis_client))
    assert consumed["dead_lettered"] == redis_client.xlen(dlq)
    assert consumed["acked"] + consumed["dead_lettered"] == redis_client.xlen(STREAM)
    assert consumed["acked"] + consumed["dead_lettered"] == group["entries-read"]
    # Every call beyond the first of each entry was a retry; each call was timed.
    assert consumed["retried"] == calls - redis_client.xlen(STREAM) == 1
    assert sample(samples, "redis_broker_process_duration_seconds_count", **LABELS) == calls
    assert consumed["skipped_expired"] == consumed["dropped"] == 0
    assert sample(samples, "redis_broker_in_flight", **LABELS) == group["pending"] == 0
    assert sample(samples, "redis_broker_oldest_call_seconds", **LABELS) == 0


def test_a_handler_that_never_returns_turns_livez_503_while_readyz_stays_200(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests /livez with a stuck handler: 503 naming the consumer once LIVENESS_TIMEOUT
    passes, while Redis answers so /readyz stays 200; the probe exits 1 both ways."""
    worker = start_worker(
        "scripted", "--metrics-port", "0", LIVENESS_TIMEOUT=1.0, HEARTBEAT_INTERVAL=0.2
    )
    port = health_port(worker)
    worker.wait_for_line("Running")
    assert get(port, "/livez")[0] == 200
    assert probe("live", "--port", str(port)) == (0, "live: ok")
    publish(STREAM, {"stuck": True})
    worker.expect(lambda: get(port, "/livez")[0] == 503, "/livez 503")
    status, body = get(port, "/livez")
    answer = json.loads(body)
    assert status == 503 and answer["status"] == "failing"
    [problem] = answer["problems"]
    assert problem["consumer"] == f"scripted ({STREAM}:{GROUP})"
    assert "a handler call has been running for" in problem["reason"]
    assert get(port, "/readyz") == (200, json.dumps({"status": "ok", "problems": []}))
    code, line = probe("live", "--port", str(port))
    assert code == 1 and "a handler call has been running" in line
    # The heartbeat in Redis carries the same verdict, for probes from elsewhere.
    name = worker.wait_for_line("Running").split(" as ")[1].rstrip(":")
    worker.expect(lambda: probe("live", "--consumer-name", name)[0] == 1, "heartbeat: not live")
    code, line = probe("live", "--consumer-name", name)
    assert "a handler call has been running" in line and name in line
    assert probe("ready", "--consumer-name", name)[0] == 0


def test_the_heartbeat_says_ready_as_soon_as_the_worker_announces_itself(
    start_worker: Callable[..., Worker],
) -> None:
    """Tests that ``probeconsumers ready`` from the heartbeat passes once the worker has
    printed its consumers, without waiting a heartbeat interval (here an hour)."""
    worker = start_worker("scripted", HEARTBEAT_INTERVAL=3600.0)
    name = worker.wait_for_line("Running").split(" as ")[1].rstrip(":")
    code, line = probe("ready", "--consumer-name", name)
    assert code == 0, line


def test_livez_answers_503_while_a_handler_blocks_the_event_loop(
    start_worker: Callable[..., Worker],
) -> None:
    """Tests that /livez is served from its own thread: a sync call that stops the loop
    turns it 503 naming the loop, instead of leaving the probe without an answer."""
    worker = start_worker("scripted", "--metrics-port", "0", LIVENESS_TIMEOUT=1.0)
    port = health_port(worker)
    worker.wait_for_line("Running")
    publish(STREAM, {"block_loop_s": 60})
    worker.expect(lambda: get(port, "/livez")[0] == 503, "/livez 503")
    answer = json.loads(get(port, "/livez")[1])
    reasons = [p["reason"] for p in answer["problems"] if p["consumer"] == ""]
    assert len(reasons) == 1 and reasons[0].startswith("the event loop has not run for")


def test_stopping_redis_turns_readyz_503_until_it_answers_again(
    redis_server_factory: Callable[[], RedisServer], start_worker: Callable[..., Worker]
) -> None:
    """Tests /readyz against a private Redis that is stopped and started: 503 naming the
    address meanwhile, 200 again after; /livez stays 200 (waiting for Redis is not stuck)."""
    server = redis_server_factory()
    worker = start_worker(
        "scripted", "--metrics-port", "0", "--no-outbox", redis_url=server.url, LIVENESS_TIMEOUT=1.0
    )
    port = health_port(worker)
    worker.wait_for_line("Running")
    worker.expect(lambda: get(port, "/readyz")[0] == 200, "/readyz 200")
    assert probe("ready", "--port", str(port)) == (0, "ready: ok")
    server.stop()
    worker.expect(lambda: get(port, "/readyz")[0] == 503, "/readyz 503")
    answer = json.loads(get(port, "/readyz")[1])
    assert any(
        p["consumer"] == "" and f"127.0.0.1:{server.port}" in p["reason"]
        for p in answer["problems"]
    ), answer
    code, line = probe("ready", "--port", str(port))
    assert code == 1 and line.startswith("CommandError: not ready:") and "does not answer" in line
    # Longer than LIVENESS_TIMEOUT without Redis: the worker retries, it is not stuck.
    wait_for(lambda: "Redis unreachable" in worker.output, timeout=10)
    assert get(port, "/livez")[0] == 200
    server.start()
    worker.expect(lambda: get(port, "/readyz")[0] == 200, "/readyz 200 again")


def test_the_health_server_answers_404_elsewhere_and_a_taken_port_is_a_command_error(
    start_worker: Callable[..., Worker],
) -> None:
    """Tests that unknown paths are 404 and a second worker on the same port exits 1
    with a line naming the address."""
    worker = start_worker("scripted", "--metrics-port", "0")
    port = health_port(worker)
    assert get(port, "/")[0] == 404
    second = start_worker("scripted", "--metrics-port", str(port))
    assert second.wait() == 1
    assert f"Cannot serve metrics on 127.0.0.1:{port}" in second.output
