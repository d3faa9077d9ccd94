"""Tests of ``manage.py runconsumers`` as users run it: output, burst, start-up errors."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis

from redis_broker import publish_many
from redis_broker.testing import free_port
from tests.testapp.consumers import HANDLED

from .helpers import Worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_burst_handles_1000_entries_once_and_reports_them(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the command end to end: consumer list, final status, nothing pending, exit 0."""
    publish_many("test.orders", [{"n": n} for n in range(1000)])
    worker = start_worker("scripted", "--burst", "--consumer-name", "cron-1")
    assert worker.wait() == 0, worker.output
    assert re.search(
        r"^  tests\.testapp\.consumers\.scripted  stream=test\.orders group=workers "
        r"consumer=cron-1 \(async",
        worker.output,
        re.MULTILINE,
    ), worker.output
    assert "processed=1000 failed=0 dead-lettered=0 pending=0" in worker.lines[-1]
    handled = [line.split()[0] for line in redis_client.lrange(HANDLED, 0, -1)]
    assert len(handled) == len(set(handled)) == 1000
    assert redis_client.xpending("test.orders", "workers")["pending"] == 0


def test_default_consumer_name_is_host_and_pid(start_worker: Callable[..., Worker]) -> None:
    """Tests that each process joins its groups under its own, traceable name."""
    worker = start_worker("scripted", "--burst")
    assert worker.wait() == 0, worker.output
    assert re.search(rf"consumer=\S+-{worker.pid} ", worker.output), worker.output


def test_status_line_is_printed_every_interval(start_worker: Callable[..., Worker]) -> None:
    """Tests the periodic status line: counters, pending, rate and outbox backlog."""
    worker = start_worker("scripted")
    line = worker.wait_for_line("rate=")
    assert re.fullmatch(
        r"processed=\d+ failed=\d+ dead-lettered=\d+ pending=\d+ outbox=\d+ rate=[\d.]+/s", line
    ), line


def test_unreachable_redis_at_start_is_a_command_error(
    start_worker: Callable[..., Worker],
) -> None:
    """Tests that a worker that cannot reach Redis fails fast with the masked URL."""
    port = free_port()
    worker = start_worker("scripted", redis_url=f"redis://:secret@127.0.0.1:{port}/0")
    assert worker.wait() == 1
    assert f"CommandError: Redis at redis://:***@127.0.0.1:{port}/0 is unavailable" in (
        worker.output
    )
    assert "secret" not in worker.output


def test_unknown_consumer_name_is_a_command_error(start_worker: Callable[..., Worker]) -> None:
    """Tests that a typo in NAME is reported with the consumers that exist."""
    worker = start_worker("scriptd", "--burst")
    assert worker.wait() == 1
    assert "No consumer is called 'scriptd'" in worker.output
    assert "scripted (test.orders:workers)" in worker.output


def test_burst_relays_the_outbox_before_exiting(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests that a burst run also publishes model events waiting in the database outbox."""
    from redis_broker.models import OutboxEvent
    from tests.testapp.models import Invoice

    Invoice.objects.create(number="INV-1")
    assert OutboxEvent.objects.count() == 1
    worker = start_worker("scripted", "--burst")
    assert worker.wait() == 0, worker.output
    assert OutboxEvent.objects.count() == 0
    ((_, fields),) = redis_client.xrange("billing.invoices")
    assert fields["type"] == "testapp.invoice.created"
    assert worker.lines[-1].endswith("outbox=0")
