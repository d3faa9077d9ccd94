"""Tests of OpenTelemetry traces: one trace from a view's save to a consumer's output.

Every test runs against the real Redis of the suite; spans are captured with the SDK's
in-memory exporter (``tests/otel.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings
from opentelemetry.trace import SpanKind

from redis_broker import broadcast, publish, publish_many, push, request
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import ChannelConsumerSpec, StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.models import OutboxEvent
from redis_broker.outbox import OutboxRelay
from redis_broker.requests import get_inbox, reset_inbox
from redis_broker.testing import wait_for
from tests.consumers.helpers import FAST
from tests.otel import Captured, captured, ids, parent_id, traceparent
from tests.testapp.models import Invoice, Order

__all__ = ["captured"]  # the fixture, imported to be found by pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fast_consumers() -> Iterator[None]:
    """Short blocks and back-offs, and a fresh request inbox, for this test."""
    current = dict(settings.REDIS_BROKER)
    reset_inbox()
    with override_settings(REDIS_BROKER={**current, "CONSUMERS": dict(FAST)}):
        yield
    reset_inbox()


def headers_of(fields: dict[str, str]) -> dict[str, Any]:
    """Return an entry's decoded ``headers`` field."""
    return json.loads(fields["headers"])  # type: ignore[no-any-return]


def run_burst(*specs: Any) -> int:
    """Run ``specs`` in this process until nothing is left; return the exit status."""
    runner = ConsumerRunner(specs=list(specs), burst=True, relay_outbox=False, echo=lambda _: None)
    return runner.run()


def create_invoice(request: HttpRequest) -> HttpResponse:
    """A view saving an outbox-delivered model in a transaction."""
    with transaction.atomic():
        Invoice.objects.create(number="F-1", amount=Decimal("12.50"))
    return HttpResponse(status=201)


def bill(message: StreamMessage) -> dict[str, Any]:
    """A sync consumer (it runs on a lane thread) that publishes and returns an output."""
    publish("audit.billing", {"invoice": message.data["pk"]})
    return {"billed": message.data["pk"]}


@pytest.mark.django_db(transaction=True)
def test_one_trace_spans_a_views_outbox_save_the_relay_a_consumer_and_its_output(
    captured: Captured, redis_client: redis.Redis
) -> None:
    """Tests the whole path: view span -> outbox row -> relay publish -> process -> output.

    Transactional: the outbox row must commit with the save, as in production.
    """
    with captured.tracer.start_as_current_span("POST /invoices", kind=SpanKind.SERVER) as view:
        assert create_invoice(RequestFactory().post("/invoices")).status_code == 201
    trace_id, view_id = ids(view)  # type: ignore[arg-type]

    (row,) = OutboxEvent.objects.all()
    assert traceparent(headers_of(row.fields)) == (trace_id, view_id)  # taken at save time

    assert OutboxRelay().relay_batch() == 1
    ((_, entry),) = redis_client.xrange("billing.invoices")
    assert traceparent(headers_of(entry)) == (trace_id, view_id)

    spec = StreamConsumerSpec(
        func=bill, stream="billing.invoices", group="billing", name="bill", output="billing.done"
    )
    assert run_burst(spec) == 0

    (relayed,) = captured.named("publish billing.invoices")
    (process,) = captured.named("process billing.invoices")
    (audit,) = captured.named("publish audit.billing")
    assert {ids(span)[0] for span in (relayed, process, audit)} == {trace_id}
    assert (relayed.kind, parent_id(relayed)) == (SpanKind.PRODUCER, view_id)
    assert (process.kind, parent_id(process)) == (SpanKind.CONSUMER, view_id)
    assert (audit.kind, parent_id(audit)) == (SpanKind.PRODUCER, ids(process)[1])
    assert dict(process.attributes or {}) == {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "billing.invoices",
        "messaging.consumer.group.name": "billing",
        "messaging.message.id": entry["event_id"],
    }
    assert (relayed.attributes or {})["messaging.message.id"] == entry["event_id"]

    ((_, output),) = redis_client.xrange("billing.done")
    assert headers_of(output)["input_event_id"] == entry["event_id"]
    assert traceparent(headers_of(output)) == ids(process)  # the call's span, not the loop's
    ((_, audited),) = redis_client.xrange("audit.billing")
    assert traceparent(headers_of(audited)) == ids(audit)


@pytest.mark.django_db(transaction=True)
def test_an_on_commit_model_event_is_published_in_the_trace_of_the_view_that_saved_it(
    captured: Captured, redis_client: redis.Redis
) -> None:
    """Tests ``on_commit`` delivery: the event published at commit names the saving span."""
    with captured.tracer.start_as_current_span("POST /orders") as view:
        with transaction.atomic():
            Order.objects.create(status="new")
    ((_, entry),) = redis_client.xrange("shop.orders")
    assert traceparent(headers_of(entry)) == ids(view)  # type: ignore[arg-type]
    (published,) = captured.named("publish shop.orders")
    assert parent_id(published) == ids(view)[1]  # type: ignore[arg-type]


