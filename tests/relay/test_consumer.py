"""The relay's frames, errors and authorization, over Channels' WebsocketCommunicator
against a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from redis_broker import abroadcast
from redis_broker.conf import get_config
from redis_broker.relay.hub import get_hub

from .helpers import receive, send, subscribe, subscribers

pytestmark = pytest.mark.django_db(transaction=True)


def websocket_settings(**values: Any) -> dict[str, Any]:
    """Return ``REDIS_BROKER`` with some ``WEBSOCKET`` keys replaced."""
    from django.conf import settings

    current = dict(settings.REDIS_BROKER)
    current["WEBSOCKET"] = {**current.get("WEBSOCKET", {}), **values}
    return current


async def test_subscribed_socket_receives_broadcast_message(connect, make_user) -> None:
    """Tests that a broadcast after ``subscribed`` reaches the socket as a message frame."""
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    assert await abroadcast("chat.lobby", {"text": "hi"}, type="chat.said") == 1
    frame = await receive(socket)
    assert frame["type"] == "message"
    assert frame["channel"] == "chat.lobby"
    assert frame["data"] == {"text": "hi"}
    assert frame["event_type"] == "chat.said"
    assert len(frame["event_id"]) == 36
    assert "id" not in frame


async def test_two_sockets_share_one_redis_subscription(connect, make_user, redis_client) -> None:
    """Tests that the hub subscribes a channel once however many local sockets want it."""
    alice, bob = await make_user("alice"), await make_user("bob")
    first, second = await connect(alice), await connect(bob)
    await subscribe(first, "chat.lobby")
    await subscribe(second, "chat.lobby")
    assert subscribers(redis_client, "chat.lobby") == 1
    await abroadcast("chat.lobby", {"n": 1})
    assert (await receive(first))["data"] == {"n": 1}
    assert (await receive(second))["data"] == {"n": 1}


async def test_hub_unsubscribes_after_last_local_socket_leaves(
    connect, make_user, redis_client
) -> None:
    """Tests that Redis is unsubscribed only when the channel's last socket unsubscribes."""
    first, second = await connect(await make_user("alice")), await connect(await make_user("bob"))
    await subscribe(first, "chat.lobby")
    await subscribe(second, "chat.lobby")
    await send(first, {"action": "unsubscribe", "channel": "chat.lobby"})
    assert await receive(first) == {"type": "unsubscribed", "channel": "chat.lobby"}
    assert subscribers(redis_client, "chat.lobby") == 1
    await send(second, {"action": "unsubscribe", "channel": "chat.lobby"})
    assert await receive(second) == {"type": "unsubscribed", "channel": "chat.lobby"}
    assert subscribers(redis_client, "chat.lobby") == 0
    assert "chat.lobby" not in get_hub().channels


async def test_unsubscribed_socket_gets_no_more_messages(connect, make_user) -> None:
    """Tests that an unsubscribe stops delivery to that socket only."""
    first, second = await connect(await make_user("alice")), await connect(await make_user("bob"))
    await subscribe(first, "chat.a")
    await subscribe(second, "chat.a")
    await send(first, {"action": "unsubscribe", "channel": "chat.a"})
    await receive(first)
    await abroadcast("chat.a", {"n": 1})
    assert (await receive(second))["data"] == {"n": 1}
    assert await first.receive_nothing(timeout=0.3)


async def test_browser_publish_reaches_other_subscribers(connect, make_user) -> None:
    """Tests that a publish frame reaches every subscriber, stamped with the sender's pk."""
    alice = await make_user("alice")
    sender, reader = await connect(alice), await connect(await make_user("bob"))
    await subscribe(sender, "chat.room1")
    await subscribe(reader, "chat.room1")
    await send(sender, {"action": "publish", "channel": "chat.room1", "data": {"text": "yo"}})
    frame = await receive(reader)
    assert frame["data"] == {"text": "yo"}
    assert frame["event_type"] == f"browser.user.{alice.pk}"
    assert (await receive(sender))["data"] == {"text": "yo"}


