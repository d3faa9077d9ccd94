"""One timestamp format with its time zone everywhere, what "Recent actions" says, and the
admin index's link to the inspector."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import redis
from django.test import Client, override_settings
from django.urls import reverse

from redis_broker import wire
from redis_broker.inspector.queries import format_timestamp
from redis_broker.models import OutboxEvent

from .helpers import GROUP, STREAM, Seeded, url

pytestmark = pytest.mark.django_db

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]{3,4}")
#: Other ways a time could slip through: raw ISO (published_at) or Django's default format.
OTHER_FORMATS = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d|[A-Z][a-z]{2}\. \d{1,2}, \d{4}|a\.m\.|p\.m\."
)


def test_timestamps_are_formatted_one_way_in_the_current_time_zone() -> None:
    """Tests the one helper: milliseconds and datetimes alike, with the zone's abbreviation."""
    ms = 1_700_000_000_000
    assert format_timestamp(ms) == "2023-11-14 22:13:20 UTC"
    assert format_timestamp(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == (
        "2023-11-14 22:13:20 UTC"
    )
    with override_settings(TIME_ZONE="Europe/Paris"):
        assert format_timestamp(ms) == "2023-11-14 23:13:20 CET"
    assert format_timestamp(None) == "–"


def test_every_page_shows_times_in_the_one_format(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that entry ids, published_at, idle times and outbox rows all read the same way."""
    OutboxEvent.objects.create(stream=STREAM, fields=wire.encode_entry({"n": 1}, type="t"))
    first = format_timestamp(wire.entry_id_ms(seeded.ids[0]))
    pages = {
        "broker_changelist": {},
        "stream": {"stream": STREAM},
        "groups": {"stream": STREAM},
        "pending": {"stream": STREAM, "group": GROUP},
        "dead_letters": {"stream": STREAM},
        "outbox": {},
    }
    for name, kwargs in pages.items():
        body = admin_client.get(url(name, **kwargs)).content.decode()
        assert STAMP.search(body), name
        assert not OTHER_FORMATS.search(body), (name, OTHER_FORMATS.search(body))
    overview = admin_client.get(url("broker_changelist")).content.decode()
    assert first in overview  # the oldest entry's id, as a time
    pending = admin_client.get(url("pending", stream=STREAM, group=GROUP))
    row = pending.context["page"].entries[0]
    assert row.delivered_at in pending.content.decode()
    assert row.time == format_timestamp(wire.entry_id_ms(row.id))


def test_recent_actions_say_what_was_done(admin_client: Client, seeded: Seeded) -> None:
    """Tests that the admin index's "Recent actions" lists each action as a sentence."""
    admin_client.post(url("ack", stream=STREAM, group=GROUP), {"ids": seeded.pending[:3]})
    admin_client.post(url("trim", stream=STREAM), {"maxlen": 8})
    admin_client.post(url("create_group", stream=STREAM), {"group": "audit", "start": "$"})
    body = admin_client.get(reverse("admin:index")).content.decode()
    assert f"Acked 3 entries of {STREAM} (group {GROUP})" in body
    assert f"Trimmed {STREAM} to 8 entries (2 removed)" in body
    assert f"Created group audit on {STREAM}" in body


def test_admin_index_offers_view_not_change_for_the_inspector(
    admin_client: Client, operator: Client
) -> None:
    """Tests that the Redis broker row links its pages with "View", even for change_broker."""
    changelist = url("broker_changelist")
    for client in (admin_client, operator):
        body = client.get(reverse("admin:index")).content.decode()
        row = re.search(r'<tr class="model-broker">.*?</tr>', body, re.S)
        assert row is not None
        assert re.search(rf'<a href="{changelist}" class="viewlink"[^>]*>View</a>', row.group(0))
        assert "changelink" not in row.group(0)
        assert "addlink" not in row.group(0)
    # Acting still works: the index's "View" says nothing of the actions' permission.
    assert operator.get(url("trim", stream=STREAM)).status_code != 403
