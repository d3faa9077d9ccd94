"""What message and error frames tell the page: who sent a message, when, and what went
wrong, over Channels' WebsocketCommunicator against a real Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import override_settings

from redis_broker import abroadcast, wire

from .helpers import receive, send, subscribe
from .test_consumer import websocket_settings

pytestmark = pytest.mark.django_db(transaction=True)


def published_recently(frame: dict[str, Any]) -> bool:
    """Return True when the frame's ``published_at`` is an ISO 8601 UTC time of the last minute."""
    when = datetime.fromisoformat(frame["published_at"])
    return when.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - when) < timedelta(minutes=1)


async def test_browser_publish_is_stamped_with_the_senders_id_and_name(connect, make_user) -> None:
    """Tests that a logged-in browser's publish reaches others with ``sender`` set by the server."""
    alice, bob = await make_user("alice"), await make_user("bob")
    sender, reader = await connect(alice), await connect(bob)
    await subscribe(sender, "chat.room1")
    await subscribe(reader, "chat.room1")
    await send(sender, {"action": "publish", "channel": "chat.room1", "data": {"text": "hi"}})
    frame = await receive(reader)
    assert frame["sender"] == {"id": str(alice.pk), "name": "alice"}
    assert frame["event_type"] == f"browser.user.{alice.pk}"
    assert frame["data"] == {"text": "hi"}


async def test_page_data_cannot_forge_the_sender(connect, make_user) -> None:
    """Tests that a page claiming another sender, in its data or beside it, changes nothing."""
    alice, bob = await make_user("alice"), await make_user("bob")
    sender, reader = await connect(alice), await connect(bob)
    await subscribe(sender, "chat.room1")
    await subscribe(reader, "chat.room1")
    forged = {
        "text": "I am bob",
        "sender": {"id": str(bob.pk), "name": "bob"},
        "headers": {wire.SENDER_ID: str(bob.pk), wire.SENDER_NAME: "bob"},
    }
    await send(
        sender,
        {
            "action": "publish",
            "channel": "chat.room1",
            "data": forged,
            "sender": {"id": str(bob.pk), "name": "bob"},
            "headers": {wire.SENDER_ID: str(bob.pk), wire.SENDER_NAME: "bob"},
            "type": f"browser.user.{bob.pk}",
        },
    )
    frame = await receive(reader)
    assert frame["sender"] == {"id": str(alice.pk), "name": "alice"}
    assert frame["event_type"] == f"browser.user.{alice.pk}"
    assert frame["data"] == forged  # delivered as the page's data, nothing more


async def test_server_broadcast_has_a_sender_only_when_it_names_one(connect, make_user) -> None:
    """Tests that server code may set the sender headers, and that without them no
    ``sender`` appears."""
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    await abroadcast("chat.lobby", "plain")
    assert "sender" not in await receive(socket)
    headers = {wire.SENDER_ID: "0", wire.SENDER_NAME: "support-bot"}
    await abroadcast("chat.lobby", "from the bot", headers=headers)
    frame = await receive(socket)
    assert frame["sender"] == {"id": "0", "name": "support-bot"}
    assert frame["data"] == "from the bot"


async def test_durable_message_keeps_its_sender_live_and_in_a_replay(
    connect, make_user, redis_client
) -> None:
    """Tests that on a durable channel the sender reaches the live frame, the stream entry's
    headers, and the frame replayed with ``since``."""
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    socket = await connect(user)
    await subscribe(socket, channel)
    headers = {wire.SENDER_ID: "7", wire.SENDER_NAME: "helpdesk"}
    await abroadcast(channel, {"n": 1}, type="note", headers=headers)
    live = await receive(socket)
    assert live["sender"] == {"id": "7", "name": "helpdesk"}
    assert live["id"] and live["event_type"] == "note" and live["data"] == {"n": 1}
    [(_, fields)] = redis_client.xrange(channel)
    assert json.loads(fields[wire.HEADERS]) == headers
    replaying = await connect(user)
    await subscribe(replaying, channel, since="0")
    replayed = await receive(replaying)
    assert replayed == live


