"""The demo's bell in a real Chromium: a notification history replayed from the user's
durable channel on every page, with read marks that survive a reload."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .helpers import open_page, wait_subscribed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


LISTS_50 = "document.querySelectorAll('#notifications li.notification').length == 50"


def bell_count(page) -> int:
    """Return the number the bell shows."""
    return int(page.get_attribute("#bell-count", "data-count") or "-1")


def test_the_tab_that_saves_a_ticket_rings_its_own_bell_after_the_redirect(
    logged_in_page, daphne_server, demo_users, notify_consumer, artifacts_dir: Path
) -> None:
    """Tests that saving a ticket redirects to the anchored, highlighted row with a "saved"
    message, and that the page after the redirect shows the notification the save caused
    (it went out while the browser was between pages), linked to the ticket."""
    from demo_site.demo.models import Ticket

    ticket = Ticket.objects.create(owner=demo_users["alice"], title="Printer on fire")
    page = logged_in_page("alice")
    open_page(page, daphne_server, "/tickets/")
    headers = page.locator("#tickets thead th").all_inner_texts()
    assert [h.split(" (")[0] for h in headers] == ["#", "Title", "Status", "Updated"]
    row = page.locator(f"#ticket-{ticket.pk}")
    row.locator("select[name=status]").select_option("resolved")
    row.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(rf"/tickets/#ticket-{ticket.pk}$"))
    assert page.inner_text("#flash .success") == (
        f"Ticket #{ticket.pk} saved: Resolved. Watch the bell."
    )
    assert page.evaluate("document.querySelector('#tickets tr:target').id") == (
        f"ticket-{ticket.pk}"
    )
    item = page.locator("#notifications li.notification", has_text="updated: Resolved")
    item.wait_for(state="attached")
    assert bell_count(page) >= 1
    assert item.locator("a").get_attribute("href") == f"/tickets/#ticket-{ticket.pk}"
    assert item.locator("time").count() == 1
    page.click("#bell")
    assert bell_count(page) == 0
    page.screenshot(path=str(artifacts_dir / "bell-after-save.png"))


def test_a_reload_lists_earlier_notifications_and_opening_the_bell_marks_them_read(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that a page lists the newest 50 of the notifications sent before it opened,
    newest first and timestamped, counts them unread until the bell is opened, and keeps
    both the list and the read mark across a reload; a later one counts as unread."""
    from redis_broker import broadcast

    alice = demo_users["alice"]
    channel = f"user.{alice.pk}"
    for n in range(1, 61):
        broadcast(channel, {"text": f"Earlier notification {n}", "url": "/tickets/"})
    page = logged_in_page("alice")
    items = page.locator("#notifications li.notification")
    page.wait_for_function(LISTS_50)
    assert items.first.inner_text().startswith("Earlier notification 60")
    assert items.last.inner_text().startswith("Earlier notification 11")
    assert items.locator("time").count() == 50
    assert bell_count(page) == 60
    assert page.locator("#bell.unread").count() == 1

    page.click("#bell")
    assert bell_count(page) == 0
    assert page.locator("#notifications li.unread").count() == 0
    page.screenshot(path=str(artifacts_dir / "bell-history-open.png"))

    page.reload()
    wait_subscribed(page, channel)
    page.wait_for_function(LISTS_50)
    assert bell_count(page) == 0
    broadcast(channel, {"text": "A new one"})
    unread = page.locator("#notifications li.notification.unread", has_text="A new one")
    unread.wait_for(state="attached")
    assert bell_count(page) == 1
    assert items.first.inner_text().startswith("A new one")


def test_opening_the_bell_in_one_tab_marks_notifications_read_in_the_users_other_tabs(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that the read mark is shared by a user's tabs: opening the bell in one resets
    the count in the other without a reload."""
    from redis_broker import broadcast

    channel = f"user.{demo_users['alice'].pk}"
    broadcast(channel, {"text": "Read me once"})
    first = logged_in_page("alice")
    second = first.context.new_page()
    second.goto(first.url)
    for page in (first, second):
        page.wait_for_function("Number(document.querySelector('#bell-count').dataset.count) == 1")
    first.click("#bell")
    second.wait_for_function("Number(document.querySelector('#bell-count').dataset.count) == 0")
