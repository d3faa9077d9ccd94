"""Each inspector action does what it says in Redis, writes a LogEntry and reports."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.test import Client

from redis_broker import wire
from redis_broker.models import Broker
from redis_broker.naming import dead_letter_name, prefixed
from redis_broker.testing import wait_for
from tests.helpers import listen

from .helpers import DLQ, GROUP, STREAM, Seeded, url

pytestmark = pytest.mark.django_db


def only_log_entry(stream: str = STREAM) -> LogEntry:
    """Return the single LogEntry written, checking it is on the Broker content type."""
    entry = LogEntry.objects.get()
    assert entry.content_type == ContentType.objects.get_for_model(Broker)
    assert entry.object_id == stream
    assert entry.action_flag == CHANGE
    return entry


def success_messages(response: object) -> list[str]:
    """Return the texts of the success messages set on ``response``'s request."""
    return [m.message for m in get_messages(response.wsgi_request) if m.level_tag == "success"]  # type: ignore[attr-defined]


def test_ack_acknowledges_selected_pending_entries(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that ack removes exactly the selected entries from the group's pending list."""
    target = url("ack", stream=STREAM, group=GROUP)
    response = admin_client.post(target, {"ids": seeded.pending[:2]})
    assert response.status_code == 302
    assert response["Location"] == url("pending", stream=STREAM, group=GROUP)
    left = [p["message_id"] for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)]
    assert left == seeded.pending[2:]
    assert "Acknowledged 2 of 2" in only_log_entry().change_message
    assert any("Acknowledged 2 of 2" in m for m in success_messages(response))


