"""The relay behaves the same under uvicorn as under daphne: both are real ASGI servers
serving the test project's ``asgi.py``, driven by real WebSocket clients.

Each test runs once per server (``server`` is parametrized). uvicorn is started with the
command the README recommends (:data:`tests.relay.live_server.UVICORN_COMMAND`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.sessions import InstanceSessionWrapper
from django.contrib.auth import get_user_model
from websockets.exceptions import ConnectionClosed

from redis_broker import broadcast
from redis_broker.relay import adisconnect_user
from redis_broker.relay.consumer import CLOSE_REVOKED, frame_send
from tests.helpers import subprocess_env

from .live_server import LiveServer, session_cookie
from .ws_client import HandshakeRefused, Socket, open_socket

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request: pytest.FixtureRequest, redis_broker_url: str) -> Iterator[LiveServer]:
    """Return a live server of each kind serving the demo on this test's database and Redis."""
    env = subprocess_env(REDIS_URL=redis_broker_url)
    with LiveServer(env, request.param) as live:
        yield live


@pytest.fixture
def alice() -> Any:
    """Return a saved user, alice."""
    return get_user_model().objects.create_user("alice", password="alice")


@pytest.fixture
def bob() -> Any:
    """Return a saved user, bob."""
    return get_user_model().objects.create_user("bob", password="bob")


async def logged_in_socket(server: LiveServer, user: Any) -> Socket:
    """Open a socket on ``server`` with ``user``'s session cookie."""
    cookie = await sync_to_async(session_cookie)(user)
    return await open_socket(server.ws_url, cookie=cookie)


async def test_broadcast_reaches_a_subscribed_socket(server, alice) -> None:
    """Tests that a ``broadcast()`` reaches a socket subscribed to its channel, as a message
    frame, and the user's durable channel carries the entry id."""
    socket = await logged_in_socket(server, alice)
    await socket.subscribe("chat.lobby")
    await socket.subscribe(f"user.{alice.pk}")
    assert await asyncio.to_thread(broadcast, "chat.lobby", {"text": "hi"}) == 1
    frame = await socket.receive()
    assert (frame["type"], frame["channel"], frame["data"]) == (
        "message",
        "chat.lobby",
        {"text": "hi"},
    )
    assert frame["event_id"]
    assert await asyncio.to_thread(broadcast, f"user.{alice.pk}", "private") == 1
    frame = await socket.receive()
    assert (frame["channel"], frame["data"]) == (f"user.{alice.pk}", "private")
    assert frame["id"]
    await socket.close()


async def test_subscription_the_authorizer_refuses_gets_a_forbidden_frame(
    server, alice, bob
) -> None:
    """Tests that subscribing to another user's channel gets a ``forbidden`` error frame,
    that the socket stays open, and that broadcasts there never reach it."""
    socket = await logged_in_socket(server, alice)
    await socket.send({"action": "subscribe", "channel": f"user.{bob.pk}"})
    frame = await socket.receive()
    assert (frame["type"], frame["code"], frame["channel"]) == (
        "error",
        "forbidden",
        f"user.{bob.pk}",
    )
    await socket.subscribe("chat.lobby")
    await asyncio.to_thread(broadcast, f"user.{bob.pk}", "for bob only")
    await asyncio.to_thread(broadcast, "chat.lobby", "for everyone")
    assert (await socket.receive())["data"] == "for everyone"
    await socket.close()


async def test_anonymous_socket_gets_a_forbidden_frame(server) -> None:
    """Tests that a socket without a session may connect but not subscribe to a public
    channel (the default authorizer allows logged-in users only)."""
    socket = await open_socket(server.ws_url)
    await socket.send({"action": "subscribe", "channel": "chat.lobby"})
    frame = await socket.receive()
    assert (frame["type"], frame["code"]) == ("error", "forbidden")
    await socket.close()


async def test_bad_frames_get_bad_request_frames_and_the_socket_stays_open(server, alice) -> None:
    """Tests that a frame that is not JSON, an unknown action and a bad channel name each
    get a ``bad_request`` error frame, and the socket keeps working."""
    socket = await logged_in_socket(server, alice)
    await socket.connection.send("not json {")
    await socket.send({"action": "dance", "channel": "chat.lobby"})
    await socket.send({"action": "subscribe", "channel": "chat.*"})
    for _ in range(3):
        frame = await socket.receive()
        assert (frame["type"], frame["code"]) == ("error", "bad_request"), frame
        assert frame["detail"]
    await socket.subscribe("chat.lobby")
    await socket.send({"action": "publish", "channel": "chat.lobby", "data": "still here"})
    assert (await socket.receive())["data"] == "still here"
    await socket.close()


async def test_frame_over_the_message_limit_gets_a_too_large_frame(server, alice) -> None:
    """Tests that a 100 KB frame, over ``MAX_MESSAGE_BYTES`` but under both servers' own
    limits, is answered with ``too_large`` and the socket stays open."""
    socket = await logged_in_socket(server, alice)
    await socket.send({"action": "publish", "channel": "chat.lobby", "data": "x" * 100_000})
    frame = await socket.receive()
    assert (frame["type"], frame["code"]) == ("error", "too_large")
    await socket.subscribe("chat.lobby")
    await socket.close()


