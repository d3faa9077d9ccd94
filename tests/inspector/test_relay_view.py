"""The Pub/Sub page's channel tables and relay section, and the Disconnect action, with
a real Redis and, for the action, a real daphne process holding the sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client

from redis_broker.inspector.nodes import every_node
from redis_broker.testing import wait_for
from tests.helpers import closing_db, subprocess_env
from tests.relay.live_server import LiveServer, session_cookie
from tests.relay.ws_client import Socket, open_socket

from .helpers import url, write_relay_status

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def subscribed(client: redis.Redis, *channels: str) -> Iterator[None]:
    """Hold one real Pub/Sub subscription per channel while the ``with`` block runs."""
    pubsub = client.pubsub()
    pubsub.subscribe(*channels)
    try:
        wait_for(
            lambda: all(n == 1 for _, n in client.pubsub_numsub(*channels, **every_node(client))),
            timeout=5,
            message="the subscriptions",
        )
        yield
    finally:
        pubsub.close()


def test_pubsub_page_puts_channel_layer_channels_apart(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that channels_redis's group and consumer channels are listed apart from the
    application's channels, and that the page says what "subscribers" counts."""
    layer = ["demo-asgi__group__redis_broker.user.7", "demo-asgispecific.0123abcd"]
    with subscribed(redis_client, "chat.lobby", *layer):
        response = admin_client.get(url("pubsub"))
    info = response.context["info"]
    assert [c.name for c in info.channels] == ["chat.lobby"]
    internal = {c.name: (c.group, c.subscribers) for c in info.internal}
    assert internal == {layer[0]: ("redis_broker.user.7", 1), layer[1]: (None, 1)}
    html = response.content.decode()
    assert "Channels layer (internal)" in html
    assert "counts the server connections subscribed to a channel in Redis" in html
    assert "not browsers" in html


def test_pubsub_page_shows_the_relay_section(admin_client: Client, redis_broker_url: str) -> None:
    """Tests that each relay process's sockets, users (with a Disconnect button), channels
    and error counts are on the page, added up over processes."""
    write_relay_status(redis_broker_url, "web1-4242-aaaaaa")
    write_relay_status(
        redis_broker_url,
        "web2-77-bbbbbb",
        sockets=1,
        users={("7", "alice"): 1},
        channels={"chat.lobby": 1},
    )
    response = admin_client.get(url("pubsub"))
    relay = response.context["relay"]
    assert relay.sockets == 4
    assert [(u.name, u.sockets) for u in relay.users] == [("alice", 3), ("bob", 1)]
    assert [(c.channel, c.sockets) for c in relay.channels] == [("chat.lobby", 4)]
    assert (relay.rate_limited, relay.too_large) == (24, 8)
    html = response.content.decode()
    assert "Browser relay" in html and "Rate-limited publishes" in html
    assert url("disconnect_user", user_id="7") in html


def test_relay_section_without_change_permission_has_no_disconnect_button(
    viewer: Client, redis_broker_url: str
) -> None:
    """Tests that a view-only user sees the relay's users but no Disconnect button."""
    write_relay_status(redis_broker_url, "web1-4242-aaaaaa")
    html = viewer.get(url("pubsub")).content.decode()
    assert "alice" in html
    assert url("disconnect_user", user_id="7") not in html


def test_disconnect_needs_change_permission(viewer: Client, admin_user: User) -> None:
    """Tests that a view-only staff user gets 403 on the action, on GET and on POST."""
    target = url("disconnect_user", user_id=str(admin_user.pk))
    assert viewer.get(target).status_code == 403
    assert viewer.post(target).status_code == 403
    assert not LogEntry.objects.exists()


def test_disconnect_post_without_csrf_token_is_refused(
    user_client: Callable[..., Client], admin_user: User
) -> None:
    """Tests that a POST without the CSRF token is refused (403) and logs nothing."""
    client = user_client("view_broker", "change_broker")
    client.handler.enforce_csrf_checks = True
    response = client.post(url("disconnect_user", user_id=str(admin_user.pk)))
    assert response.status_code == 403
    assert not LogEntry.objects.exists()


def test_disconnect_of_an_unknown_user_is_a_not_found_page(operator: Client) -> None:
    """Tests that a user id nobody has gives the inspector's 404 page, not a 500."""
    assert operator.get(url("disconnect_user", user_id="999999")).status_code == 404
    assert operator.get(url("disconnect_user", user_id="not-a-number")).status_code == 404


@pytest.fixture
def daphne_server(redis_broker_url: str) -> Iterator[LiveServer]:
    """Return a daphne process serving the demo (the relay), stopped after the test."""
    with LiveServer(subprocess_env(REDIS_URL=redis_broker_url)) as server:
        yield server


@pytest.mark.slow
async def test_disconnect_confirms_on_get_then_closes_the_users_sockets_on_post(
    daphne_server: LiveServer, operator: Client, redis_client: redis.Redis
) -> None:
    """Tests that GET asks and closes nothing; POST closes every socket of that user on the
    server with 4001, leaves other users' sockets open and writes a log entry saying so."""
    alice = await sync_to_async(User.objects.create_user)("alice", password="alice")
    bob = await sync_to_async(User.objects.create_user)("bob", password="bob")
    alice_cookie = await sync_to_async(session_cookie)(alice)
    bob_cookie = await sync_to_async(session_cookie)(bob)
    tabs: list[Socket] = [
        await open_socket(daphne_server.ws_url, cookie=alice_cookie) for _ in range(2)
    ]
    other = await open_socket(daphne_server.ws_url, cookie=bob_cookie)
    await other.subscribe("chat.lobby")

    def relay_shows_alice() -> bool:
        response = operator.get(url("pubsub"))
        return any(u.name == "alice" and u.sockets == 2 for u in response.context["relay"].users)

    await asyncio.to_thread(
        wait_for, closing_db(relay_shows_alice), message="alice's 2 sockets on the page"
    )
    target = url("disconnect_user", user_id=str(alice.pk))
    page = await asyncio.to_thread(closing_db(operator.get), target)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Close every relay socket of user “alice”" in html
    assert "2 relay sockets open on 1 server process" in html
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(tabs[0].closed), 0.5)
    assert not await sync_to_async(LogEntry.objects.exists)()

    response = await asyncio.to_thread(closing_db(operator.post), target)
    assert response.status_code == 302
    assert response["Location"] == url("pubsub")
    for tab in tabs:
        assert await asyncio.wait_for(tab.closed, 5) == 4001
    await other.send({"action": "publish", "channel": "chat.lobby", "data": "still here"})
    assert (await other.receive())["data"] == "still here"
    entry = await sync_to_async(LogEntry.objects.get)()
    assert entry.object_repr == "Disconnected alice from the relay"
    assert f"Closed every relay socket of user alice (id {alice.pk})" in entry.change_message
    assert "2 relay sockets open on 1 server process before" in entry.change_message
    await other.close()
    for tab in tabs:
        await tab.close()
