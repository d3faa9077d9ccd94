"""The demo's URLs in a real Chromium: room names normalised or explained, a friendly 404,
GET on the ticket actions, and one log line per 404."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import subprocess_env
from tests.relay.live_server import LiveServer

from .helpers import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_room_name_with_capitals_redirects_to_its_lowercase_room(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that /chat/Lobby/ (and with spaces around it) redirects to /chat/lobby/."""
    page = logged_in_page("alice")
    for path in ("/chat/Lobby/", "/chat/%20LOBBY%20/"):
        response = open_page(page, daphne_server, path)
        assert response.status == 200
        assert page.url == daphne_server.url + "/chat/lobby/"
        assert response.request.redirected_from is not None
        assert page.inner_text("main h1") == "#lobby"


def test_a_name_that_cannot_be_a_room_gets_the_friendly_404_that_explains_room_names(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that room names outside [a-z0-9_-]{1,50} get a 404 in the site's layout that
    says which names work and links back, not Django's debug page."""
    page = logged_in_page("alice")
    for path in ("/chat/no.dots/", "/chat/" + "a" * 51 + "/", "/chat/caf%C3%A9/"):
        response = open_page(page, daphne_server, path)
        assert response.status == 404, path
        assert page.inner_text("main h1") == "Page not found"
        assert "Room names are 1 to 50 characters" in page.inner_text("#not-found-explanation")
        assert "URLconf" not in page.content()
        assert page.locator("#not-found a[href='/chat/lobby/']").count() == 1
        assert page.locator("#nav a").count() >= 4  # the header is there: a way back
    page.screenshot(path=str(artifacts_dir / "room-not-found.png"))


def test_an_unknown_address_gets_the_friendly_404_with_links_back(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that any unknown path answers 404 with the demo's page naming the path."""
    page = logged_in_page("alice")
    response = open_page(page, daphne_server, "/no/such/page/")
    assert response.status == 404
    assert "There is no page at /no/such/page/" in page.inner_text("#not-found-explanation")
    assert page.locator("#not-found a[href='/tickets/']").count() == 1


def test_get_on_a_tickets_post_only_url_redirects_to_the_tickets_page(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that opening a ticket action's URL (as a bookmark or a login's ``next``
    would) lands on the tickets page, anchored at that ticket, instead of an empty 405."""
    from demo_site.demo.models import Ticket

    ticket = Ticket.objects.create(owner=demo_users["alice"], title="Printer on fire")
    page = logged_in_page("alice")
    response = open_page(page, daphne_server, f"/tickets/{ticket.pk}/")
    assert response.status == 200
    assert page.url == f"{daphne_server.url}/tickets/#ticket-{ticket.pk}"
    assert page.evaluate("document.querySelector('#tickets tr:target').id") == (
        f"ticket-{ticket.pk}"
    )
    response = open_page(page, daphne_server, "/tickets/new/")
    assert response.status == 200
    assert page.url == f"{daphne_server.url}/tickets/"
    assert Ticket.objects.count() == 1  # the GET changed nothing


def test_the_demo_logs_a_404_once(transactional_db, redis_broker_url: str) -> None:
    """Tests that under the demo's own settings a 404 is one line (daphne's access log),
    not also a django.request warning."""
    env = subprocess_env(REDIS_URL=redis_broker_url, DJANGO_SETTINGS_MODULE="demo_site.settings")
    with LiveServer(env) as server:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(server.url + "/logged-once-please/", timeout=10)
        assert answer.value.code == 404
        answer.value.close()
        output = server.output()
    lines = [line for line in output.splitlines() if "logged-once-please" in line]
    assert len(lines) == 1, output
    assert re.search(r'"GET /logged-once-please/" 404', lines[0])
