"""Publishing: entries read back with plain redis-py, prefixes, trimming, round trips."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from redis_broker import (
    abroadcast,
    apublish,
    apublish_many,
    broadcast,
    publish,
    publish_many,
    publishing,
    wire,
)
from redis_broker.exceptions import BrokerUnavailable, WriteRefused
from redis_broker.testing import RedisServer, wait_for
from tests.helpers import broker_url, listen


def test_published_entry_is_readable_with_plain_redis_py(redis_client: redis.Redis) -> None:
    """Tests that another service reading the stream with redis-py sees the contract's fields."""
    entry_id = publish("orders", {"id": 1}, type="order.created", headers={"trace": "x"})
    [(read_id, fields)] = redis_client.xrange("orders")
    assert read_id == entry_id
    assert fields["type"] == "order.created"
    assert json.loads(fields["data"]) == {"id": 1}
    assert json.loads(fields["headers"]) == {"trace": "x"}
    assert len(fields["event_id"]) == 36
    assert fields["published_at"].endswith("Z")


def test_publish_many_keeps_order_and_uses_one_round_trip(
    redis_client: redis.Redis, sends: list[int]
) -> None:
    """Tests that publish_many appends in order with a single write to the socket."""
    publish("warmup", 0)  # opens the pooled connection first
    sends.clear()
    ids = publish_many("orders", [{"n": n} for n in range(50)], type="order.created")
    assert len(sends) == 1
    entries = redis_client.xrange("orders")
    assert [e[0] for e in entries] == ids
    assert [json.loads(f["data"])["n"] for _, f in entries] == list(range(50))
    assert len({f["event_id"] for _, f in entries}) == 50


def test_publish_many_of_nothing_sends_nothing(sends: list[int]) -> None:
    """Tests that an empty batch returns no ids without talking to Redis."""
    assert publish_many("orders", []) == []
    assert sends == []


def test_unencodable_payload_sends_nothing(redis_client: redis.Redis) -> None:
    """Tests that a TypeError is raised before anything reaches the stream."""
    with pytest.raises(TypeError, match="cannot be encoded"):
        publish("orders", {"when": object()})
    with pytest.raises(TypeError):
        publish_many("orders", [{"ok": 1}, {"bad": {1, 2}}])
    assert redis_client.exists("orders") == 0


def test_key_prefix_applies_to_streams_and_channels(
    redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that KEY_PREFIX is prepended to stream keys and Pub/Sub channels."""
    pubsub, next_message = listen(redis_client, "svc-a:chat.lobby")
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "KEY_PREFIX": "svc-a:"}):
        publish("orders", 1)
        assert broadcast("chat.lobby", {"text": "hi"}) == 1
    assert redis_client.xlen("svc-a:orders") == 1
    assert redis_client.exists("orders") == 0
    message = wait_for(next_message, message="broadcast")
    assert json.loads(message["data"])["data"] == {"text": "hi"}
    pubsub.close()


@pytest.fixture
def stream_node_size(redis_client: redis.Redis) -> Iterator[Callable[[int], None]]:
    """Let a test set ``stream-node-max-entries`` (approximate trimming drops whole nodes,
    so small nodes make the bounds tight); the server's value is restored afterwards."""
    every: dict[str, object] = (
        {"target_nodes": "all"} if hasattr(redis_client, "get_primaries") else {}
    )  # a cluster client sets it on every node
    name = "stream-node-max-entries"
    original = redis_client.config_get(name)[name]
    yield lambda size: redis_client.config_set(name, size, **every)  # type: ignore[arg-type]
    redis_client.config_set(name, original, **every)  # type: ignore[arg-type]


def test_streams_are_trimmed_approximately_to_maxlen(
    redis_client: redis.Redis, redis_broker_url: str, stream_node_size: Callable[[int], None]
) -> None:
    """Tests that STREAM_MAXLEN caps the stream (XADD MAXLEN ~) while publishing."""
    stream_node_size(10)
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "STREAM_MAXLEN": 20}):
        for chunk in range(20):
            publish_many("events", [{"n": n} for n in range(chunk * 10, chunk * 10 + 10)])
    length = redis_client.xlen("events")
    assert 20 <= length <= 30
    last = redis_client.xrevrange("events", count=1)[0][1]
    assert json.loads(last["data"]) == {"n": 199}


