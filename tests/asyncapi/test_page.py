"""The inspector's AsyncAPI page: for staff with the view permission, escaped, with
downloads in JSON and YAML."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from django.test import Client, override_settings
from django.urls import reverse

from redis_broker.publishers import publisher, registry
from tests.helpers import staff_client

from .helpers import asyncapi_errors

HOSTILE = '<script>alert("x")</script>'


def url(name: str, **kwargs: str) -> str:
    """Return the URL of an inspector view on the default admin site."""
    return reverse(f"admin:redis_broker_{name}", kwargs=kwargs or None)


PAGES = [
    url("asyncapi"),
    url("asyncapi_download", fmt="json"),
    url("asyncapi_download", fmt="yaml"),
]


@pytest.fixture
def user_client(db: Any) -> Callable[..., Client]:
    """Return a factory of logged-in clients for staff users with the given codenames."""
    return staff_client


@pytest.fixture
def hostile_publisher() -> Iterator[None]:
    """Declare a publisher whose name and description are markup, for this test only."""
    declared = publisher("hostile.out", name=f"evil{HOSTILE}", description=f"desc {HOSTILE}")
    yield
    registry.unregister(declared.name)


def test_the_page_and_downloads_need_login_and_the_view_permission(
    user_client: Callable[..., Client],
) -> None:
    """Tests that an anonymous visitor is sent to the login, staff without view_broker get
    403, and a viewer gets the page and both files."""
    for target in PAGES:
        response = Client().get(target)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
        assert user_client().get(target).status_code == 403
        assert user_client("view_broker").get(target).status_code == 200


def test_the_page_shows_channels_operations_messages_and_schemas(
    user_client: Callable[..., Client],
) -> None:
    """Tests that the page lists the project's channels, operations (with their group and
    reply), messages and schemas, and links both downloads."""
    response = user_client("view_broker").get(url("asyncapi"))
    html = response.content.decode()
    for text in [
        'id="channel-stream.demo.tickets"',
        'id="operation-consume.price_quote"',
        "consume.price_quote.reply",
        'group <span class="rb-mono">pricing</span>',
        'id="schema-TicketEvent"',
        "&quot;$ref&quot;: &quot;#/components/schemas/TicketEvent&quot;",
        url("asyncapi_download", fmt="json"),
        url("asyncapi_download", fmt="yaml"),
    ]:
        assert text in html, text


def test_the_page_escapes_hostile_names_and_descriptions(
    user_client: Callable[..., Client], settings: Any, hostile_publisher: None
) -> None:
    """Tests that markup in the settings' title and description and in a publisher's name
    and description is shown as text, never as markup."""
    value = {"TITLE": f"Shop {HOSTILE}", "DESCRIPTION": f"About {HOSTILE}"}
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "ASYNCAPI": value}):
        html = user_client("view_broker").get(url("asyncapi")).content.decode()
    assert HOSTILE not in html
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert f"Shop {escaped}" in html
    assert f"About {escaped}" in html
    assert f"desc {escaped}" in html
    assert f"evil{escaped}" in html


def test_the_downloads_are_the_document_in_json_and_yaml(
    user_client: Callable[..., Client],
) -> None:
    """Tests that the JSON and YAML files are attachments holding the same valid document."""
    client = user_client("view_broker")
    as_json = client.get(url("asyncapi_download", fmt="json"))
    as_yaml = client.get(url("asyncapi_download", fmt="yaml"))
    assert as_json["Content-Disposition"] == 'attachment; filename="asyncapi.json"'
    assert as_yaml["Content-Type"] == "application/yaml; charset=utf-8"
    document = json.loads(as_json.content)
    assert yaml.safe_load(as_yaml.content) == document
    assert asyncapi_errors(document) == []
    assert client.get(url("asyncapi_download", fmt="xml")).status_code == 404


def test_the_overview_links_to_the_page(user_client: Callable[..., Client]) -> None:
    """Tests that the inspector's overview links the AsyncAPI page."""
    html = user_client("view_broker").get(url("index")).content.decode()
    assert f'href="{url("asyncapi")}" id="rb-asyncapi-link"' in html
