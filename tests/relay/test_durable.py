"""Durable channels: message ids, replay with ``since``, and the switch from replay to live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from redis_broker import abroadcast, broadcast

from .helpers import receive, send, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def collect_until(socket: Any, last: Any, within: float = 10) -> list[dict[str, Any]]:
    """Return message frames up to the one whose data is ``last``."""
    frames = []
    while True:
        frame = await receive(socket, within=within)
        frames.append(frame)
        if frame.get("type") == "message" and frame["data"] == last:
            return frames


async def test_durable_message_frame_carries_the_entry_id(connect, make_user, redis_client) -> None:
    """Tests that a message on ``user.<pk>`` carries the id of its stream entry."""
    user = await make_user("alice")
    socket = await connect(user)
    await subscribe(socket, f"user.{user.pk}")
    await abroadcast(f"user.{user.pk}", {"note": 1})
    frame = await receive(socket)
    [(entry_id, _fields)] = redis_client.xrange(f"user.{user.pk}")
    assert frame["id"] == entry_id
    assert frame["data"] == {"note": 1}


async def test_subscribe_with_since_replays_exactly_what_was_missed(connect, make_user) -> None:
    """Tests that ``since`` replays the entries after it, in order, then goes live."""
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    for n in range(5):
        broadcast(channel, n)  # history before the marker: never replayed below
    first = await connect(user)
    await subscribe(first, channel)
    await abroadcast(channel, "marker")
    marker = await receive(first)
    for n in range(5, 8):
        await abroadcast(channel, n)
    second = await connect(user)
    await subscribe(second, channel, since=marker["id"])
    replayed = [await receive(second) for _ in range(3)]
    assert [f["data"] for f in replayed] == [5, 6, 7]
    await abroadcast(channel, "live")
    assert (await receive(second))["data"] == "live"
    assert await second.receive_nothing(timeout=0.2)


async def test_subscribe_without_since_does_not_replay_history(connect, make_user) -> None:
    """Tests that a plain subscribe on a durable channel starts with live messages only."""
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    await abroadcast(channel, "old")
    socket = await connect(user)
    await subscribe(socket, channel)
    await abroadcast(channel, "new")
    assert (await receive(socket))["data"] == "new"


async def test_switch_from_replay_to_live_loses_and_repeats_nothing(connect, make_user) -> None:
    """Tests that with a publisher running during the switch, every entry after ``since``
    arrives exactly once, in order."""
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    watcher = await connect(user)
    await subscribe(watcher, channel)
    await abroadcast(channel, -1)
    since = (await receive(watcher))["id"]
    total = 300
    started = asyncio.Event()

    def publish_all() -> None:
        for n in range(total):
            broadcast(channel, n)
            if n == 20:
                loop.call_soon_threadsafe(started.set)

    loop = asyncio.get_running_loop()
    publisher = asyncio.create_task(asyncio.to_thread(publish_all))
    await started.wait()
    socket = await connect(user)
    await subscribe(socket, channel, since=since)
    frames = await collect_until(socket, total - 1)
    await publisher
    assert [f["data"] for f in frames] == list(range(total))
    ids = [f["id"] for f in frames]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert await socket.receive_nothing(timeout=0.2)


async def test_since_older_than_the_trimmed_stream_gets_a_gap(
    connect, make_user, redis_client
) -> None:
    """Tests that when entries after ``since`` were trimmed away the socket is told (gap)."""
    user = await make_user("alice")
    channel = f"user.{user.pk}"
    watcher = await connect(user)
    await subscribe(watcher, channel)
    for n in range(6):
        await abroadcast(channel, n)
    frames = [await receive(watcher) for _ in range(6)]
    redis_client.xtrim(channel, maxlen=2, approximate=False)
    socket = await connect(user)
    await subscribe(socket, channel, since=frames[0]["id"])
    assert await receive(socket) == {"type": "gap", "channel": channel}
    assert [(await receive(socket))["data"] for _ in range(2)] == [4, 5]


async def test_since_is_ignored_on_non_durable_channels(connect, make_user) -> None:
    """Tests that ``since`` on a Pub/Sub-only channel subscribes live without replay."""
    socket = await connect(await make_user("alice"))
    await send(socket, {"action": "subscribe", "channel": "chat.lobby", "since": "0-0"})
    assert await receive(socket) == {"type": "subscribed", "channel": "chat.lobby"}
    await abroadcast("chat.lobby", "live")
    assert (await receive(socket))["data"] == "live"