async def test_user_cannot_subscribe_to_another_users_channel(connect, make_user) -> None:
    """Tests that alice gets ``forbidden`` on bob's ``user.<pk>`` and her own works."""
    alice, bob = await make_user("alice"), await make_user("bob")
    socket = await connect(alice)
    await send(socket, {"action": "subscribe", "channel": f"user.{bob.pk}"})
    assert await receive(socket) == {
        "type": "error",
        "code": "forbidden",
        "channel": f"user.{bob.pk}",
        "detail": "you may not subscribe to this channel",
    }
    await subscribe(socket, f"user.{alice.pk}")


async def test_anonymous_user_cannot_subscribe_or_publish(connect) -> None:
    """Tests that the default policy gives anonymous sockets nothing, not even public channels."""
    socket = await connect()
    await send(socket, {"action": "subscribe", "channel": "chat.lobby"})
    assert (await receive(socket))["code"] == "forbidden"
    await send(socket, {"action": "publish", "channel": "chat.lobby", "data": 1})
    assert (await receive(socket))["code"] == "forbidden"


async def test_publish_outside_browser_publish_channels_is_forbidden(connect, make_user) -> None:
    """Tests that a logged-in user cannot publish to a channel not in BROWSER_PUBLISH_CHANNELS."""
    user = await make_user("alice")
    socket = await connect(user)
    await send(socket, {"action": "publish", "channel": f"user.{user.pk}", "data": "spoof"})
    assert await receive(socket) == {
        "type": "error",
        "code": "forbidden",
        "channel": f"user.{user.pk}",
        "detail": "you may not publish to this channel",
    }


async def test_subscribe_outside_public_channels_is_forbidden(connect, make_user) -> None:
    """Tests that a channel matching no pattern is refused to a logged-in user."""
    socket = await connect(await make_user("alice"))
    await send(socket, {"action": "subscribe", "channel": "admin.secrets"})
    assert (await receive(socket))["code"] == "forbidden"


@pytest.mark.parametrize(
    ("text", "channel"),
    [
        ("not json", None),
        ('["a list"]', None),
        ('{"action": "dance", "channel": "chat.lobby"}', "chat.lobby"),
        ('{"channel": "chat.lobby"}', "chat.lobby"),
        ('{"action": "subscribe", "channel": "chat.*"}', "chat.*"),
        ('{"action": "subscribe", "channel": "chat lobby"}', "chat lobby"),
        ('{"action": "subscribe"}', None),
        ('{"action": "subscribe", "channel": 42}', None),
        ('{"action": "subscribe", "channel": "chat.a", "since": "yesterday"}', "chat.a"),
    ],
)
async def test_malformed_frame_gets_bad_request_and_socket_stays_open(
    connect, make_user, text: str, channel: str | None
) -> None:
    """Tests that bad JSON, unknown actions and invalid or glob channel names get bad_request."""
    socket = await connect(await make_user("alice"))
    await socket.send_to(text_data=text)
    frame = await receive(socket)
    assert frame["type"] == "error"
    assert frame["code"] == "bad_request"
    assert frame["channel"] == channel
    await subscribe(socket, "chat.still-open")


async def test_binary_frame_gets_bad_request(connect, make_user) -> None:
    """Tests that a binary frame is refused with bad_request rather than closing the socket."""
    socket = await connect(await make_user("alice"))
    await socket.send_to(bytes_data=b"\x00\x01")
    assert (await receive(socket))["code"] == "bad_request"
    await subscribe(socket, "chat.lobby")


async def test_megabyte_frame_gets_too_large_and_socket_survives(connect, make_user) -> None:
    """Tests that a 1 MB frame is answered with too_large and the socket keeps working."""
    socket = await connect(await make_user("alice"))
    big = json.dumps({"action": "publish", "channel": "chat.lobby", "data": "x" * 1_000_000})
    await socket.send_to(text_data=big)
    frame = await receive(socket)
    assert frame["type"] == "error"
    assert frame["code"] == "too_large"
    await subscribe(socket, "chat.lobby")
    await send(socket, {"action": "publish", "channel": "chat.lobby", "data": "small"})
    assert (await receive(socket))["data"] == "small"


