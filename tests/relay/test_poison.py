"""Poison input on the relay: messages, replayed entries and browser frames that cannot be
decoded cost one warning or one error frame, never the hub's connection or a socket."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from redis_broker import abroadcast, wire
from redis_broker.connection import pubsub_publish
from redis_broker.relay.hub import get_hub

from .helpers import receive, send, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 1000 + "1" + "]" * 1000  # 2 KB; Python's parser dies of RecursionError on it

#: Pub/Sub messages no reader can decode, as another producer could publish them.
POISON_MESSAGES = [
    DEEP.encode(),
    b'{"type": "", "data": ' + DEEP.encode() + b', "event_id": "e", "published_at": ""}',
    b'{"data": ' + b"9" * 5000 + b', "event_id": "e"}',  # past the int digits limit
    b'{"data": "\xff", "event_id": "e"}',  # not UTF-8
    b'{"data": "\\ud800", "event_id": "e"}',  # a lone surrogate no socket can send
    b"not json",
]


def relay_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the warnings logged on the relay's logger."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "redis_broker.relay" and r.levelno == logging.WARNING
    ]


async def test_undecodable_messages_are_dropped_and_the_hub_keeps_its_connection(
    connect, make_user, redis_client, caplog
) -> None:
    """Tests that messages nested 1,000 deep, with huge numbers, bad UTF-8 or lone
    surrogates are dropped with one warning each, while the hub keeps its connection and
    every socket gets the next normal message, with no gap frame."""
    caplog.set_level(logging.WARNING, logger="redis_broker.relay")
    sockets = [await connect(await make_user(name)) for name in ("alice", "bob")]
    for socket in sockets:
        await subscribe(socket, "chat.lobby")
    hub = get_hub()
    for raw in POISON_MESSAGES:
        assert pubsub_publish(redis_client, "chat.lobby", raw) == 1  # SPUBLISH on a cluster
    await abroadcast("chat.lobby", "after the poison")
    for socket in sockets:
        frame = await receive(socket)
        assert (frame["type"], frame["data"]) == ("message", "after the poison")
        assert await socket.receive_nothing(timeout=0.1)
    assert hub.stats.reconnects == 0
    assert hub.stats.gaps == 0
    assert hub.stats.malformed == len(POISON_MESSAGES)
    warnings = relay_warnings(caplog)
    assert len(warnings) == len(POISON_MESSAGES)
    assert all(w.startswith("Dropped a message on 'chat.lobby' that cannot be") for w in warnings)
    assert "nested deeper than 100 levels" in warnings[0]


async def test_undecodable_entry_is_skipped_in_a_durable_replay(
    connect, make_user, redis_client, caplog
) -> None:
    """Tests that a replay from ``since`` skips an entry nested 1,000 deep with one warning
    and delivers the entries around it, then live messages."""
    caplog.set_level(logging.WARNING, logger="redis_broker.relay")
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    first = redis_client.xadd(channel, wire.encode_entry("before"))
    poison = redis_client.xadd(channel, {"data": DEEP, "event_id": "e"})
    redis_client.xadd(channel, wire.encode_entry("after"))
    socket = await connect(user)
    await subscribe(socket, channel, since=first)
    frame = await receive(socket)
    assert (frame["type"], frame["data"]) == ("message", "after")
    await abroadcast(channel, "live")
    assert (await receive(socket))["data"] == "live"
    [warning] = relay_warnings(caplog)
    assert f"Skipped entry {poison} of '{channel}'" in warning
    assert "nested deeper than 100 levels" in warning


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"action": "publish", "channel": "chat.lobby", "data": ' + DEEP + "}", "nested"),
        ('{"action": "publish", "channel": "chat.lobby", "data": ' + "9" * 5000 + "}", "JSON"),
        ('{"action": "publish", "channel": "chat.lobby", "data": "\\ud800"}', "Unicode"),
        ("[" * 60_000, "nested"),  # unclosed, under MAX_MESSAGE_BYTES
    ],
)
async def test_undecodable_browser_frame_gets_bad_request_and_the_socket_keeps_working(
    connect, make_user, text: str, reason: str
) -> None:
    """Tests that a frame nested 1,000 deep, with a huge number or a lone surrogate gets
    a bad_request error frame, publishes nothing, and leaves the socket open and working."""
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    await socket.send_to(text_data=text)
    frame = await receive(socket)
    assert (frame["type"], frame["code"]) == ("error", "bad_request")
    assert reason in frame["detail"]
    await send(socket, {"action": "publish", "channel": "chat.lobby", "data": "still open"})
    assert (await receive(socket))["data"] == "still open"


async def test_browser_frame_with_data_at_max_depth_is_relayed(connect, make_user) -> None:
    """Tests that the deepest payload publishing accepts also passes as a browser frame
    (the frame's one extra level is allowed) and reaches subscribers intact."""
    data: Any = "leaf"
    for _ in range(wire.MAX_DEPTH):
        data = [data]
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    await socket.send_to(
        text_data=json.dumps({"action": "publish", "channel": "chat.lobby", "data": data})
    )
    assert (await receive(socket))["data"] == data
