"""The demo site's AsyncAPI document: valid AsyncAPI 3.0.0, equal to its committed
snapshot, and true to what the demo really sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse

from redis_broker.testing import wait_for
from tests.helpers import listen, read_ticket_events

from .helpers import SNAPSHOT, asyncapi_errors, demo_command, payload_errors

REGENERATE = (
    "REDIS_URL=redis://127.0.0.1:6379/0 python manage.py asyncapi "
    "--output tests/data/demo_asyncapi.json"
)


@pytest.fixture(scope="module")
def demo_document() -> dict[str, Any]:
    """Return the document ``manage.py asyncapi`` writes with the demo's settings."""
    done = demo_command()
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_the_demo_document_is_valid_asyncapi_3(demo_document: dict[str, Any]) -> None:
    """Tests that the demo's document validates against the official AsyncAPI 3.0.0 JSON
    Schema, with every channel, operation and schema the demo declares."""
    assert asyncapi_errors(demo_document) == []
    assert demo_document["asyncapi"] == "3.0.0"
    assert set(demo_document["channels"]) == {
        "channel.chat.room",
        "channel.online.room",
        "channel.presence.room",
        "channel.user.user_id",
        "list.demo.emails",
        "replies",
        "stream.demo.quotes",
        "stream.demo.tickets",
    }
    assert {"TicketEvent", "Quote", "demo.Ticket"} <= set(demo_document["components"]["schemas"])


def test_the_demo_document_matches_its_committed_snapshot(demo_document: dict[str, Any]) -> None:
    """Tests that tests/data/demo_asyncapi.json is what the code writes now, byte for byte."""
    written = json.dumps(demo_document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    committed = SNAPSHOT.read_text(encoding="utf-8")
    assert written == committed, (
        "The demo's AsyncAPI document changed. If the change is intended, write the "
        f"snapshot again: {REGENERATE}"
    )


def test_the_committed_snapshot_passes_its_own_check() -> None:
    """Tests that ``manage.py asyncapi --check`` passes against the committed snapshot."""
    done = demo_command("--check", str(SNAPSHOT))
    assert done.returncode == 0, done.stderr
    assert "No breaking change" in done.stderr


def test_the_command_exits_1_and_lists_a_break(tmp_path: Path) -> None:
    """Tests that ``--check`` against a document with one channel more exits with status 1
    and names that channel on stderr."""
    committed = json.loads(SNAPSHOT.read_text())
    committed["channels"]["stream.demo.refunds"] = {
        "address": "demo.refunds",
        "x-redis-kind": "stream",
    }
    path = tmp_path / "committed.json"
    path.write_text(json.dumps(committed))
    done = demo_command("--check", str(path))
    assert done.returncode == 1
    assert "stream 'demo.refunds' was removed." in done.stderr


@pytest.mark.django_db(transaction=True)
def test_what_the_demo_sends_matches_its_document(
    redis_client: redis.Redis, django_user_model: Any
) -> None:
    """Tests that a real ticket event, the notification ``notify`` broadcasts for it and
    the e-mail job the tickets view queues match their messages' schemas: declaring the
    types changed nothing on the wire, so checking payloads will not reject the demo's."""
    from demo_site.demo.consumers import notify
    from demo_site.demo.models import Ticket

    done = demo_command()
    document = json.loads(done.stdout)
    owner = django_user_model.objects.create_user("owner", password="x")
    pubsub, next_message = listen(redis_client, f"user.{owner.pk}")
    try:
        Ticket.objects.create(owner=owner, title="Printer on fire")
        (message,) = read_ticket_events(redis_client)
        event = {
            "type": message.type,
            "data": message.data,
            "event_id": message.event_id,
            "published_at": message.published_at,
        }
        stream = "stream.demo.tickets"
        assert payload_errors(document, stream, "model.demo.ticket", event) == []
        assert payload_errors(document, stream, "consume.notify", event) == []

        notify(message)
        notification = json.loads(wait_for(next_message, message="the notification")["data"])
        channel = "channel.user.user_id"
        assert notification["data"]["kind"] == "ticket"
        assert payload_errors(document, channel, "publish.ticket_notifications", notification) == []
        # The other publisher of the channel declares the other shape; it must not fit.
        assert payload_errors(document, channel, "publish.email_notifications", notification) != []

        client = Client()
        client.force_login(owner)
        ticket = Ticket.objects.get()
        client.post(reverse("update_ticket", args=[ticket.pk]), {"status": "resolved"})
        job = json.loads(redis_client.lpop("demo.emails"))
        assert payload_errors(document, "list.demo.emails", "publish.email_jobs", job) == []
        assert payload_errors(document, "list.demo.emails", "consume.send_email", job) == []
    finally:
        pubsub.close()