async def test_publishes_over_the_rate_limit_get_rate_limited(connect, make_user) -> None:
    """Tests that publishes beyond PUBLISH_RATE per second are refused with rate_limited."""
    with override_settings(REDIS_BROKER=websocket_settings(PUBLISH_RATE=3)):
        socket = await connect(await make_user("alice"))
        for n in range(5):
            await send(socket, {"action": "publish", "channel": "chat.fast", "data": n})
        frames = [await receive(socket) for _ in range(2)]
        assert [f["code"] for f in frames] == ["rate_limited", "rate_limited"]
        assert await socket.receive_nothing(timeout=0.2)


async def test_socket_that_falls_behind_is_closed_with_4008(connect, make_user) -> None:
    """Tests that a full send queue closes that socket with 4008 and counts the overflow."""
    with override_settings(REDIS_BROKER=websocket_settings(SEND_QUEUE_SIZE=4)):
        socket = await connect(await make_user("alice"))
        await subscribe(socket, "chat.flood")
        hub = get_hub()
        consumer_sub = next(iter(hub._channels["chat.flood"]))
        sink = consumer_sub.sink
        # Fill the queue faster than the sender can drain it: offers happen in one go.
        for n in range(10):
            sink.offer(json.dumps({"type": "message", "channel": "chat.flood", "data": n}))
        seen = []
        while True:
            output = await socket.receive_output(timeout=5)
            if output["type"] == "websocket.close":
                break
            seen.append(output)
        assert output["code"] == 4008
        assert len(seen) <= 4
        assert hub.stats.overflows == 1


async def test_subscribing_twice_is_idempotent(connect, make_user, redis_client) -> None:
    """Tests that a second subscribe is acknowledged and messages still arrive once."""
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    await subscribe(socket, "chat.lobby")
    await abroadcast("chat.lobby", "once")
    assert (await receive(socket))["data"] == "once"
    assert await socket.receive_nothing(timeout=0.2)


async def test_async_authorizer_is_awaited(connect, make_user) -> None:
    """Tests that an async AUTHORIZER decides: it allows ``open.*`` to everyone."""
    with override_settings(
        REDIS_BROKER=websocket_settings(AUTHORIZER="tests.relay.authorizers.async_open_only")
    ):
        socket = await connect()
        await subscribe(socket, "open.news")
        await send(socket, {"action": "subscribe", "channel": "chat.lobby"})
        assert (await receive(socket))["code"] == "forbidden"


async def test_sync_authorizer_may_use_the_orm(connect, make_user) -> None:
    """Tests that a sync AUTHORIZER runs in a thread, so it can query the database."""
    with override_settings(
        REDIS_BROKER=websocket_settings(AUTHORIZER="tests.relay.authorizers.staff_only_orm")
    ):
        await make_user("alice")
        socket = await connect(await make_user("bob"))
        await send(socket, {"action": "subscribe", "channel": "chat.lobby"})
        assert (await receive(socket))["code"] == "forbidden"


async def test_foreign_origin_is_refused_at_handshake(relay_cleanup) -> None:
    """Tests that the demo's asgi application refuses a socket from another site's page."""
    from demo_site.asgi import application

    socket = WebsocketCommunicator(
        application, "/ws/broker/", headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await socket.connect(timeout=5)
    assert not connected
    allowed = WebsocketCommunicator(
        application, "/ws/broker/", headers=[(b"origin", b"http://127.0.0.1:8000")]
    )
    connected, _ = await allowed.connect(timeout=5)
    assert connected
    await allowed.disconnect()


async def test_key_prefix_is_applied_to_redis_channels(connect, make_user, redis_client) -> None:
    """Tests that the hub subscribes the prefixed Redis channel and frames show the bare name."""
    from django.conf import settings

    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "KEY_PREFIX": "site1:"}):
        assert get_config().key_prefix == "site1:"
        socket = await connect(await make_user("alice"))
        await subscribe(socket, "chat.lobby")
        assert subscribers(redis_client, "site1:chat.lobby") == 1
        await abroadcast("chat.lobby", 1)
        assert (await receive(socket))["channel"] == "chat.lobby"
