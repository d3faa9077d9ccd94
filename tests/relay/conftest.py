"""Fixtures of the relay tests: users, sockets on the relay, and a clean hub per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings

from redis_broker.relay.hub import aclose_hub
from redis_broker.routing import websocket_urlpatterns

Socket = WebsocketCommunicator
ConnectSocket = Callable[..., Awaitable[WebsocketCommunicator]]


IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
async def relay_cleanup(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Close the hub and the channel layer's pools of this test's event loop afterwards.

    Tests use the in-memory channel layer unless they request ``redis_layer``: channels_redis
    takes up to its BZPOPMIN timeout (5 s) to let go of a cancelled socket, which is
    fine for a server and far too slow for dozens of short tests. (The loop's async Redis
    client is closed by ``close_async_redis`` in tests/conftest.py.)
    """
    if "redis_layer" not in request.fixturenames:
        with override_settings(CHANNEL_LAYERS=IN_MEMORY_LAYER):
            yield
    else:
        yield
    await aclose_hub()
    for layer in list(channel_layers.backends.values()):
        close = getattr(layer, "close_pools", None) or getattr(layer, "flush", None)
        if close is not None:
            await close()
    channel_layers.backends.clear()


@pytest.fixture
def redis_layer() -> None:
    """Keep the project's channels_redis layer for this test (cross-process control)."""


@pytest.fixture
async def connect(relay_cleanup: None) -> AsyncIterator[ConnectSocket]:
    """Return ``connect(user=None)``: an open socket on the relay for ``user``."""
    sockets: list[WebsocketCommunicator] = []

    async def _connect(user: Any = None) -> WebsocketCommunicator:
        socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/broker/")
        socket.scope["user"] = user if user is not None else AnonymousUser()
        connected, _ = await socket.connect(timeout=5)
        assert connected
        sockets.append(socket)
        return socket

    yield _connect
    for socket in sockets:
        await socket.disconnect(timeout=5)


@pytest.fixture
def make_user(transactional_db: None) -> Callable[[str], Awaitable[Any]]:
    """Return ``make_user(name)``: an async factory of saved users."""
    from django.contrib.auth import get_user_model

    async def _make(name: str) -> Any:
        return await sync_to_async(get_user_model().objects.create_user)(name, password=name)

    return _make
