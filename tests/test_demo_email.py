"""The demo's e-mail queue without a browser: the tickets view pushes a job after its
commit, and the ``send_email`` list consumer sends it through the demo's mail backend
(``MAILERS`` on Django 6.1, ``EMAIL_BACKEND`` before) and rings the owner's bell.

The browser test of the same path runs once, in CI's first corner; this one runs on
every Python and Django CI tests, since the mail settings are what changed between them.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse

from redis_broker import wire
from redis_broker.naming import list_consumers_name
from tests.helpers import manage

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_ticket_status_change_sends_one_email_and_rings_the_owners_bell(
    redis_client: redis.Redis, django_user_model: Any
) -> None:
    """Tests that resolving a ticket queues one job on ``demo.emails`` after the commit,
    that ``runconsumers --burst send_email`` sends it to the owner (a ``SentEmail`` row
    written by the demo's mail backend) and leaves nothing queued, and that the owner's
    durable user channel carries the "E-mail sent" notification."""
    from demo_site.demo.models import SentEmail, Ticket

    alice = django_user_model.objects.create_user("alice", password="alice")
    ticket = Ticket.objects.create(owner=alice, title="Printer on fire")
    client = Client()
    client.force_login(alice)

    response = client.post(
        reverse("update_ticket", args=[ticket.pk]), {"status": Ticket.Status.RESOLVED}
    )

    assert response.status_code == 302
    assert redis_client.llen("demo.emails") == 1
    # A process of its own, as ``make demo`` runs it: the test process's mail goes to
    # Django's test outbox, the worker's through the demo's backend.
    worker = manage("runconsumers", "--burst", "send_email")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    subject = f"Ticket #{ticket.pk} is now Resolved"
    sent = SentEmail.objects.get()
    assert (sent.to, sent.subject) == ("alice@example.com", subject)
    assert redis_client.llen("demo.emails") == 0
    assert redis_client.llen("demo.emails:dlq") == 0
    assert not redis_client.exists(list_consumers_name("demo.emails"))
    notifications = [
        wire.decode_entry(fields).data for _id, fields in redis_client.xrange(f"user.{alice.pk}")
    ]
    assert notifications[-1]["text"] == f"E-mail sent: {subject}"
    assert notifications[-1]["url"] == reverse("emails")
