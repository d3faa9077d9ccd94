"""The demo's layout in a real Chromium: long text wraps, the header fits a phone and links
every page, and the favicon and broker.js are served with DEBUG off."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import document_width, open_page, wait_subscribed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LONG_WORD = "W" * 3000
ROOM_50 = "r" * 50


def test_long_unbroken_text_stays_inside_a_1280_px_viewport_on_chat_and_tickets(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that a 3,000-character word in a chat message, a 200-character ticket title
    and a 50-character room name wrap instead of making the page wider than 1280 px."""
    from demo_site.demo.models import Ticket

    Ticket.objects.create(owner=demo_users["alice"], title="T" * 200)
    page = logged_in_page("alice", width=1280, height=800)
    open_page(page, daphne_server, f"/chat/{ROOM_50}/")
    wait_subscribed(page, f"chat.{ROOM_50}")
    page.evaluate("([c, w]) => window.broker.publish(c, {text: w})", [f"chat.{ROOM_50}", LONG_WORD])
    page.wait_for_selector("#messages li.chat-message")
    assert document_width(page) <= 1280
    heading = page.locator("main h1")
    assert heading.evaluate("(h) => h.scrollWidth <= h.clientWidth")
    page.screenshot(path=str(artifacts_dir / "layout-chat-long-text.png"))

    open_page(page, daphne_server, "/tickets/")
    page.wait_for_selector("#tickets td.title")
    assert document_width(page) <= 1280
    page.screenshot(path=str(artifacts_dir / "layout-tickets-long-title.png"), full_page=True)


def test_the_header_wraps_inside_a_375_px_phone_viewport(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that on a 375-px phone every header item and the open bell panel lie inside
    the viewport, and that the chat with a 50-character room name does not scroll sideways."""
    from demo_site.demo.models import Ticket

    Ticket.objects.create(
        owner=demo_users["alice"], title="The printer on the third floor is on fire"
    )
    page = logged_in_page("alice", width=375, height=740)
    for path in ("/tickets/", f"/chat/{ROOM_50}/"):
        open_page(page, daphne_server, path)
        page.wait_for_selector("#relay-status[data-state='open']")
        assert document_width(page) <= 375, path
        boxes = page.locator("header a, header button, header #relay-status").evaluate_all(
            "(els) => els.map((e) => [e.textContent.trim(), e.getBoundingClientRect().left,"
            " e.getBoundingClientRect().right])"
        )
        outside = [box for box in boxes if box[1] < 0 or box[2] > 375]
        assert not outside, (path, outside)
    page.click("#bell")
    panel = page.locator("#bell-panel").bounding_box()
    assert panel is not None
    assert panel["x"] >= 0
    assert panel["x"] + panel["width"] <= 375
    page.screenshot(path=str(artifacts_dir / "layout-phone-bell.png"))
    page.click("#bell")
    open_page(page, daphne_server, "/tickets/")
    title = page.locator("#tickets td.title").bounding_box()
    assert title is not None
    assert title["width"] >= 120  # room for words, not a letter per line
    page.screenshot(path=str(artifacts_dir / "layout-phone-tickets.png"))


def test_the_header_links_every_page_and_the_admin_only_for_staff(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that the header links chat, tickets, e-mails and the price quote, marks the
    current page, and links the admin for staff users only."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("carol", password="carol", is_staff=True)
    alice = logged_in_page("alice")
    open_page(alice, daphne_server, "/tickets/")
    links = alice.locator("#nav a")
    assert links.all_inner_texts() == ["Chat", "Tickets", "E-mails", "Price quote"]
    assert [links.nth(i).get_attribute("href") for i in range(4)] == [
        "/chat/lobby/",
        "/tickets/",
        "/emails/",
        "/quote/",
    ]
    assert alice.locator("#nav a[aria-current='page']").inner_text() == "Tickets"
    staff = logged_in_page("carol")
    assert staff.locator("#nav a").all_inner_texts()[-1] == "Admin"
    assert staff.locator("#nav-admin").get_attribute("href") == "/admin/"


def test_the_favicon_and_broker_js_are_served_with_debug_off(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that the demo server runs with DEBUG off (no debug 404 page) and still serves
    its static files: the SVG favicon every page links, and broker.js."""
    page = logged_in_page("alice")
    page.wait_for_function("typeof window.RedisBroker === 'object'")
    href = page.locator("link[rel=icon]").get_attribute("href")
    assert href == "/static/demo/favicon.svg"
    icon = page.request.get(daphne_server.url + href)
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.text().startswith("<svg")
    legacy = page.request.get(daphne_server.url + "/favicon.ico", max_redirects=0)
    assert (legacy.status, legacy.headers["location"]) == (301, href)
    script = page.request.get(daphne_server.url + "/static/redis_broker/broker.js")
    assert script.status == 200
    missing = page.request.get(daphne_server.url + "/no-such-page/")
    assert missing.status == 404
    assert "Using the URLconf" not in missing.text()  # Django's DEBUG page would say this
    assert "Page not found" in missing.text()
