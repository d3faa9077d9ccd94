"""The hub's reconnect loop and watchdog, against Redis servers killed and paused for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from redis_broker import abroadcast, broadcast
from redis_broker.relay.hub import get_hub

from .helpers import kill_pubsub_clients, receive, single_node, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def test_killed_connection_resubscribes_and_reports_gap(
    connect, make_user, redis_client
) -> None:
    """Tests that after the Pub/Sub connection dies, a non-durable channel gets a gap
    frame and then live messages again."""
    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    hub = get_hub()
    assert kill_pubsub_clients(redis_client) == 1
    assert await receive(socket) == {"type": "gap", "channel": "chat.lobby"}
    assert hub.stats.reconnects == 1
    await abroadcast("chat.lobby", "again")
    assert (await receive(socket))["data"] == "again"


async def test_durable_channel_replays_across_a_killed_connection(
    connect, make_user, redis_client
) -> None:
    """Tests that with a publisher running while the connection is killed, a durable
    channel delivers every message exactly once and reports no gap."""
    total = 200
    # Keep every message in the stream whatever the project's DURABLE_MAXLEN: a trim
    # during the outage would rightly be reported as a gap.
    websocket = {**settings.REDIS_BROKER.get("WEBSOCKET", {}), "DURABLE_MAXLEN": total * 5}
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "WEBSOCKET": websocket}):
        user = await make_user("alice")
        channel = f"user.{user.pk}"
        socket = await connect(user)
        await subscribe(socket, channel)

        def publish_all() -> None:
            for n in range(total):
                broadcast(channel, n)
                if n in (50, 120):
                    kill_pubsub_clients(redis_client)

        await asyncio.to_thread(publish_all)
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1].get("data") != total - 1:
            frames.append(await receive(socket, within=10))
        assert [f["data"] for f in frames] == list(range(total))
        assert get_hub().stats.reconnects >= 1


@pytest.mark.slow
async def test_redis_restart_is_survived(connect, make_user, redis_server_factory) -> None:
    """Tests that when Redis goes away and comes back, sockets are resubscribed and told."""
    server = redis_server_factory()
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, **single_node(server.url)}):
        socket = await connect(await make_user("alice"))
        await subscribe(socket, "chat.lobby")
        hub = get_hub()
        server.stop()
        async with asyncio.timeout(5):  # the hub notices and starts backing off
            while hub.connected.is_set():  # noqa: ASYNC110 - a state flag, polled
                await asyncio.sleep(0.02)
        server.start()
        assert await receive(socket, within=10) == {"type": "gap", "channel": "chat.lobby"}
        await abroadcast("chat.lobby", "back")
        assert (await receive(socket))["data"] == "back"


@pytest.mark.slow
async def test_watchdog_reconnects_a_connection_that_stops_answering(
    connect, make_user, redis_server_factory
) -> None:
    """Tests that a Pub/Sub connection whose PING goes unanswered is dropped and rebuilt."""
    server = redis_server_factory()
    broker = {**settings.REDIS_BROKER, **single_node(server.url)}
    broker["WEBSOCKET"] = {**broker.get("WEBSOCKET", {}), "PING_INTERVAL": 0.3}
    with override_settings(REDIS_BROKER=broker):
        socket = await connect(await make_user("alice"))
        await subscribe(socket, "chat.lobby")
        hub = get_hub()
        admin = redis.asyncio.Redis.from_url(server.url)
        try:
            # A paused server reads nothing: to the hub it looks exactly like a half-open
            # connection, which only a PING with a deadline can tell from a quiet one.
            await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            assert await receive(socket, within=10) == {"type": "gap", "channel": "chat.lobby"}
            assert hub.stats.reconnects >= 1
        finally:
            await admin.aclose()