async def test_message_frames_carry_published_at(connect, make_user) -> None:
    """Tests that live and replayed message frames carry the envelope's ISO 8601 UTC time."""
    user = await make_user("alice")
    socket = await connect(user)
    await subscribe(socket, "chat.lobby")
    await subscribe(socket, f"user.{user.pk}")
    await abroadcast("chat.lobby", 1)
    await abroadcast(f"user.{user.pk}", 2)
    live = [await receive(socket), await receive(socket)]
    assert all(published_recently(frame) for frame in live)
    replaying = await connect(user)
    await subscribe(replaying, f"user.{user.pk}", since="0")
    replayed = await receive(replaying)
    assert replayed["published_at"] == live[1]["published_at"]


async def test_anonymous_publish_has_no_sender(connect) -> None:
    """Tests that an anonymous socket's publish (allowed by an AUTHORIZER) carries no
    ``sender``, and its event type says it was anonymous."""
    with override_settings(
        REDIS_BROKER=websocket_settings(AUTHORIZER="tests.relay.authorizers.async_open_only")
    ):
        socket = await connect()
        await subscribe(socket, "open.news")
        await send(socket, {"action": "publish", "channel": "open.news", "data": "hello"})
        frame = await receive(socket)
        assert frame["data"] == "hello"
        assert frame["event_type"] == "browser.anonymous"
        assert "sender" not in frame


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ('{"action": "dance", "channel": "chat.lobby"}', "bad_request"),
        ('{"action": "subscribe", "channel": "chat.*"}', "bad_request"),
        ('{"action": "subscribe", "channel": "chat.a", "since": "yesterday"}', "bad_request"),
        ('{"action": "subscribe", "channel": "admin.secrets"}', "forbidden"),
        ('{"action": "publish", "channel": "admin.secrets", "data": 1}', "forbidden"),
        (json.dumps({"action": "publish", "channel": "chat.a", "data": "x" * 70_000}), "too_large"),
    ],
)
async def test_every_error_frame_says_what_went_wrong(
    connect, make_user, frame: str, code: str
) -> None:
    """Tests that each kind of error frame carries a human ``detail``, forbidden included."""
    socket = await connect(await make_user("alice"))
    await socket.send_to(text_data=frame)
    error = await receive(socket)
    assert error["type"] == "error"
    assert error["code"] == code
    assert isinstance(error["detail"], str) and len(error["detail"]) > 10


async def test_rate_limited_error_says_the_limit(connect, make_user) -> None:
    """Tests that a rate-limited publish is told the allowed rate in its detail."""
    with override_settings(REDIS_BROKER=websocket_settings(PUBLISH_RATE=2)):
        socket = await connect(await make_user("alice"))
        for n in range(3):
            await send(socket, {"action": "publish", "channel": "chat.fast", "data": n})
        error = await receive(socket)
        assert error["code"] == "rate_limited"
        assert error["detail"] == "at most 2 publishes per second; this one was dropped"


async def test_frame_one_byte_over_max_message_bytes_gets_too_large(connect, make_user) -> None:
    """Tests that MAX_MESSAGE_BYTES is the exact limit: one byte over is too_large, at the
    limit the frame is relayed."""
    limit = 1000
    with override_settings(REDIS_BROKER=websocket_settings(MAX_MESSAGE_BYTES=limit)):
        socket = await connect(await make_user("alice"))
        await subscribe(socket, "chat.lobby")
        head = '{"action": "publish", "channel": "chat.lobby", "data": "'
        # "é" is two bytes in UTF-8: the limit counts bytes, not characters.
        fits = head + "é" * ((limit - len(head) - 2) // 2) + '"}'
        fits += " " * (limit - len(fits.encode()))
        assert len(fits.encode()) == limit
        await socket.send_to(text_data=fits + " ")
        error = await receive(socket)
        assert (error["code"], error["detail"]) == (
            "too_large",
            f"a frame may have at most {limit} bytes; this one was dropped",
        )
        await socket.send_to(text_data=fits)
        assert (await receive(socket))["type"] == "message"