def test_claim_gives_entries_to_chosen_consumer_keeping_delivery_counts(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that claim moves entries to the consumer without counting a new delivery."""
    response = admin_client.post(
        url("claim", stream=STREAM, group=GROUP), {"ids": seeded.pending[:3], "consumer": "c9"}
    )
    assert response.status_code == 302
    rows = redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)
    owners = {p["message_id"]: p["consumer"] for p in rows}
    assert [owners[i] for i in seeded.pending] == ["c9", "c9", "c9", "c1"]
    assert {p["times_delivered"] for p in rows} == {1}
    assert "for consumer c9" in only_log_entry().change_message


def test_requeue_appends_dead_letters_to_original_stream_and_removes_them(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that requeue re-publishes with the same event_id and empties the DLQ entries."""
    length = redis_client.xlen(STREAM)
    response = admin_client.post(url("requeue", stream=STREAM), {"ids": seeded.dead})
    assert response.status_code == 302
    assert response["Location"] == url("dead_letters", stream=STREAM)
    assert redis_client.xlen(DLQ) == 0
    assert redis_client.xlen(STREAM) == length + 2
    newest = redis_client.xrevrange(STREAM, count=2)
    requeued = [fields for _, fields in reversed(newest)]
    assert [f[wire.EVENT_ID] for f in requeued] == seeded.dead_event_ids
    assert all(wire.ERROR not in f and wire.ORIGINAL_ID not in f for f in requeued)
    assert "Requeued 2 entries" in only_log_entry().change_message


def test_requeue_honours_key_prefix(
    admin_client: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Tests that requeue writes to the prefixed original stream, however the field is stored."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    fields = wire.encode_entry({"x": 1}, type="t")
    dead = redis_client.xadd(
        prefixed("app:", dead_letter_name("jobs", ":dlq")),  # {app:jobs}:dlq on a cluster
        wire.dead_letter_fields(
            fields,
            original_stream=prefixed("app:", "jobs"),
            original_id="1-0",
            error="e",
            delivery_count=1,
        ),
    )
    response = admin_client.post(url("requeue", stream="jobs"), {"ids": [dead]})
    assert response.status_code == 302
    [(_, copy)] = redis_client.xrange("app:jobs")
    assert copy[wire.EVENT_ID] == fields[wire.EVENT_ID]
    assert not redis_client.exists("app:app:jobs")


def test_delete_removes_selected_entries(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that delete removes the selected entries and nothing else."""
    response = admin_client.post(url("delete", stream=STREAM), {"ids": seeded.ids[-2:]})
    assert response.status_code == 302
    assert [i for i, _ in redis_client.xrange(STREAM)] == seeded.ids[:-2]
    assert "Deleted 2 of 2" in only_log_entry().change_message


def test_delete_from_dead_letter_stream_returns_to_dead_letters_page(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that deleting dead letters works on the DLQ and redirects to its page."""
    response = admin_client.post(url("delete", stream=DLQ), {"ids": seeded.dead[:1]})
    assert response["Location"] == url("dead_letters", stream=STREAM)
    assert [i for i, _ in redis_client.xrange(DLQ)] == seeded.dead[1:]
    only_log_entry(DLQ)


def test_trim_keeps_the_newest_entries(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that trim to N leaves exactly the newest N entries (exact trimming)."""
    response = admin_client.post(url("trim", stream=STREAM), {"maxlen": 3})
    assert response.status_code == 302
    assert [i for i, _ in redis_client.xrange(STREAM)] == seeded.ids[-3:]
    assert "7 removed" in only_log_entry().change_message


def test_delete_consumer_removes_it_from_the_group(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that deleting a consumer removes it and reports its dropped pending entries."""
    response = admin_client.post(url("delete_consumer", stream=STREAM, group=GROUP, consumer="c1"))
    assert response.status_code == 302
    assert redis_client.xinfo_consumers(STREAM, GROUP) == []
    assert "4 pending entries were dropped" in only_log_entry().change_message


def test_create_and_destroy_group(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that a group can be created at a chosen position and destroyed again."""
    response = admin_client.post(
        url("create_group", stream=STREAM), {"group": "audit", "start": seeded.ids[4]}
    )
    assert response.status_code == 302
    groups = {g["name"]: g for g in redis_client.xinfo_groups(STREAM)}
    assert groups["audit"]["last-delivered-id"] == seeded.ids[4]
    response = admin_client.post(url("destroy_group", stream=STREAM, group="audit"))
    assert response.status_code == 302
    assert "audit" not in {g["name"] for g in redis_client.xinfo_groups(STREAM)}
    messages = list(LogEntry.objects.order_by("id").values_list("change_message", flat=True))
    assert messages[0].startswith("Created group audit")
    assert messages[1].startswith("Destroyed group audit")


def test_creating_an_existing_group_reports_an_error_and_logs_nothing(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that a Redis refusal (BUSYGROUP) becomes an error message, not a 500 or a log."""
    response = admin_client.post(url("create_group", stream=STREAM), {"group": GROUP, "start": "$"})
    assert response.status_code == 302
    errors = [m.message for m in get_messages(response.wsgi_request) if m.level_tag == "error"]
    assert len(errors) == 1
    assert "BUSYGROUP" in errors[0]
    assert not LogEntry.objects.exists()


def test_invalid_ids_are_rejected_without_touching_redis(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that ids that are not entry ids re-show the form with an error."""
    response = admin_client.post(url("delete", stream=STREAM), {"ids": ["+", "1-0 2-0"]})
    assert response.status_code == 200
    assert "is not a stream entry id" in response.content.decode()
    assert redis_client.xlen(STREAM) == 10
    assert not LogEntry.objects.exists()


def test_log_entry_link_leads_to_the_stream_page(admin_client: Client, seeded: Seeded) -> None:
    """Tests that the admin's "recent actions" link of an inspector action opens the stream."""
    admin_client.post(url("trim", stream=STREAM), {"maxlen": 5})
    link = LogEntry.objects.get().get_admin_url()
    response = admin_client.get(link)
    assert response.status_code == 302
    assert response["Location"] == url("stream", stream=STREAM)


@pytest.mark.django_db
def test_requeue_publishes_a_channel_consumers_dead_letter_on_its_channel_again(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a channel message's dead letter (``original_kind`` "channel") goes back
    to its Pub/Sub channel, as the message it was, and never into a stream or list
    named after the channel."""
    channel = "prices.typed"
    message = wire.encode_message({"symbol": 7}, type="price", event_id="e-1")
    fields = wire.dead_letter_fields(
        wire.decode_message(message).fields(),
        original_stream=channel,
        original_id="",
        error="validation: $.symbol: Expected `str`, got `int`",
        delivery_count=1,
        original_kind="channel",
    )
    dlq = dead_letter_name(channel, ":dlq")
    dead_id = redis_client.xadd(dlq, fields)
    subscriber, next_message = listen(redis_client, channel)  # SSUBSCRIBE on a cluster

    response = admin_client.post(url("requeue", stream=channel), {"ids": [dead_id]})

    assert response.status_code == 302
    received = wait_for(next_message, message="the requeued message")
    subscriber.close()
    assert received["type"] in ("message", "smessage")
    again = wire.decode_message(received["data"])
    assert (again.data, again.type, again.event_id) == ({"symbol": 7}, "price", "e-1")
    assert redis_client.xlen(dlq) == 0
    assert redis_client.exists(channel) == 0  # no stream or list made of the channel's name
