"""Tests of typed handlers: payloads checked and converted before the handler, for every
kind of consumer, and a payload that does not validate dead-lettered on its first delivery."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
import redis

from redis_broker import Reject, RemoteError, broadcast, publish, push, request
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ConsumerRegistry,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.exceptions import ConsumerDefinitionError
from redis_broker.testing import wait_for

from .helpers import dead_letters

pytestmark = pytest.mark.usefixtures("fast_consumers")


@dataclass
class Order:
    """The payload the typed handlers declare."""

    id: int
    total: float
    customer: str


class OrderDict(TypedDict):
    """The same payload as a TypedDict."""

    id: int
    total: float


#: A payload whose ``total`` is no number: every typed handler here refuses it.
BAD = {"id": 1, "total": "lots", "customer": "ann"}


def run_burst(*specs: Any) -> int:
    """Run ``specs`` in burst mode in this process until nothing is left; return the code."""
    return ConsumerRunner(
        specs=list(specs), burst=True, relay_outbox=False, echo=lambda line: None
    ).run()


def only_dead_letter(client: redis.Redis, name: str) -> dict[str, str]:
    """Return the one dead letter of ``name`` (fails unless there is exactly one)."""
    ((_, dead),) = client.xrange(dead_letters(name))
    return dead


def assert_validation_dead_letter(dead: dict[str, str], name: str, field: str) -> None:
    """Check a dead letter of a payload refused on its first delivery, naming ``field``."""
    assert dead["error"].startswith("validation:"), dead["error"]
    assert field in dead["error"], dead["error"]
    assert dead["delivery_count"] == "1"
    assert dead["original_stream"] == name
    assert json.loads(dead["data"]) == BAD  # kept as it was sent, not as converted


def test_a_stream_entry_that_does_not_validate_is_dead_lettered_at_once(
    redis_client: redis.Redis,
) -> None:
    """Tests ``StreamMessage[Order]``: the bad entry is never retried, the next is an Order."""
    seen: list[Any] = []

    def bill(message: StreamMessage[Order]) -> None:
        seen.append(message.data)

    publish("typed.orders", BAD, type="order.created")
    publish("typed.orders", Order(id=2, total=9.5, customer="bob"), type="order.created")
    spec = StreamConsumerSpec(func=bill, stream="typed.orders", group="billing", name="bill")
    assert spec.payload is not None and spec.payload.type is Order
    assert run_burst(spec) == 0
    assert seen == [Order(id=2, total=9.5, customer="bob")]
    assert type(seen[0]) is Order
    dead = only_dead_letter(redis_client, "typed.orders")
    assert_validation_dead_letter(dead, "typed.orders", "$.total")
    assert dead["type"] == "order.created"
    assert redis_client.xpending("typed.orders", "billing")["pending"] == 0


def test_a_list_item_that_does_not_validate_is_dead_lettered_at_once(
    redis_client: redis.Redis,
) -> None:
    """Tests a list consumer: the bad item leaves the processing list, the next is an Order."""
    seen: list[Any] = []

    def run_job(message: StreamMessage[Order]) -> None:
        seen.append((message.data, message.delivery_count))

    push("typed.jobs", BAD)
    push("typed.jobs", Order(id=3, total=1.25, customer="cy"))
    spec = ListConsumerSpec(func=run_job, list="typed.jobs", name="run_job")
    assert run_burst(spec) == 0
    assert seen == [(Order(id=3, total=1.25, customer="cy"), 1)]
    assert_validation_dead_letter(
        only_dead_letter(redis_client, "typed.jobs"), "typed.jobs", "$.total"
    )
    assert redis_client.llen("typed.jobs") == 0
    assert not list(redis_client.scan_iter("typed.jobs:processing:*"))


def test_a_channel_message_that_does_not_validate_is_dead_lettered(
    redis_client: redis.Redis, serve: Callable[..., ConsumerRunner]
) -> None:
    """Tests an async channel consumer: the bad message goes to ``<channel>:dlq``, the next
    arrives as an Order (Pub/Sub has no retries; a refused payload is kept, not dropped)."""
    seen: list[Any] = []

    async def on_order(message: StreamMessage[Order]) -> None:
        seen.append(message.data)

    serve(ChannelConsumerSpec(func=on_order, pattern="typed.live", name="on_order"))
    assert broadcast("typed.live", BAD, type="order.created") == 1
    assert broadcast("typed.live", Order(id=4, total=2.0, customer="di")) == 1
    wait_for(lambda: seen, message="the good message")
    wait_for(lambda: redis_client.exists(dead_letters("typed.live")), message="the dead letter")
    assert seen == [Order(id=4, total=2.0, customer="di")]
    dead = only_dead_letter(redis_client, "typed.live")
    assert_validation_dead_letter(dead, "typed.live", "$.total")
    assert dead["original_id"] == ""


def test_a_typed_handler_s_dead_letters_keep_the_payload_as_it_was_sent(
    redis_client: redis.Redis,
) -> None:
    """Tests a typed stream and list handler raising ``Reject`` after conversion: the dead
    letter holds the sent JSON, a field the type does not know included, not the object."""
    sent = {"id": 5, "total": 3, "customer": "fay", "coupon": "SPRING"}

    def refuse(message: StreamMessage[Order]) -> None:
        assert message.data == Order(id=5, total=3.0, customer="fay")
        raise Reject("no coupons")

    publish("typed.refused", sent)
    push("typed.refused.jobs", sent)
    specs = [
        StreamConsumerSpec(func=refuse, stream="typed.refused", group="g", name="s"),
        ListConsumerSpec(func=refuse, list="typed.refused.jobs", name="l"),
    ]
    assert run_burst(*specs) == 0
    for name in ("typed.refused", "typed.refused.jobs"):
        dead = only_dead_letter(redis_client, name)
        assert json.loads(dead["data"]) == sent
        assert dead["error"] == "redis_broker.exceptions.Reject: no coupons"


def test_schema_on_the_decorator_types_an_async_handler_with_a_typed_dict(
    redis_client: redis.Redis,
) -> None:
    """Tests ``schema=OrderDict`` on a handler without annotation: a checked dict arrives."""
    seen: list[Any] = []

    async def bill(message: Any) -> None:
        seen.append(message.data)

    publish("typed.dicts", {"id": "seven", "total": 1.0})
    publish("typed.dicts", {"id": 7, "total": 1.0})
    spec = StreamConsumerSpec(
        func=bill, stream="typed.dicts", group="g", name="bill", schema=OrderDict
    )
    assert run_burst(spec) == 0
    assert seen == [{"id": 7, "total": 1.0}]
    dead = only_dead_letter(redis_client, "typed.dicts")
    assert dead["error"].startswith("validation: $.id: Expected `int`, got `str`"), dead["error"]


def test_a_pydantic_model_validates_and_arrives_as_an_instance(redis_client: redis.Redis) -> None:
    """Tests ``schema=`` with a pydantic model: pydantic's error names the field."""
    pydantic = pytest.importorskip("pydantic")

    class Invoice(pydantic.BaseModel):
        id: int
        total: float

    seen: list[Any] = []

    def run_job(message: StreamMessage[Any]) -> None:
        seen.append(message.data)

    push("typed.invoices", {"id": 1, "total": "not a number"})
    push("typed.invoices", Invoice(id=2, total=3.5))
    assert (
        run_burst(
            ListConsumerSpec(func=run_job, list="typed.invoices", name="run_job", schema=Invoice)
        )
        == 0
    )
    assert [type(value) for value in seen] == [Invoice]
    assert (seen[0].id, seen[0].total) == (2, 3.5)
    dead = only_dead_letter(redis_client, "typed.invoices")
    assert dead["error"].startswith("validation: $.total:"), dead["error"]
    assert dead["delivery_count"] == "1"


