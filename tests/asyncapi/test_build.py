"""The document built from given consumers, publishers and model events: channels,
operations, replies, parameters and payload types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

import pydantic

from redis_broker import Reply, StreamMessage
from redis_broker.asyncapi import dumps
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.model_events import event_schemas
from redis_broker.publishers import Publisher

from .helpers import asyncapi_errors, build


@dataclass
class OrderPlaced:
    """An order, as its stream carries it."""

    order_id: int
    total: str


@dataclass
class Invoice:
    """What billing makes of an order."""

    number: str


class Price(TypedDict):
    """A price quote."""

    amount: int


class Customer(pydantic.BaseModel):
    """A customer, described by pydantic."""

    name: str
    vip: bool = False


def bill(message: StreamMessage) -> Invoice | None:
    """Bill an order."""
    return None


def quote(message: StreamMessage) -> Reply:
    """Answer with a Reply, whose data is any JSON."""
    return Reply({"amount": 1})


def ticker(message: StreamMessage, symbol: str, venue: str) -> None:
    """Follow prices."""


def audit(message: StreamMessage) -> None:
    """Write an audit line; answers requests with null."""


def untyped(message):  # type: ignore[no-untyped-def]
    """No annotations at all."""


def every_kind() -> list[Any]:
    """Return one consumer of each kind, typed and untyped, with and without replies."""
    return [
        StreamConsumerSpec(
            func=bill,
            name="bill",
            stream="orders",
            group="billing",
            schema=OrderPlaced,
            output="invoices",
        ),
        StreamConsumerSpec(func=quote, name="quote", stream="pricing", group="pricing"),
        ChannelConsumerSpec(func=ticker, name="ticker", pattern="prices.{venue}.{symbol}"),
        ChannelConsumerSpec(func=audit, name="audit", pattern="audit.*", no_reply=True),
        ChannelConsumerSpec(func=untyped, name="plain", pattern="news"),
        ListConsumerSpec(func=untyped, name="jobs", list="jobs", schema=Customer),
    ]


def publishers() -> list[Publisher]:
    """Return a publisher of each kind, one of them making typed requests."""
    return [
        Publisher(address="orders", schema=OrderPlaced, type="order.placed", name="orders"),
        Publisher(address="pricing", schema=Price, reply=Price, name="ask_price"),
        Publisher(address="user.{user_id}", via="channel", name="notices"),
        Publisher(address="jobs", via="list", schema=Customer, name="jobs_out"),
    ]


def test_every_kind_of_channel_and_operation_makes_a_valid_document(db: Any) -> None:
    """Tests that streams, outputs, channels, patterns, lists, publishers (one making
    requests), model events and a pydantic model give a valid AsyncAPI 3.0.0 document."""
    document = build(every_kind(), publishers(), event_schemas(), KEY_PREFIX="shop:")
    assert asyncapi_errors(document) == []
    assert set(document["operations"]) >= {
        "consume.bill",
        "consume.quote",
        "consume.ticker",
        "consume.audit",
        "consume.plain",
        "consume.jobs",
        "output.bill",
        "publish.orders",
        "publish.ask_price",
        "publish.notices",
        "publish.jobs_out",
        "model.testapp.order",
        "model.demo.ticket",
    }
    actions = {oid: op["action"] for oid, op in document["operations"].items()}
    assert actions["consume.bill"] == "receive"
    assert actions["output.bill"] == actions["publish.orders"] == "send"
    assert actions["model.testapp.order"] == "send"
    assert document["channels"]["stream.orders"]["address"] == "shop:orders"
    assert document["channels"]["list.jobs"]["x-redis-kind"] == "list"
    assert "Customer" in document["components"]["schemas"]


def test_a_consumer_and_a_publisher_of_one_stream_share_its_channel() -> None:
    """Tests that the stream a consumer reads and a publisher sends to is one channel
    holding both operations' messages, each typed by its declared type."""
    document = build(every_kind(), publishers())
    channel = document["channels"]["stream.orders"]
    assert set(channel["messages"]) == {"consume.bill", "publish.orders"}
    for mid in channel["messages"]:
        data = channel["messages"][mid]["payload"]["properties"]["data"]
        assert data == {"$ref": "#/components/schemas/OrderPlaced"}
    published = channel["messages"]["publish.orders"]["payload"]["properties"]["type"]
    assert published == {"type": "string", "const": "order.placed"}


