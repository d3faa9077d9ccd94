"""disconnect_user and logout: a user's sockets close, through the Channels layer."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.signals import user_logged_out

from redis_broker.relay import adisconnect_user
from redis_broker.relay.consumer import CLOSE_REVOKED

from .helpers import subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def test_disconnect_user_closes_all_their_sockets_only(
    connect, make_user, redis_layer
) -> None:
    """Tests that every socket of the user closes with 4001 and other users' stay open."""
    alice, bob = await make_user("alice"), await make_user("bob")
    tabs = [await connect(alice), await connect(alice)]
    other = await connect(bob)
    await adisconnect_user(alice)
    for tab in tabs:
        output = await tab.receive_output(timeout=5)
        assert output == {"type": "websocket.close", "code": CLOSE_REVOKED}
    await subscribe(other, "chat.lobby")


async def test_logout_signal_closes_the_users_sockets(connect, make_user, redis_layer) -> None:
    """Tests that Django's user_logged_out is connected to disconnect_user."""
    alice = await make_user("alice")
    tab = await connect(alice)
    await sync_to_async(user_logged_out.send)(sender=type(alice), request=None, user=alice)
    output = await tab.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": CLOSE_REVOKED}