async def test_invalid_utf8_frame_closes_with_1007(server, alice) -> None:
    """Tests that a text frame that is not UTF-8 closes that socket with 1007 (invalid
    payload data) under either server, before it reaches the relay."""
    socket = await logged_in_socket(server, alice)
    with contextlib.suppress(ConnectionClosed):
        await socket.connection.send(b'{"action": "\xff\xfe"}', text=True)
    assert await asyncio.wait_for(socket.closed, 10) == 1007
    await socket.close()


async def test_frame_over_the_servers_limit_closes_with_1009(server, alice) -> None:
    """Tests that a 5 MB frame, over the server's 1 MiB message limit, closes that socket
    with 1009 (message too big) under either server, not with a dropped connection."""
    socket = await logged_in_socket(server, alice)
    await socket.subscribe("chat.lobby")
    with contextlib.suppress(ConnectionClosed):
        await socket.connection.send("x" * 5_000_000)
    assert await asyncio.wait_for(socket.closed, 10) == 1009
    await socket.close()


async def test_foreign_origin_is_refused_at_the_handshake(server, alice) -> None:
    """Tests that the project's ``AllowedHostsOriginValidator`` refuses a page of another
    site under either server: the handshake fails, no socket opens."""
    cookie = await sync_to_async(session_cookie)(alice)
    with pytest.raises(HandshakeRefused):
        await open_socket(server.ws_url, cookie=cookie, origin="http://evil.example")


async def test_disconnect_user_closes_the_users_sockets_on_the_server(
    server, alice, bob, relay_cleanup, redis_layer
) -> None:
    """Tests that ``disconnect_user`` from this process reaches the server through the
    Channels layer and closes alice's socket with 4001, and not bob's."""
    tab = await logged_in_socket(server, alice)
    other = await logged_in_socket(server, bob)
    await tab.subscribe("chat.lobby")  # the socket has joined its user's group by now
    await other.subscribe("chat.lobby")
    assert await adisconnect_user(alice)
    assert await asyncio.wait_for(asyncio.shield(tab.closed), 10) == CLOSE_REVOKED
    await other.send({"action": "publish", "channel": "chat.lobby", "data": "bob is still here"})
    assert (await other.receive())["data"] == "bob is still here"
    await other.close()
    await tab.close()


def test_frames_skip_channels_session_middleware_and_nothing_else() -> None:
    """Tests that the relay sends frames under Channels' session wrappers (which act only
    on HTTP responses), however deep they are nested, and keeps any other wrapper."""

    async def server_send(message: dict[str, Any]) -> None:
        """Stand for the ASGI server's send."""

    inner = InstanceSessionWrapper({"cookies": {}}, server_send)
    outer = InstanceSessionWrapper({"cookies": {}}, inner.send)
    assert frame_send(outer.send) is server_send
    logged = functools.partial(server_send)
    assert frame_send(InstanceSessionWrapper({"cookies": {}}, logged).send) is logged
    assert frame_send(server_send) is server_send


def raw_socket(server: LiveServer, cookie: str) -> socket.socket:
    """Open a WebSocket by hand with a 4 KiB receive buffer and subscribe to chat.lobby.

    No client library: one would read ahead into its own queue, and this socket must stop
    reading exactly when the test says so.
    """
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        host = f"127.0.0.1:{server.port}"
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws/broker/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://{host}\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:  # the 101 response: the server has accepted
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101"), answer
        frame = json.dumps({"action": "subscribe", "channel": "chat.lobby"}).encode()
        sock.sendall(bytes((0x81, 0x80 | len(frame))) + b"\0\0\0\0" + frame)  # zero mask key
        while b'"subscribed"' not in answer:  # its answer, and nothing else yet
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    except BaseException:
        sock.close()
        raise
    return sock


def read_frames_until_close(sock: socket.socket) -> tuple[int, int | None]:
    """Read ``sock`` until the server's close frame; return (text frames, close code)."""
    data, texts = b"", 0
    while True:
        if len(data) >= 2:
            length, head = data[1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(data[2:4]), 4
            elif length == 127:
                length, head = int.from_bytes(data[2:10]), 10
            if len(data) >= head + length:
                opcode, payload = data[0] & 0x0F, data[head : head + length]
                data = data[head + length :]
                if opcode == 8:
                    return texts, int.from_bytes(payload[:2])
                texts += opcode == 1
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            return texts, None
        data += chunk


async def test_browser_that_stops_reading_is_closed_with_4008_under_uvicorn(
    redis_broker_url, alice
) -> None:
    """Tests that under uvicorn, whose ``send`` waits while a socket's buffers are full, a
    socket that stops reading fills only its own queue and is closed with 4008, while
    another socket on the same channel gets every message (daphne buffers without limit
    instead: README "One Redis connection per process")."""
    cookie = await sync_to_async(session_cookie)(alice)
    with LiveServer(subprocess_env(REDIS_URL=redis_broker_url), "uvicorn") as server:
        reader = await open_socket(server.ws_url, cookie=cookie)
        await reader.subscribe("chat.lobby")
        stuck = await asyncio.to_thread(raw_socket, server, cookie)
        try:
            payload = "x" * 30_000
            messages = 600  # 18 MB: more than the kernel's buffers and the 256-frame queue
            sent = await asyncio.to_thread(
                lambda: [broadcast("chat.lobby", payload) for _ in range(messages)]
            )
            assert sent == [1] * messages
            for n in range(messages):
                assert (await reader.receive(within=10))["data"] == payload, n
            texts, code = await asyncio.to_thread(read_frames_until_close, stuck)
        finally:
            stuck.close()
        assert code == 4008
        assert texts < messages  # what fitted in the buffers before it fell behind
        await reader.close()