def test_handlers_without_a_declared_type_get_plain_json_data() -> None:
    """Tests no behaviour change: a bare ``StreamMessage`` or no annotation gets the dict."""
    seen: list[Any] = []

    def bare(message: StreamMessage) -> None:
        seen.append(("bare", message.data))

    def plain(message):
        seen.append(("plain", message.data))

    publish("typed.plain", BAD)
    specs = [
        StreamConsumerSpec(func=bare, stream="typed.plain", group="a", name="bare"),
        StreamConsumerSpec(func=plain, stream="typed.plain", group="b", name="plain"),
    ]
    assert [spec.payload for spec in specs] == [None, None]
    assert run_burst(*specs) == 0
    assert sorted(seen) == [("bare", BAD), ("plain", BAD)]


def test_a_request_whose_payload_does_not_validate_gets_a_remote_error(
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests request/reply: the caller learns why at once, instead of waiting for a timeout."""

    def quote(message: StreamMessage[Order]) -> float:
        return message.data.total * 2

    serve(StreamConsumerSpec(func=quote, stream="typed.quote", group="q", name="quote"))
    with pytest.raises(RemoteError) as caught:
        request("typed.quote", BAD, timeout=5)
    assert caught.value.type == "PayloadInvalid"
    assert caught.value.message.startswith("validation: $.total"), caught.value.message
    assert request("typed.quote", Order(id=1, total=2.5, customer="e"), timeout=5).data == 5.0


def test_an_unresolvable_message_annotation_is_an_error_at_decoration() -> None:
    """Tests ``StreamMessage["Missing"]``, as text and as a subscripted class: the handler
    means its payloads to be checked, so the decorator refuses what it cannot resolve."""
    registry = ConsumerRegistry()

    def handler(message: StreamMessage[Missing]) -> None:  # noqa: F821
        pass

    with pytest.raises(ConsumerDefinitionError, match="Missing"):
        registry.stream_consumer("typed.missing", group="g")(handler)

    def evaluated(message: Any) -> None:
        pass

    evaluated.__annotations__ = {"message": StreamMessage["Missing"]}
    with pytest.raises(ConsumerDefinitionError, match="Missing"):
        registry.list_consumer("typed.missing")(evaluated)
    with pytest.raises(ConsumerDefinitionError, match="cannot be checked"):
        registry.channel_consumer("typed.missing", schema="Missing")(evaluated)
