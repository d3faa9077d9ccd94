"""The outbox page: readable rows, the offending key pointed out, and delete / retry actions."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client

from redis_broker import wire
from redis_broker.models import OutboxEvent
from redis_broker.outbox import OutboxRelay
from redis_broker.testing import free_port

from .helpers import url

pytestmark = pytest.mark.django_db


def stuck_rows(redis_client: redis.Redis, count: int = 2) -> list[OutboxEvent]:
    """Return ``count`` rows for ``orders`` that Redis refused: a list holds that name."""
    redis_client.rpush("orders", "a list, not a stream")
    rows = [
        OutboxEvent.objects.create(
            stream="orders", fields=wire.encode_entry({"order": n}, type="order.paid")
        )
        for n in range(count)
    ]
    with pytest.raises(redis.ResponseError):
        OutboxRelay().relay_batch()
    return rows


def test_outbox_page_shows_formatted_rows_and_points_at_the_wrong_type_key(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests payload previews, time-zoned timestamps, and the WRONGTYPE key linked and named."""
    rows = stuck_rows(redis_client)
    response = admin_client.get(url("outbox"))
    body = response.content.decode()
    assert response.context["per_stream"] == [("orders", 2, "list")]
    assert "a list, not a stream" in body
    assert "“orders” is a list, not a stream: inspect the key" in body
    assert f'href="{url("stream", stream="orders")}"' in body
    shown = response.context["rows"][0][0]
    assert shown.created.endswith(" UTC") and shown.created[:4].isdigit()
    assert shown.created in body
    assert shown.entry.line == '{"order":0}'
    assert "WRONGTYPE" in OutboxEvent.objects.get(id=rows[0].id).last_error


def test_outbox_page_still_shows_rows_while_redis_is_down(
    admin_client: Client, settings: Any
) -> None:
    """Tests that the outbox page reads the database and only notes that Redis is unreachable."""
    OutboxEvent.objects.create(stream="orders", fields=wire.encode_entry({"n": 1}))
    settings.REDIS_BROKER = {
        **settings.REDIS_BROKER,
        "URL": f"redis://127.0.0.1:{free_port()}/0",
        "RETRIES": 0,
    }
    response = admin_client.get(url("outbox"))
    assert response.status_code == 200
    assert "Redis cannot be reached, so the streams' keys were not checked" in (
        response.content.decode()
    )
    assert response.context["per_stream"] == [("orders", 1, "")]


def test_delete_outbox_rows_confirms_then_deletes_and_logs(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests the delete action: GET lists the rows and changes nothing, POST deletes them."""
    rows = stuck_rows(redis_client, 3)
    ids = [str(row.id) for row in rows[:2]]
    confirm = admin_client.get(url("delete_outbox"), {"ids": ids})
    assert confirm.status_code == 200
    assert [row.id for row in confirm.context["items"]] == [row.id for row in rows[:2]]
    assert "will never reach Redis" in confirm.content.decode()
    assert OutboxEvent.objects.count() == 3
    response = admin_client.post(url("delete_outbox"), {"ids": ids})
    assert response.status_code == 302
    assert response["Location"] == url("outbox")
    assert list(OutboxEvent.objects.values_list("id", flat=True)) == [rows[2].id]
    entry = LogEntry.objects.get()
    assert entry.object_repr == "Deleted 2 outbox events (orders)"
    assert entry.object_id == "outbox/"
    assert admin_client.get(entry.get_admin_url())["Location"] == url("outbox")


def test_retry_outbox_rows_clears_their_errors_and_the_relay_sends_them(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests retry: attempts and error are cleared, and once the key is fixed they are relayed."""
    rows = stuck_rows(redis_client)
    redis_client.delete("orders")  # the operator removed the offending list
    response = admin_client.post(url("retry_outbox"), {"ids": [row.id for row in rows]})
    assert response.status_code == 302
    assert set(OutboxEvent.objects.values_list("attempts", "last_error")) == {(0, "")}
    assert LogEntry.objects.get().object_repr == "Retried 2 outbox events (orders)"
    assert OutboxRelay().relay_batch() == 2
    assert [f["event_id"] for _, f in redis_client.xrange("orders")] == [
        row.fields["event_id"] for row in rows
    ]


def test_outbox_actions_need_change_permission_and_csrf(
    viewer: Client, admin_user: User, redis_client: redis.Redis
) -> None:
    """Tests that view-only staff get 403 and a POST without CSRF token is refused: rows stay."""
    rows = stuck_rows(redis_client)
    ids = [row.id for row in rows]
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    for name in ("delete_outbox", "retry_outbox"):
        assert viewer.get(url(name), {"ids": ids}).status_code == 403
        assert viewer.post(url(name), {"ids": ids}).status_code == 403
        assert strict.post(url(name), {"ids": ids}).status_code == 403
    assert OutboxEvent.objects.count() == 2
    assert all(row.attempts == 1 for row in OutboxEvent.objects.all())
    assert not LogEntry.objects.exists()


def test_outbox_ids_that_are_not_row_ids_are_refused(admin_client: Client) -> None:
    """Tests that the selection accepts row ids only: anything else re-shows the form."""
    OutboxEvent.objects.create(stream="orders", fields=wire.encode_entry({"n": 1}))
    response = admin_client.post(url("delete_outbox"), {"ids": ["1; DROP TABLE", "-3"]})
    assert response.status_code == 200
    assert "is not a valid id" in response.content.decode()
    assert OutboxEvent.objects.count() == 1