def test_a_batch_over_several_streams_trims_each_of_them(
    redis_client: redis.Redis, redis_broker_url: str, stream_node_size: Callable[[int], None]
) -> None:
    """Tests that one batch (as a commit's model events are sent) leaves every stream it
    wrote near STREAM_MAXLEN, ending with its last entry, though only one XADD per stream
    carries the trim."""
    stream_node_size(10)
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "STREAM_MAXLEN": 20}):
        entries = [
            (stream, wire.encode_entry({"n": n}))
            for n in range(200)
            for stream in ("left", "right")
        ]
        publishing.publish_encoded(entries)
    for stream in ("left", "right"):
        assert 20 <= redis_client.xlen(stream) <= 30
        last = redis_client.xrevrange(stream, count=1)[0][1]
        assert json.loads(last["data"]) == {"n": 199}


def test_no_maxlen_keeps_every_entry(
    redis_client: redis.Redis, redis_broker_url: str, stream_node_size: Callable[[int], None]
) -> None:
    """Tests that STREAM_MAXLEN None disables trimming."""
    stream_node_size(10)
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "STREAM_MAXLEN": None}):
        publish_many("events", list(range(300)))
    assert redis_client.xlen("events") == 300


def test_broadcast_is_not_stored_and_counts_receivers(redis_client: redis.Redis) -> None:
    """Tests that a plain channel message reaches subscribers and leaves no key behind."""
    assert broadcast("chat.lobby", {"text": "nobody"}) == 0
    pubsub, next_message = listen(redis_client, "chat.lobby")
    assert broadcast("chat.lobby", {"text": "hi"}, type="chat.message") == 1
    message = wait_for(next_message, message="broadcast")
    body = json.loads(message["data"])
    assert body["type"] == "chat.message"
    assert body["data"] == {"text": "hi"}
    assert "id" not in body
    assert list(redis_client.scan_iter("*")) == []
    pubsub.close()


def test_durable_broadcast_is_stored_and_carries_its_entry_id(redis_client: redis.Redis) -> None:
    """Tests that user.* messages are kept in a capped stream and the message names the entry."""
    pubsub, next_message = listen(redis_client, "user.42")
    assert broadcast("user.42", {"note": "paid"}, type="notice") == 1
    message = wait_for(next_message, message="broadcast")
    body = json.loads(message["data"])
    [(entry_id, fields)] = redis_client.xrange("user.42")
    assert body["id"] == entry_id
    assert body["event_id"] == fields["event_id"]
    assert json.loads(fields["data"]) == body["data"] == {"note": "paid"}
    pubsub.close()


def test_durable_channel_stream_is_capped(
    redis_client: redis.Redis, redis_broker_url: str, stream_node_size: Callable[[int], None]
) -> None:
    """Tests that DURABLE_MAXLEN bounds the replay stream of a durable channel."""
    stream_node_size(5)
    settings = {**broker_url(redis_broker_url), "WEBSOCKET": {"DURABLE_MAXLEN": 10}}
    with override_settings(REDIS_BROKER=settings):
        for n in range(60):
            broadcast("user.7", n)
    assert 10 <= redis_client.xlen("user.7") <= 15


async def test_async_twins_write_the_same_format(redis_client: redis.Redis) -> None:
    """Tests that apublish, apublish_many and abroadcast behave like their sync twins."""
    entry_id = await apublish("orders", {"id": 1}, type="order.created")
    ids = await apublish_many("orders", [{"id": 2}, {"id": 3}])
    assert await abroadcast("user.5", {"x": 1}) == 0
    assert await abroadcast("chat.x", {"x": 1}) == 0
    entries = redis_client.xrange("orders")
    assert [e[0] for e in entries] == [entry_id, *ids]
    assert entries[0][1]["type"] == "order.created"
    assert [json.loads(f["data"])["id"] for _, f in entries] == [1, 2, 3]
    assert redis_client.xlen("user.5") == 1


async def test_apublish_many_trims_the_stream_once_per_batch(
    redis_client: redis.Redis, redis_broker_url: str, stream_node_size: Callable[[int], None]
) -> None:
    """Tests that a large async batch leaves the stream near STREAM_MAXLEN, ending with
    its last entry, though only its last XADD carries the trim."""
    stream_node_size(10)
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "STREAM_MAXLEN": 20}):
        await apublish_many("events", [{"n": n} for n in range(200)])
    assert 20 <= redis_client.xlen("events") <= 30
    last = redis_client.xrevrange("events", count=1)[0][1]
    assert json.loads(last["data"]) == {"n": 199}


# --- Refusals: a payload consumers could not decode, a Redis that takes no writes ---------


def deeper_than_consumers_read() -> object:
    """Return a payload one level deeper than wire.MAX_DEPTH."""
    value: object = 1
    for _ in range(wire.MAX_DEPTH + 1):
        value = [value]
    return value