def test_the_envelope_lists_the_wire_fields() -> None:
    """Tests that each message's payload is the wire envelope: type, data, event_id and
    published_at required, headers by the package's headers schema."""
    document = build(every_kind())
    payload = document["channels"]["stream.orders"]["messages"]["consume.bill"]["payload"]
    assert payload["required"] == ["type", "data", "event_id", "published_at"]
    assert set(payload["properties"]) == {"type", "data", "event_id", "published_at", "headers"}
    assert payload["properties"]["headers"] == {"$ref": "#/components/schemas/redis_broker.Headers"}
    headers = document["components"]["schemas"]["redis_broker.Headers"]["properties"]
    assert {"reply_to", "correlation_id", "deadline", "status"} <= set(headers)


def test_an_untyped_consumer_receives_any_json() -> None:
    """Tests that a consumer that declares no payload type gets ``data`` of any JSON."""
    document = build(every_kind())
    payload = document["channels"]["channel.news"]["messages"]["consume.plain"]["payload"]
    assert payload["properties"]["data"] == {"description": "Any JSON: no type is declared."}


def test_pattern_parts_become_channel_parameters() -> None:
    """Tests that a pattern's ``{name}`` parts are the channel's parameters, in its
    address as written, and that the PSUBSCRIBE glob is named on the operation."""
    document = build(every_kind())
    channel = document["channels"]["channel.prices.venue.symbol"]
    assert channel["address"] == "prices.{venue}.{symbol}"
    assert set(channel["parameters"]) == {"venue", "symbol"}
    assert "keyword argument `symbol`" in channel["parameters"]["symbol"]["description"]
    assert document["operations"]["consume.ticker"]["x-redis-pattern"] == "prices.*.*"
    assert "PSUBSCRIBE" in channel["description"]


def test_a_glob_pattern_is_documented_as_such() -> None:
    """Tests that a ``*`` pattern keeps its glob address, without parameters, and says
    what the wildcards match."""
    channel = build(every_kind())["channels"]["channel.audit._"]
    assert channel["address"] == "audit.*"
    assert "parameters" not in channel
    assert "`*` stands for any run of characters" in channel["description"]


def test_a_publishers_name_parts_are_parameters_too() -> None:
    """Tests that ``publisher("user.{user_id}", via="channel")`` gives a channel whose
    parameter is ``user_id``."""
    channel = build(publishers=publishers())["channels"]["channel.user.user_id"]
    assert channel["parameters"].keys() == {"user_id"}
    assert channel["x-redis-durable"] is True  # user.* is durable in the test settings


def test_a_hash_tag_is_a_parameter_whose_only_value_is_itself() -> None:
    """Tests that a stream name with a hash tag keeps it in its address, described as a
    parameter that can only be the tag itself (braces included)."""
    spec = StreamConsumerSpec(func=untyped, name="tagged", stream="{shop}orders", group="g")
    channel = build([spec])["channels"]["stream.shoporders"]
    assert channel["address"] == "{shop}orders"
    assert channel["parameters"] == {
        "shop": {
            "description": channel["parameters"]["shop"]["description"],
            "enum": ["{shop}"],
            "default": "{shop}",
        }
    }