@pytest.mark.django_db(transaction=True)
def test_no_header_and_no_span_when_nothing_is_traced(
    captured: Captured, redis_client: redis.Redis
) -> None:
    """Tests that outside any span the wire is what it was without tracing."""
    publish("plain.s", {"n": 1})
    publish_many("plain.s", [{"n": 2}, {"n": 3}])
    push("plain.l", {"n": 4})
    broadcast("plain.c", {"n": 5})
    with transaction.atomic():
        Invoice.objects.create(number="F-2")
    assert all("headers" not in fields for _, fields in redis_client.xrange("plain.s"))
    assert "headers" not in json.loads(redis_client.lindex("plain.l", 0) or "{}")
    assert "headers" not in OutboxEvent.objects.get().fields
    assert captured.spans() == []

    with captured.tracer.start_as_current_span("job") as job:
        publish_many("plain.s", [{"n": 6}, {"n": 7}])
        push("plain.l", {"n": 8}, headers={"own": "kept"})
    traced = [headers_of(fields) for _, fields in redis_client.xrange("plain.s")[3:]]
    (batch,) = captured.named("publish plain.s")
    assert [traceparent(h) for h in traced] == [ids(batch)] * 2
    assert (batch.attributes or {})["messaging.batch.message_count"] == 2
    assert parent_id(batch) == ids(job)[1]  # type: ignore[arg-type]
    pushed = json.loads(redis_client.lindex("plain.l", 1) or "{}")["headers"]
    assert pushed["own"] == "kept"
    assert traceparent(pushed) == ids(captured.named("push plain.l")[0])


def test_without_opentelemetry_the_module_is_a_no_op(redis_broker_url: str) -> None:
    """Tests, in a process where ``opentelemetry`` cannot be imported, that every entry
    point returns at once and a publish writes no header."""
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # import opentelemetry -> ImportError
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["redis_broker"], REDIS_BROKER={{"URL": {redis_broker_url!r}}})
django.setup()
from redis_broker import publish, tracing, get_redis

def handler(message):
    return message

assert tracing.ENABLED is False
assert tracing.current_carrier() is None
assert tracing.inject_into({{"a": 1}}) == {{"a": 1}}
assert tracing.producing("publish", "x", root=True) is tracing.NOT_TRACED
assert tracing.traced_handler(handler, is_async=False, destination="x") is handler
publish("noop.s", {{"n": 1}})
(_, fields), = get_redis().xrange("noop.s")
assert b"headers" not in fields, fields
print("no-op")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no-op"


async def on_price(message: StreamMessage, symbol: str) -> None:
    """An async channel consumer with a parameter."""


def test_a_channel_consumer_continues_the_trace_of_a_broadcast(
    captured: Captured, serve: Callable[..., ConsumerRunner]
) -> None:
    """Tests a pattern channel consumer: its span is the broadcast's child, named by the
    pattern (low cardinality) with the channel as the destination."""
    serve(ChannelConsumerSpec(func=on_price, pattern="prices.{symbol}", name="prices"))
    with captured.tracer.start_as_current_span("job") as job:
        assert broadcast("prices.ABC", {"price": 10}) == 1
    wait_for(lambda: captured.named("process prices.{symbol}"), message="the process span")
    (sent,) = captured.named("broadcast prices.ABC")
    (process,) = captured.named("process prices.{symbol}")
    assert parent_id(sent) == ids(job)[1]  # type: ignore[arg-type]
    assert (ids(process)[0], parent_id(process)) == ids(sent)
    attributes = process.attributes or {}
    assert attributes["messaging.destination.name"] == "prices.ABC"
    assert attributes["messaging.destination.template"] == "prices.{symbol}"


def double(message: StreamMessage) -> int:
    """A responder."""
    return int(message.data) * 2


def test_a_requests_reply_continues_the_requests_trace(
    captured: Captured, serve: Callable[..., ConsumerRunner], redis_client: redis.Redis
) -> None:
    """Tests request/reply: client span -> process span -> reply carrying the process span."""
    serve(StreamConsumerSpec(func=double, stream="rpc.traced", group="g", name="double"))
    with captured.tracer.start_as_current_span("caller") as caller:
        reply = request("rpc.traced", 21, timeout=5)
    assert reply.data == 42
    assert "traceparent" not in reply.headers  # the protocol's header, not the responder's
    (asked,) = captured.named("request rpc.traced")
    (process,) = captured.named("process rpc.traced")
    assert (asked.kind, parent_id(asked)) == (SpanKind.CLIENT, ids(caller)[1])  # type: ignore[arg-type]
    assert (ids(process)[0], parent_id(process)) == ids(asked)
    conversation = (asked.attributes or {})["messaging.message.conversation_id"]
    assert (process.attributes or {})["messaging.message.conversation_id"] == conversation
    ((_, answer),) = redis_client.xrange(get_inbox().key)
    assert headers_of(answer)["correlation_id"] == conversation
    assert traceparent(headers_of(answer)) == ids(process)
