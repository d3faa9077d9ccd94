"""Declared publishers: they send what ``publish``/``broadcast``/``push``/``request``
send, fill their channel's ``{name}`` parts, and refuse bad declarations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import redis_broker
from redis_broker import NoResponders, StreamMessage, wire
from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.publishers import Publisher, PublisherRegistry, autodiscover, publisher
from redis_broker.requests import reset_inbox
from redis_broker.testing import wait_for
from tests.helpers import listen


@dataclass
class Shipment:
    """A typed payload, sent as its fields."""

    order_id: int
    carrier: str


@pytest.fixture
def fresh_inbox() -> Iterator[None]:
    """Give the test its own request inbox reader, stopped afterwards."""
    reset_inbox()
    yield
    reset_inbox()


def test_a_stream_publisher_appends_with_its_type(redis_client: redis.Redis) -> None:
    """Tests that ``publish()`` of a stream publisher appends the data with the declared
    type, and that a call's own type wins."""
    shipments = Publisher(address="shipments", schema=Shipment, type="shipment.sent")
    entry_id = shipments.publish(Shipment(order_id=7, carrier="post"))
    shipments.publish({"order_id": 8, "carrier": "van"}, type="shipment.late")
    (first_id, first), (_, second) = redis_client.xrange("shipments")
    assert first_id == entry_id
    assert wire.decode_entry(first).data == {"order_id": 7, "carrier": "post"}
    assert (first["type"], second["type"]) == ("shipment.sent", "shipment.late")


def test_a_channel_publisher_fills_its_name_parts(redis_client: redis.Redis) -> None:
    """Tests that a channel publisher broadcasts on its address with each ``{name}`` part
    filled from the call's keyword arguments, and returns the subscriber count."""
    notices = Publisher(address="notice.{team}.{user_id}", via="channel", type="notice")
    pubsub, next_message = listen(redis_client, "notice.ops.42")
    try:
        assert notices.publish({"text": "hi"}, team="ops", user_id=42) == 1
        message = json.loads(wait_for(next_message, message="the notice")["data"])
        assert (message["type"], message["data"]) == ("notice", {"text": "hi"})
    finally:
        pubsub.close()


def test_a_list_publisher_pushes_a_dataclass_as_its_fields(redis_client: redis.Redis) -> None:
    """Tests that a list publisher pushes one element and returns the list's length."""
    jobs = Publisher(address="jobs", via="list", schema=Shipment)
    assert jobs.publish(Shipment(order_id=1, carrier="bike")) == 1
    element = json.loads(redis_client.lindex("jobs", 0))
    assert element["data"] == {"order_id": 1, "carrier": "bike"}


async def test_the_async_twins_send_the_same(redis_client: redis.Redis) -> None:
    """Tests ``apublish`` on a stream and a list."""
    await Publisher(address="a.stream").apublish({"n": 1})
    await Publisher(address="a.list", via="list").apublish({"n": 2})
    assert wire.decode_entry(redis_client.xrange("a.stream")[0][1]).data == {"n": 1}
    assert json.loads(redis_client.lindex("a.list", 0))["data"] == {"n": 2}


def double(message: StreamMessage) -> int:
    """Answer a request with its payload's ``n`` doubled."""
    return int(message.data["n"]) * 2


@pytest.mark.usefixtures("fresh_inbox")
def test_a_publisher_makes_requests_over_its_via(
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests that ``request()`` goes to the publisher's stream and returns the reply, and
    that a list nobody consumes raises NoResponders at once."""
    serve(StreamConsumerSpec(func=double, name="double", stream="math", group="g"))
    asks = Publisher(address="math", schema=dict, reply=int)
    assert asks.request({"n": 21}, timeout=5).data == 42
    with pytest.raises(NoResponders):
        Publisher(address="nobody", via="list").request({"n": 1}, timeout=5)


def test_missing_unknown_or_bad_name_parts_are_refused() -> None:
    """Tests that a missing or unknown part is a TypeError and a value that makes no
    channel name a ValueError, before anything is sent."""
    notices = Publisher(address="notice.{user_id}", via="channel")
    with pytest.raises(TypeError, match="needs user_id"):
        notices.destination()
    with pytest.raises(TypeError, match="takes no room"):
        notices.destination(user_id=1, room="x")
    with pytest.raises(ValueError, match="not a channel name"):
        notices.destination(user_id="a b")
    with pytest.raises(TypeError, match="takes no user_id"):
        Publisher(address="{tag}orders").destination(user_id=1)  # a hash tag, no part
    assert notices.destination(user_id=5) == "notice.5"


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"address": "x", "via": "queue"}, "via must be one of"),
        ({"address": "chat.*", "via": "channel"}, "no wildcards"),
        ({"address": "a.{x}.{x}", "via": "channel"}, "repeats"),
        ({"address": "a.{type}", "via": "channel"}, "cannot be called type"),
        ({"address": "two words"}, "is not a stream name"),
        ({"address": "a{b}c{d}", "via": "list"}, "is not a list name"),
    ],
)
def test_bad_declarations_are_refused(options: dict[str, Any], why: str) -> None:
    """Tests that a publisher is validated when it is declared, with a message that says why."""
    with pytest.raises(ValueError, match=why):
        Publisher(**options)


def test_one_name_from_two_modules_is_refused_and_a_reimport_replaces() -> None:
    """Tests the registry: the same name from another module is an error naming both; from
    the same module (a re-imported module) it replaces the first."""
    registry = PublisherRegistry()
    registry.register(Publisher(address="a", name="out", module="app.one"))
    replacement = registry.register(Publisher(address="b", name="out", module="app.one"))
    assert registry.all() == [replacement]
    with pytest.raises(ValueError, match="declared in app.one already"):
        registry.register(Publisher(address="c", name="out", module="app.two"))


def test_publisher_registers_under_its_declaring_module() -> None:
    """Tests that ``redis_broker.publisher`` (exported at the root) records the module
    that called it, and that the name defaults to the address."""
    declared = redis_broker.publisher("test.declared", description="Declared by a test.")
    try:
        assert declared.module == __name__
        assert declared.name == "test.declared"
        assert declared in autodiscover()
    finally:
        from redis_broker.publishers import registry

        registry.unregister(declared.name)
    assert publisher is redis_broker.publisher


def test_autodiscover_finds_each_apps_publishers_module() -> None:
    """Tests that discovery imports ``<app>.publishers``: the demo's are found."""
    names = {p.name for p in autodiscover()}
    assert {"ticket_notifications", "email_jobs", "quote_requests"} <= names
