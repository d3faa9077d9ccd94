"""The pending page shows what is pending (type, payload, a link to the entry), retries it
now, and keeps an empty selection on the list."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.test import Client

from redis_broker import wire

from .helpers import DLQ, GROUP, STREAM, Seeded, snapshot, url

pytestmark = pytest.mark.django_db


def message_texts(response: Any, level: str) -> list[str]:
    """Return the texts of the messages of ``level`` ("success", "warning"…) set on a response."""
    return [m.message for m in get_messages(response.wsgi_request) if m.level_tag == level]


def test_pending_page_shows_type_payload_preview_and_links_each_id_to_its_entry(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that each pending row names its type, previews its payload and links its entry."""
    response = admin_client.get(url("pending", stream=STREAM, group=GROUP))
    rows = response.context["page"].entries
    assert [p.entry.type for p in rows] == ["order.created"] * 4
    assert rows[0].entry.line == '{"n":0}'
    body = response.content.decode()
    first = seeded.pending[0]
    assert f"{url('stream', stream=STREAM)}?start={first}&amp;end={first}" in body
    assert '<code class="rb-line">{&quot;n&quot;:0}</code>' in body
    linked = admin_client.get(url("stream", stream=STREAM), {"start": first, "end": first})
    assert [e.id for e in linked.context["page"].entries] == [first]


def test_pending_page_reads_the_entries_in_one_pipelined_round_trip(
    admin_client: Client, seeded: Seeded, sends: list[int]
) -> None:
    """Tests the bound: the previews cost one round trip for the page, not one per entry."""
    admin_client.get(url("pending", stream=STREAM, group=GROUP))
    with_previews = len(sends)
    sends.clear()
    admin_client.get(url("pending", stream=STREAM, group=GROUP), {"consumer": "nobody"})
    assert with_previews - len(sends) <= 1


def test_pending_entry_deleted_from_the_stream_says_so(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that a pending id whose entry was deleted shows as such instead of a payload."""
    redis_client.xdel(STREAM, seeded.pending[0])
    response = admin_client.get(url("pending", stream=STREAM, group=GROUP))
    assert response.context["page"].entries[0].entry is None
    assert "No longer in the stream" in response.content.decode()


def test_retry_now_makes_entries_due_for_the_groups_next_reclaim_only(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that retry keeps owner and count, and an XAUTOCLAIM takes the entries at once."""
    target = url("retry", stream=STREAM, group=GROUP)
    response = admin_client.post(target, {"ids": seeded.pending[:2]})
    assert response.status_code == 302
    assert response["Location"] == url("pending", stream=STREAM, group=GROUP)
    rows = {p["message_id"]: p for p in redis_client.xpending_range(STREAM, GROUP, "-", "+", 10)}
    assert {rows[i]["consumer"] for i in seeded.pending} == {"c1"}
    assert {rows[i]["times_delivered"] for i in seeded.pending} == {1}
    # What a worker's reclaim scan does, with the default CLAIM_IDLE_MS of 60 s:
    _, claimed, _ = redis_client.xautoclaim(STREAM, GROUP, "worker-2", min_idle_time=60_000)
    assert [entry_id for entry_id, _ in claimed] == seeded.pending[:2]
    assert redis_client.xlen(STREAM) == 10  # no copy: other groups see nothing again
    entry = LogEntry.objects.get()
    assert entry.object_repr == f"Retried 2 entries of {STREAM} now (group {GROUP})"
    assert "for redelivery" in entry.change_message
    assert any("Marked 2 of 2" in m for m in message_texts(response, "success"))


def test_retry_confirmation_lists_the_entries_with_their_payloads(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that the retry confirmation page shows what will be delivered again."""
    response = admin_client.get(url("retry", stream=STREAM, group=GROUP), {"ids": seeded.pending})
    assert response.status_code == 200
    assert [p.entry.type for p in response.context["items"]] == ["order.created"] * 4
    assert "Deliver these entries" in response.content.decode()


@pytest.mark.parametrize(
    ("name", "kwargs", "back", "message"),
    [
        ("ack", {"stream": STREAM, "group": GROUP}, "pending", "Select at least one entry."),
        ("claim", {"stream": STREAM, "group": GROUP}, "pending", "Select at least one entry."),
        ("retry", {"stream": STREAM, "group": GROUP}, "pending", "Select at least one entry."),
        ("delete", {"stream": STREAM}, "stream", "Select at least one entry."),
        ("requeue", {"stream": STREAM}, "dead_letters", "Select at least one entry."),
        ("delete", {"stream": DLQ}, "dead_letters", "Select at least one entry."),
        ("delete_outbox", {}, "outbox", "Select at least one row."),
        ("retry_outbox", {}, "outbox", "Select at least one row."),
    ],
)
def test_an_empty_selection_goes_back_to_the_list_with_a_message(
    admin_client: Client,
    seeded: Seeded,
    redis_client: redis.Redis,
    name: str,
    kwargs: dict[str, str],
    back: str,
    message: str,
) -> None:
    """Tests that pressing an action with nothing ticked returns to the list, saying why."""
    before = snapshot(redis_client)
    back_kwargs = {"stream": STREAM, **({"group": GROUP} if back == "pending" else {})}
    expected = url(back, **(back_kwargs if back != "outbox" else {}))
    for method in (admin_client.get, admin_client.post):
        data = {"ids": [""]} if method == admin_client.post else {}
        response = method(url(name, **kwargs), data, follow=True)
        assert response.redirect_chain == [(expected, 302)], (name, method)
        assert response.status_code == 200  # the list, showing the message once
        assert response.content.decode().count(message) == 1
    assert snapshot(redis_client) == before
    assert not LogEntry.objects.exists()


def test_every_table_with_checkboxes_has_a_select_all_box(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that the stream, pending, dead-letter and outbox tables offer "select all"."""
    from redis_broker.models import OutboxEvent

    OutboxEvent.objects.create(stream=STREAM, fields=wire.encode_entry({"n": 1}))
    for name, kwargs in [
        ("stream", {"stream": STREAM}),
        ("pending", {"stream": STREAM, "group": GROUP}),
        ("dead_letters", {"stream": STREAM}),
        ("outbox", {}),
    ]:
        body = admin_client.get(url(name, **kwargs)).content.decode()
        assert body.count('class="rb-select-all"') == 1, name
        assert "redis_broker/inspector.js" in body, name
