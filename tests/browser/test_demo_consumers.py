"""The demo's channel and list consumers in a real Chromium, next to a real ``runconsumers``:
who is online in a chat room, and e-mails queued by a ticket change."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from redis_broker.naming import list_consumers_name, processing_list_name
from redis_broker.testing import wait_for

from .helpers import wait_subscribed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: How long a closed page may still be listed. Its "leave" arrives in well under a
#: second; only a page that could not send one (a crashed browser) waits for expiry
#: (PRESENCE_TIMEOUT, up to 40 s), so this deadline tests the leave.
LEAVE_DEADLINE = 10_000  # ms


def in_processing(redis_client, list_name: str) -> int:
    """Return how many items of ``list_name`` its workers hold in their processing lists."""
    consumers = redis_client.smembers(list_consumers_name(list_name))
    return sum(redis_client.llen(processing_list_name(list_name, c)) for c in consumers)


def open_room(page, server, room: str) -> None:
    """Open the chat ``room`` in ``page`` and wait until its roster subscription is live."""
    page.goto(f"{server.url}/chat/{room}/")
    wait_subscribed(page, f"online.{room}")


def online_users(redis_client, room: str) -> list[str]:
    """Return the user names of the pages ``track_presence`` holds for ``room``."""
    pages = redis_client.zrange(f"demo:online:{room}", 0, -1)
    return sorted({page.split("/")[0] for page in pages})


def test_chat_room_shows_who_is_online(
    logged_in_page, daphne_server, demo_users, demo_consumers, redis_client, artifacts_dir: Path
) -> None:
    """Tests that the track_presence channel consumer lists alice and bob while both have
    the room open, keeps bob while one of his two tabs is open, and drops him within
    LEAVE_DEADLINE of his last tab closing."""
    alice = logged_in_page("alice")
    open_room(alice, daphne_server, "lobby")
    alice.wait_for_selector("#online:text-is('1 online: alice')")
    bob = logged_in_page("bob")
    bob_again = bob.context.new_page()
    for page in (bob, bob_again):
        open_room(page, daphne_server, "lobby")
    for page in (alice, bob, bob_again):
        page.wait_for_selector("#online:text-is('2 online: alice, bob')")
    assert online_users(redis_client, "lobby") == ["alice", "bob"]
    alice.screenshot(path=str(artifacts_dir / "online-two-users.png"))

    bob.close()
    wait_for(lambda: redis_client.zcard("demo:online:lobby") == 2, message="bob's first leave")
    late = alice.context.new_page()  # its join is answered with the roster after that leave
    open_room(late, daphne_server, "lobby")
    late.wait_for_selector("#online:text-is('2 online: alice, bob')")

    closed_at = time.monotonic()
    bob_again.close()
    alice.wait_for_selector("#online:text-is('1 online: alice')", timeout=LEAVE_DEADLINE)
    print(f"bob was dropped {time.monotonic() - closed_at:.2f} s after his last tab closed")
    assert online_users(redis_client, "lobby") == ["alice"]
    alice.screenshot(path=str(artifacts_dir / "online-after-bob-left.png"))


def test_ticket_change_sends_an_email_through_the_list_queue(
    logged_in_page, daphne_server, demo_users, demo_consumers, redis_client, artifacts_dir: Path
) -> None:
    """Tests that changing a ticket on /tickets/ queues an e-mail on demo.emails, that the
    send_email list consumer sends it once, and that /emails/ shows it (live and reloaded)."""
    from demo_site.demo.models import SentEmail, Ticket

    alice_user = demo_users["alice"]
    ticket = Ticket.objects.create(owner=alice_user, title="Printer on fire")
    inbox = logged_in_page("alice")
    inbox.goto(f"{daphne_server.url}/emails/")
    wait_subscribed(inbox, f"user.{alice_user.pk}")
    assert inbox.locator("#no-emails").is_visible()

    tickets = inbox.context.new_page()
    tickets.goto(f"{daphne_server.url}/tickets/")
    row = tickets.locator(f"#ticket-{ticket.pk}")
    row.locator("select[name=status]").select_option("resolved")
    row.locator("button[type=submit]").click()
    tickets.wait_for_url(re.compile(rf"/tickets/#ticket-{ticket.pk}$"))

    subject = f"Ticket #{ticket.pk} is now Resolved"
    inbox.wait_for_selector(f"#emails tr.email:has-text('{subject}')")
    inbox.click("#bell")
    inbox.wait_for_selector(f"#notifications li.notification:has-text('E-mail sent: {subject}')")
    inbox.screenshot(path=str(artifacts_dir / "emails-live.png"))
    inbox.reload()
    inbox.wait_for_selector(f"#emails tr.email:has-text('{subject}'):has-text('Printer on fire')")
    assert inbox.locator("#emails tr.email").count() == 1
    sent = SentEmail.objects.get()
    assert (sent.to, sent.subject) == ("alice@example.com", subject)
    assert redis_client.llen("demo.emails") == 0
    wait_for(lambda: not in_processing(redis_client, "demo.emails"), message="the job settled")
    inbox.screenshot(path=str(artifacts_dir / "emails-reloaded.png"))