def test_too_deep_payload_is_refused_before_anything_is_sent(
    redis_client: redis.Redis, sends: list[int]
) -> None:
    """Tests that publish, publish_many and broadcast (durable or not) refuse a payload
    nested deeper than consumers decode, with a TypeError and no write to Redis."""
    deep = deeper_than_consumers_read()
    message = "nested deeper than 100 levels; consumers could not decode it"
    with pytest.raises(TypeError, match=message):
        publish("orders", deep)
    with pytest.raises(TypeError, match=message):
        publish_many("orders", [{"ok": 1}, deep])
    with pytest.raises(TypeError, match=message):
        broadcast("chat.lobby", deep)
    with pytest.raises(TypeError, match=message):
        broadcast("user.1", deep)
    assert sends == []
    assert redis_client.exists("orders", "user.1") == 0


async def test_async_twins_refuse_a_too_deep_payload(redis_client: redis.Redis) -> None:
    """Tests that apublish, apublish_many and abroadcast refuse it the same way."""
    deep = deeper_than_consumers_read()
    for call in (
        apublish("orders", deep),
        apublish_many("orders", [deep]),
        abroadcast("user.1", deep),
        abroadcast("chat.lobby", deep),
    ):
        with pytest.raises(TypeError, match="nested deeper than 100 levels"):
            await call
    assert redis_client.exists("orders", "user.1") == 0


@pytest.fixture
def full_redis(redis_server_factory: Callable[[], RedisServer]) -> dict[str, str]:
    """Return ``REDIS_BROKER`` for a private Redis whose memory is full under noeviction."""
    server = redis_server_factory()
    client = redis.Redis(port=server.port)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    client.close()
    return {"URL": server.url}


def test_out_of_memory_redis_raises_write_refused_naming_the_stream(
    full_redis: dict[str, str], settings: Any
) -> None:
    """Tests that OOM replies become WriteRefused, a BrokerUnavailable that names the stream
    or channel, quotes Redis and points at maxmemory and maxmemory-policy."""
    settings.REDIS_BROKER = full_redis
    for call, target in [
        (lambda: publish("orders", 1), "stream 'orders'"),
        (lambda: publish_many("orders", [1, 2]), "stream 'orders'"),
        (lambda: broadcast("user.1", 1), "durable channel 'user.1'"),
    ]:
        with pytest.raises(WriteRefused) as info:
            call()
        assert isinstance(info.value, BrokerUnavailable)
        said = str(info.value)
        assert f"refused the write to {target}" in said, said
        assert "maxmemory-policy" in said
        assert "command not allowed when used memory > 'maxmemory'" in said
    assert broadcast("chat.lobby", 1) == 0  # PUBLISH stores nothing: Redis still takes it


async def test_async_publish_on_out_of_memory_redis_raises_write_refused(
    full_redis: dict[str, str],
) -> None:
    """Tests that apublish, apublish_many and a durable abroadcast raise WriteRefused too."""
    with override_settings(REDIS_BROKER=full_redis):
        for call in (apublish("orders", 1), apublish_many("orders", [1]), abroadcast("user.1", 1)):
            with pytest.raises(WriteRefused, match="maxmemory"):
                await call


def test_read_only_replica_raises_write_refused(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """Tests that publishing to a replica raises WriteRefused saying to use the primary."""
    primary, replica = redis_server_factory(), redis_server_factory()
    client = redis.Redis(port=replica.port)
    client.replicaof("127.0.0.1", primary.port)
    client.close()
    with (
        override_settings(REDIS_BROKER={"URL": replica.url}),
        pytest.raises(WriteRefused, match=r"read-only replica; point .* at the primary"),
    ):
        publish("orders", 1)


def test_push_appends_one_json_element_in_the_documented_format(redis_client: redis.Redis) -> None:
    """Tests ``push()``: RPUSH of the Pub/Sub object plus headers; returns the length."""
    from redis_broker import push

    assert push("jobs", {"n": 1}, type="job.run", headers={"trace": "t"}) == 1
    assert push("jobs", [2]) == 2
    first, second = (json.loads(item) for item in redis_client.lrange("jobs", 0, -1))
    assert set(first) == {"type", "data", "event_id", "published_at", "headers"}
    assert (first["type"], first["data"], first["headers"]) == ("job.run", {"n": 1}, {"trace": "t"})
    assert (second["data"], "headers" in second) == ([2], False)


async def test_apush_is_the_async_twin_of_push(redis_client: redis.Redis) -> None:
    """Tests ``apush()`` against the same list format."""
    from redis_broker import apush

    assert await apush("jobs", "text", type="t") == 1
    element = json.loads(redis_client.lindex("jobs", 0) or "{}")
    assert (element["data"], element["type"]) == ("text", "t")
