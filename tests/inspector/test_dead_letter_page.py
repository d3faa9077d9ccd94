"""The dead-letters page shows the whole error with its traceback, and malformed entries as
their raw fields."""

from __future__ import annotations

import pytest
import redis
from django.test import Client

from redis_broker import wire

from .helpers import DLQ, STREAM, url

pytestmark = pytest.mark.django_db

TRACE = """Traceback (most recent call last):
  File "shop/consumers.py", line 12, in charge
    gateway.charge(order)
ValueError: card <declined> & blocked"""


def test_dead_letter_shows_error_and_collapsible_traceback_escaped(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that the stored traceback is shown whole, inside <details>, and escaped."""
    fields = wire.encode_entry({"order": 7}, type="order.paid")
    redis_client.xadd(
        DLQ,
        wire.dead_letter_fields(
            fields,
            original_stream=STREAM,
            original_id="1-0",
            error="ValueError: card <declined> & blocked",
            delivery_count=5,
            traceback=TRACE,
        ),
    )
    response = admin_client.get(url("dead_letters", stream=STREAM))
    (entry,) = response.context["page"].entries
    assert entry.traceback == TRACE
    assert wire.TRACEBACK not in dict(entry.extra)  # a known field, not a foreign one
    body = response.content.decode()
    assert '<details class="rb-more rb-traceback"><summary>Traceback</summary>' in body
    assert "File &quot;shop/consumers.py&quot;, line 12, in charge" in body
    assert "ValueError: card &lt;declined&gt; &amp; blocked" in body
    assert "card <declined>" not in body
    assert '<th scope="col" class="rb-wide">Payload</th>' in body


def test_a_long_error_is_shown_whole(admin_client: Client, redis_client: redis.Redis) -> None:
    """Tests that the error field is no longer cut at 600 characters on the page."""
    error = "RuntimeError: " + "e" * 3000
    redis_client.xadd(
        DLQ,
        wire.dead_letter_fields(
            wire.encode_entry(1),
            original_stream=STREAM,
            original_id="1-0",
            error=error,
            delivery_count=1,
        ),
    )
    assert error in admin_client.get(url("dead_letters", stream=STREAM)).content.decode()


def test_malformed_dead_letter_is_shown_as_its_raw_fields(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that an entry without readable data shows every field as stored, escaped."""
    redis_client.xadd(
        DLQ,
        {
            "body": "<b>not our format</b>",
            wire.ORIGINAL_STREAM: STREAM,
            wire.ORIGINAL_ID: "5-0",
            wire.ERROR: "MalformedEntry: no data field",
            wire.DELIVERY_COUNT: "1",
        },
    )
    response = admin_client.get(url("dead_letters", stream=STREAM))
    (entry,) = response.context["page"].entries
    assert entry.payload_problem == "the entry has no data field"
    assert ("body", "<b>not our format</b>") in entry.raw_fields
    body = response.content.decode()
    assert "All fields as stored" in body
    assert '<th scope="row">body</th><td>&lt;b&gt;not our format&lt;/b&gt;</td>' in body
    assert "<b>not our format</b>" not in body
