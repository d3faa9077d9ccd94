"""The relay in a real daphne process, fed by broadcasts from other processes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from websockets.exceptions import ConnectionClosed

from redis_broker import abroadcast
from redis_broker.connection import pubsub_publish
from tests.helpers import ROOT, subprocess_env

from .helpers import single_node, single_node_env
from .live_server import LiveServer, session_cookie
from .ws_client import open_socket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def broadcast_from_another_process(channel: str, *items: Any, env: dict[str, str]) -> None:
    """Run ``broadcast(channel, item)`` for each item in a separate Python process."""
    code = (
        "import django, sys, json; django.setup(); from redis_broker import broadcast\n"
        "for item in json.loads(sys.argv[2]): broadcast(sys.argv[1], item)\n"
    )
    import json

    subprocess.run(
        [sys.executable, "-c", code, channel, json.dumps(list(items))],
        env=env, cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def live_env(redis_broker_url: str) -> dict[str, str]:
    """Return the environment of the live server and of the publishing processes."""
    return subprocess_env(REDIS_URL=redis_broker_url)


@pytest.fixture
def daphne_server(live_env: dict[str, str]) -> Iterator[LiveServer]:
    """Return a daphne process serving the demo, stopped after the test."""
    with LiveServer(live_env) as server:
        yield server


@pytest.fixture
def alice() -> Any:
    """Return a saved user, alice."""
    return get_user_model().objects.create_user("alice", password="alice")


async def test_broadcast_from_another_process_reaches_sockets(
    daphne_server, live_env, alice
) -> None:
    """Tests that a broadcast() made by another process arrives on sockets of a daphne server."""
    cookie = await sync_to_async(session_cookie)(alice)
    first = await open_socket(daphne_server.ws_url, cookie=cookie)
    second = await open_socket(daphne_server.ws_url, cookie=cookie)
    for socket in (first, second):
        await socket.subscribe("chat.lobby")
        await socket.subscribe(f"user.{alice.pk}")
    await asyncio.to_thread(broadcast_from_another_process, "chat.lobby", "hello", env=live_env)
    await asyncio.to_thread(
        broadcast_from_another_process, f"user.{alice.pk}", {"n": 1}, env=live_env
    )
    for socket in (first, second):
        assert (await socket.receive())["data"] == "hello"
        frame = await socket.receive()
        assert frame["data"] == {"n": 1}
        assert frame["id"]
        await socket.close()


async def test_sockets_get_messages_within_5s_of_a_redis_restart(
    redis_server_factory, alice
) -> None:
    """Tests that after the server's Redis restarts, sockets receive messages again within 5 s."""
    redis_server = redis_server_factory()
    env = single_node_env(redis_server.url)
    cookie = await sync_to_async(session_cookie)(alice)
    with LiveServer(env) as server:
        socket = await open_socket(server.ws_url, cookie=cookie)
        await socket.subscribe("chat.lobby")
        redis_server.stop()
        redis_server.start()
        loop = asyncio.get_running_loop()
        restarted = loop.time()
        try:
            gap = await socket.receive(within=5)
        except TimeoutError:
            pytest.fail(f"no gap frame within 5 s; daphne said:\n{server.output()}")
        assert gap == {"type": "gap", "channel": "chat.lobby"}
        broker = {**settings.REDIS_BROKER, **single_node(redis_server.url)}
        with override_settings(REDIS_BROKER=broker):
            assert await abroadcast("chat.lobby", "back") == 1
        assert (await socket.receive(within=5))["data"] == "back"
        assert loop.time() - restarted < 5
        await socket.close()


async def test_reopened_socket_with_since_gets_exactly_what_it_missed(
    daphne_server, live_env, alice
) -> None:
    """Tests that a socket closed and reopened with ``since`` receives exactly the durable
    messages published while it was away, then live ones."""
    channel = f"user.{alice.pk}"
    cookie = await sync_to_async(session_cookie)(alice)
    socket = await open_socket(daphne_server.ws_url, cookie=cookie)
    await socket.subscribe(channel)
    await asyncio.to_thread(broadcast_from_another_process, channel, "seen", env=live_env)
    last_seen = (await socket.receive())["id"]
    await socket.close()
    await asyncio.to_thread(
        broadcast_from_another_process, channel, "away-1", "away-2", "away-3", env=live_env
    )
    socket = await open_socket(daphne_server.ws_url, cookie=cookie)
    await socket.subscribe(channel, since=last_seen)
    assert [(await socket.receive())["data"] for _ in range(3)] == ["away-1", "away-2", "away-3"]
    await asyncio.to_thread(broadcast_from_another_process, channel, "live", env=live_env)
    assert (await socket.receive())["data"] == "live"
    with pytest.raises(asyncio.TimeoutError):
        await socket.receive(within=0.3)
    await socket.close()


async def test_foreign_origin_is_refused_by_the_live_server(daphne_server, alice) -> None:
    """Tests that daphne refuses the handshake of a page served by another site."""
    cookie = await sync_to_async(session_cookie)(alice)
    with pytest.raises(ConnectionError):
        await open_socket(daphne_server.ws_url, cookie=cookie, origin="http://evil.example")


async def test_oversize_frame_closes_with_1009_instead_of_dropping_tcp(
    daphne_server, alice
) -> None:
    """Tests that a 5 MB frame, over daphne's message limit, closes the socket with 1009
    (message too big), not with a dropped TCP connection (1006)."""
    cookie = await sync_to_async(session_cookie)(alice)
    socket = await open_socket(daphne_server.ws_url, cookie=cookie)
    await socket.subscribe("chat.lobby")
    with contextlib.suppress(ConnectionClosed):
        await socket.connection.send("x" * 5_000_000)
    assert await asyncio.wait_for(socket.closed, 10) == 1009
    await socket.close()


async def test_invalid_utf8_frame_closes_with_1007_instead_of_dropping_tcp(
    daphne_server, alice
) -> None:
    """Tests that a text frame that is not UTF-8 closes the socket with 1007 (invalid
    payload data), and another socket of the same server keeps working."""
    cookie = await sync_to_async(session_cookie)(alice)
    bystander = await open_socket(daphne_server.ws_url, cookie=cookie)
    await bystander.subscribe("chat.lobby")
    socket = await open_socket(daphne_server.ws_url, cookie=cookie)
    with contextlib.suppress(ConnectionClosed):
        await socket.connection.send(b'{"action": "\xff\xfe"}', text=True)
    assert await asyncio.wait_for(socket.closed, 10) == 1007
    await socket.close()
    await bystander.send({"action": "publish", "channel": "chat.lobby", "data": "still here"})
    assert (await bystander.receive())["data"] == "still here"
    await bystander.close()


async def test_deep_message_leaves_the_live_servers_sockets_untouched(
    daphne_server, live_env, alice, redis_client
) -> None:
    """Tests that a message nested 1,000 deep, published by another producer, is dropped
    by a live server's hub: its sockets get the next message and no gap frame."""
    cookie = await sync_to_async(session_cookie)(alice)
    socket = await open_socket(daphne_server.ws_url, cookie=cookie)
    await socket.subscribe("chat.lobby")
    deep = "[" * 1000 + "1" + "]" * 1000
    assert pubsub_publish(redis_client, "chat.lobby", deep) == 1  # SPUBLISH on a cluster
    await asyncio.to_thread(broadcast_from_another_process, "chat.lobby", "after", env=live_env)
    frame = await socket.receive()
    assert (frame["type"], frame["data"]) == ("message", "after")
    with pytest.raises(asyncio.TimeoutError):
        await socket.receive(within=0.3)
    await socket.close()
