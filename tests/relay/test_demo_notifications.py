"""The demo's notification path without the runner: Ticket save -> stream -> notify() ->
the owner's socket."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from tests.helpers import read_ticket_events

from .helpers import receive, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ticket_change_notifies_its_owner_only(connect, make_user, redis_client) -> None:
    """Tests that a committed Ticket change, handled by the demo's consumer, reaches the
    owner's user channel and not another user's."""
    from demo_site.demo.consumers import notify
    from demo_site.demo.models import Ticket

    alice, bob = await make_user("alice"), await make_user("bob")
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    await subscribe(alice_socket, f"user.{alice.pk}")
    await subscribe(bob_socket, f"user.{bob.pk}")

    def change_ticket() -> None:
        ticket = Ticket.objects.create(owner=alice, title="Printer on fire")
        ticket.status = Ticket.Status.RESOLVED
        ticket.save()

    await sync_to_async(change_ticket)()
    events = read_ticket_events(redis_client)
    assert [e.type for e in events] == ["demo.ticket.created", "demo.ticket.updated"]
    for event in events:
        await sync_to_async(notify)(event)
    created, resolved = await receive(alice_socket), await receive(alice_socket)
    assert created["data"]["kind"] == "ticket"
    assert resolved["data"]["status"] == "resolved"
    assert resolved["data"]["text"] == "Ticket “Printer on fire” updated: Resolved"
    assert resolved["event_type"] == "demo.notification"
    assert await bob_socket.receive_nothing(timeout=0.3)