def test_responders_have_a_reply_and_no_reply_consumers_have_none() -> None:
    """Tests that every consumer that answers requests has a reply object addressed by the
    request's reply_to header, and that ``no_reply=True`` leaves it out."""
    document = build(every_kind(), publishers())
    operations = document["operations"]
    assert "reply" not in operations["consume.audit"]
    for oid in ("consume.bill", "consume.quote", "consume.ticker", "consume.plain", "consume.jobs"):
        reply = operations[oid]["reply"]
        assert reply["address"]["location"] == "$message.payload#/headers/reply_to"
        assert reply["channel"] == {"$ref": "#/channels/replies"}
        assert reply["messages"] == [
            {"$ref": f"#/channels/replies/messages/{oid}.reply"},
            {"$ref": "#/channels/replies/messages/error"},
        ]
    assert document["channels"]["replies"]["address"] is None
    assert "reply" in operations["publish.ask_price"]
    assert "reply" not in operations["publish.orders"]


def test_replies_and_outputs_are_typed_by_the_return_annotation() -> None:
    """Tests that the return annotation types the reply (``T | None`` as it is), the
    output (without None, which appends nothing), a Reply as any JSON and ``-> None``
    as null; a publisher's ``reply=`` types what its requests get back."""
    document = build(every_kind(), publishers())
    replies = document["channels"]["replies"]["messages"]

    def data(mid: str) -> Any:
        return replies[mid]["payload"]["properties"]["data"]

    assert data("consume.bill.reply") == {
        "anyOf": [{"$ref": "#/components/schemas/Invoice"}, {"type": "null"}]
    }
    assert data("consume.quote.reply") == {"description": "Any JSON: no type is declared."}
    assert data("consume.ticker.reply") == {"type": "null"}
    assert data("publish.ask_price.reply") == {"$ref": "#/components/schemas/Price"}
    output = document["channels"]["stream.invoices"]["messages"]["output.bill"]
    assert output["payload"]["properties"]["data"] == {"$ref": "#/components/schemas/Invoice"}
    error = replies["error"]["payload"]["properties"]["data"]
    assert error == {"$ref": "#/components/schemas/redis_broker.RemoteError"}


def test_the_group_is_named_on_a_stream_consumers_operation() -> None:
    """Tests that a stream consumer's operation names its consumer group and handler."""
    operation = build(every_kind())["operations"]["consume.bill"]
    assert operation["x-redis-group"] == "billing"
    assert "consumer group `billing`" in operation["description"]
    assert operation["x-redis-handler"] == f"{__name__}.bill"
    assert operation["summary"] == "Bill an order."


def test_model_events_have_a_send_operation_with_their_types(db: Any) -> None:
    """Tests that each configured model's events are a send operation on its stream whose
    message names the configured actions and refers to the model's schema."""
    document = build(model_events=event_schemas())
    message = document["channels"]["stream.testapp.note"]["messages"]["model.testapp.note"]
    assert message["payload"]["properties"]["type"]["enum"] == [
        "testapp.note.created",
        "testapp.note.deleted",
    ]
    assert message["payload"]["properties"]["data"] == {"$ref": "#/components/schemas/testapp.Note"}
    assert document["operations"]["model.testapp.invoice"]["x-redis-delivery"] == "outbox"


def test_the_document_does_not_depend_on_declaration_order(db: Any) -> None:
    """Tests that building from the same parts in reverse order writes the same text."""
    forward = dumps(build(every_kind(), publishers(), event_schemas()))
    backward = dumps(build(every_kind()[::-1], publishers()[::-1], event_schemas()))
    assert forward == backward
    assert json.loads(forward)["asyncapi"] == "3.0.0"


def test_names_that_make_the_same_id_get_distinct_ids() -> None:
    """Tests that two streams whose names differ only in characters ids avoid
    (``a:b``, ``a_b``) become two channels with distinct ids."""
    specs = [
        StreamConsumerSpec(func=untyped, name="one", stream="a:b", group="g"),
        StreamConsumerSpec(func=untyped, name="two", stream="a_b", group="g"),
    ]
    document = build(specs)
    addresses = sorted(
        c["address"] for c in document["channels"].values() if c["address"] is not None
    )
    assert addresses == ["a:b", "a_b"]
    assert asyncapi_errors(document) == []
