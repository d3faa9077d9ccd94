"""Dead letters keep the whole error: the ``traceback`` field, written when dead-lettering."""

from __future__ import annotations

import pytest
import redis

from redis_broker import publish, push, wire
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import ListConsumerSpec, StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner

from .helpers import dead_letters

pytestmark = pytest.mark.usefixtures("fast_consumers")


def run(*specs: StreamConsumerSpec | ListConsumerSpec) -> None:
    """Run ``specs`` in burst mode until nothing is left, checking the exit status."""
    runner = ConsumerRunner(specs=list(specs), burst=True, relay_outbox=False, echo=lambda _: None)
    assert runner.run() == 0


def parse_amount(text: str) -> int:
    """Fail the way a handler's helper does: deep in the call stack, with a chained cause."""
    try:
        return int(text)
    except ValueError as exc:
        raise RuntimeError(f"bad amount {text!r}") from exc


def charge(message: StreamMessage) -> None:
    """Stand in for a handler that always fails on its payload."""
    parse_amount(message.data["amount"])


def test_stream_dead_letter_keeps_the_traceback_with_its_causes(redis_client: redis.Redis) -> None:
    """Tests that the dead letter holds the handler's frames and chained cause, not just a line."""
    publish("tb.orders", {"amount": "12,50"})
    run(StreamConsumerSpec(func=charge, stream="tb.orders", group="g", name="charge"))
    ((_, dead),) = redis_client.xrange(dead_letters("tb.orders"))
    assert dead[wire.ERROR] == "RuntimeError: bad amount '12,50'"  # unchanged, short form
    trace = dead[wire.TRACEBACK]
    assert trace.startswith("Traceback (most recent call last):")
    # The cause comes first, then the exception it caused.
    assert trace.index("ValueError: invalid literal for int()") < trace.index("RuntimeError")
    assert "The above exception was the direct cause" in trace
    assert "in parse_amount" in trace and "in charge" in trace
    assert trace.endswith("RuntimeError: bad amount '12,50'")


def test_a_huge_traceback_is_cut_to_its_last_4096_characters(redis_client: redis.Redis) -> None:
    """Tests the bound: a traceback past 4 KiB keeps its end (the message), marked with "…"."""

    def shout(message: StreamMessage) -> None:
        raise ValueError("x" * 10_000 + " END")

    publish("tb.huge", {"n": 1})
    run(StreamConsumerSpec(func=shout, stream="tb.huge", group="g", name="shout"))
    ((_, dead),) = redis_client.xrange(dead_letters("tb.huge"))
    assert len(dead[wire.TRACEBACK]) == wire.MAX_TRACEBACK_CHARS
    assert dead[wire.TRACEBACK].startswith("…")
    assert dead[wire.TRACEBACK].endswith("x END")
    assert len(dead[wire.ERROR]) == 4000  # the short field keeps its own, older bound


@pytest.mark.django_db(transaction=True)
def test_list_dead_letter_keeps_the_traceback_too(redis_client: redis.Redis) -> None:
    """Tests that a list consumer's dead letter carries the same ``traceback`` field."""
    push("tb.jobs", {"amount": "ten"})
    run(ListConsumerSpec(func=charge, list="tb.jobs", name="charge_jobs"))
    ((_, dead),) = redis_client.xrange(dead_letters("tb.jobs"))
    assert "in parse_amount" in dead[wire.TRACEBACK]
    assert dead[wire.TRACEBACK].endswith("RuntimeError: bad amount 'ten'")


def test_a_malformed_entry_has_no_traceback_only_its_reason(redis_client: redis.Redis) -> None:
    """Tests that a dead letter without an exception in a handler gets no ``traceback`` field."""
    redis_client.xadd("tb.bad", {"data": "{not json"})
    run(StreamConsumerSpec(func=charge, stream="tb.bad", group="g", name="bad"))
    ((_, dead),) = redis_client.xrange(dead_letters("tb.bad"))
    assert wire.TRACEBACK not in dead
    assert dead[wire.ERROR].startswith("redis_broker.exceptions.MalformedEntry: ")


def test_requeue_fields_drop_the_traceback() -> None:
    """Tests that a requeued dead letter goes back without its dead-letter fields."""
    fields = wire.encode_entry({"n": 1}, type="t")
    dead = wire.dead_letter_fields(
        fields,
        original_stream="s",
        original_id="1-0",
        error="E: x",
        delivery_count=3,
        traceback="Traceback…",
    )
    assert dead[wire.TRACEBACK] == "Traceback…"
    assert wire.requeue_fields(dead) == fields
