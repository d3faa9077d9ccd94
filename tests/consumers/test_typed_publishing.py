"""Tests of typed objects going out: published data, ``output=`` entries and replies made
from dataclasses and pydantic models carry their fields as JSON."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis

from redis_broker import apublish, publish, publish_many, push, request
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.consumers.runner import ConsumerRunner


@dataclass(frozen=True, slots=True)
class Line:
    """A nested dataclass."""

    sku: str
    qty: int


@dataclass
class Order:
    """A dataclass with Django-encoded values inside (a datetime, a Decimal)."""

    id: int
    placed: datetime.datetime
    total: Decimal
    lines: list[Line] = field(default_factory=list)


ORDER = Order(
    id=1,
    placed=datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
    total=Decimal("9.90"),
    lines=[Line("A1", 2)],
)
#: ``ORDER`` as JSON: its fields, nested ones included, in the forms Django encodes them.
ORDER_JSON = {
    "id": 1,
    "placed": "2024-05-01T12:00:00Z",
    "total": "9.90",
    "lines": [{"sku": "A1", "qty": 2}],
}


@dataclass
class QuoteRequest:
    """What the responders take."""

    sku: str
    qty: int


@dataclass
class Quote:
    """What the responders answer."""

    sku: str
    price: int


def stream_data(client: redis.Redis, stream: str) -> list[Any]:
    """Return the decoded ``data`` of every entry of ``stream``."""
    return [json.loads(fields["data"]) for _, fields in client.xrange(stream)]


def test_publish_puts_a_dataclass_s_fields_on_the_wire(redis_client: redis.Redis) -> None:
    """Tests ``publish()``, ``publish_many()`` and ``push()`` with a nested dataclass."""
    publish("typed.out", ORDER)
    publish_many("typed.out", [ORDER, {"plain": True}])
    push("typed.list", ORDER)
    assert stream_data(redis_client, "typed.out") == [ORDER_JSON, ORDER_JSON, {"plain": True}]
    (element,) = redis_client.lrange("typed.list", 0, -1)
    assert json.loads(element)["data"] == ORDER_JSON


async def test_apublish_puts_a_pydantic_model_s_fields_on_the_wire(
    redis_client: redis.Redis,
) -> None:
    """Tests the async twin with a pydantic model (``model_dump(mode="json")``)."""
    pydantic = pytest.importorskip("pydantic")

    class Invoice(pydantic.BaseModel):
        id: int
        due: datetime.date

    await apublish("typed.invoices", Invoice(id=5, due=datetime.date(2024, 6, 30)))
    assert stream_data(redis_client, "typed.invoices") == [{"id": 5, "due": "2024-06-30"}]


def test_objects_that_are_not_payloads_are_still_refused_before_sending(
    redis_client: redis.Redis,
) -> None:
    """Tests that the encoder names the type it cannot encode, and nothing reaches Redis."""

    class Opaque:
        pass

    with pytest.raises(TypeError, match="Opaque"):
        publish("typed.refused", Opaque())
    with pytest.raises(TypeError, match="type"):
        publish("typed.refused", Order)  # the class, not an instance
    assert not redis_client.exists("typed.refused")


@pytest.mark.usefixtures("fast_consumers")
@pytest.mark.parametrize("via", ["stream", "channel", "list"])
def test_a_responder_returning_a_dataclass_answers_with_its_fields(
    via: str, serve: Callable[..., ConsumerRunner]
) -> None:
    """Tests ``request()`` with a dataclass, answered by a typed responder's dataclass."""

    def quote(message: StreamMessage[QuoteRequest]) -> Quote:
        assert isinstance(message.data, QuoteRequest)
        return Quote(sku=message.data.sku, price=10 * message.data.qty)

    specs = {
        "stream": StreamConsumerSpec(func=quote, stream="typed.q", group="g", name="s"),
        "channel": ChannelConsumerSpec(func=quote, pattern="typed.q", name="c"),
        "list": ListConsumerSpec(func=quote, list="typed.q", name="l"),
    }
    serve(specs[via])
    reply = request("typed.q", QuoteRequest(sku="A1", qty=3), via=via, timeout=5)
    assert reply.data == {"sku": "A1", "price": 30}


@pytest.mark.usefixtures("fast_consumers")
def test_an_output_made_from_a_dataclass_carries_its_fields(redis_client: redis.Redis) -> None:
    """Tests ``output=`` with a handler returning a dataclass (the output shares the input's
    hash tag, so the append and the ack are one step on a Redis Cluster too)."""

    def bill(message: StreamMessage[QuoteRequest]) -> Quote:
        return Quote(sku=message.data.sku, price=message.data.qty)

    publish("{typed}.in", QuoteRequest(sku="B2", qty=7))
    spec = StreamConsumerSpec(
        func=bill, stream="{typed}.in", group="g", name="b", output="{typed}.out"
    )
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    assert stream_data(redis_client, "{typed}.out") == [{"sku": "B2", "price": 7}]
