"""What the inspector pages show, how they page, and how they fail."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.test import Client, override_settings
from django.urls import reverse
from redis.commands.core import StreamCommands

from redis_broker import wire
from redis_broker.inspector import queries
from redis_broker.inspector.nodes import every_node
from redis_broker.models import OutboxEvent
from redis_broker.naming import prefixed
from redis_broker.testing import free_port, wait_for

from .helpers import DLQ, GROUP, PAGES, STREAM, Seeded, raw_client, url

pytestmark = pytest.mark.django_db


def test_overview_shows_server_facts_and_streams(admin_client: Client, seeded: Seeded) -> None:
    """Tests that the overview lists each stream with length, groups and dead letters."""
    assert url("index") == url("broker_changelist") == "/admin/redis_broker/broker/"
    response = admin_client.get(url("index"))
    assert response.status_code == 200
    streams = {s.name: s for s in response.context["listing"].streams}
    assert streams[STREAM].length == 10
    assert streams[STREAM].groups == 1
    assert streams[STREAM].dead_letters == 2
    assert streams[DLQ].dead_letter_of == STREAM
    assert response.context["server"].version
    body = response.content.decode()
    assert "Redis version" in body
    assert url("dead_letters", stream=STREAM) in body


def test_overview_lists_only_streams_under_key_prefix(
    admin_client: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Tests that KEY_PREFIX limits the listing and is stripped from the names shown."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    redis_client.xadd(prefixed("app:", STREAM), {"data": "1"})
    # {app:orders}:dlq on a cluster: the prefix goes inside the hash tag.
    redis_client.xadd(prefixed("app:", DLQ), {"data": "1"})
    redis_client.xadd("other", {"data": "1"})
    redis_client.xadd(prefixed("ap:", DLQ), {"data": "1"})  # another prefix's
    redis_client.set("app:not-a-stream", "x")
    response = admin_client.get(url("broker_changelist"))
    streams = response.context["listing"].streams
    assert [s.name for s in streams] == [STREAM, DLQ]
    assert (streams[0].dead_letters, streams[1].dead_letter_of) == (1, STREAM)
    assert admin_client.get(url("stream", stream=STREAM)).status_code == 200
    assert len(admin_client.get(url("dead_letters", stream=STREAM)).context["page"].entries) == 1


def test_stream_page_shows_newest_entries_first_as_indented_json(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that entries come newest first and payloads are pretty-printed."""
    response = admin_client.get(url("stream", stream=STREAM))
    entries = response.context["page"].entries
    assert [e.id for e in entries] == seeded.ids[::-1]
    assert entries[0].payload == '{\n  "n": 9\n}'
    assert entries[0].type == "order.created"


def test_script_payload_is_shown_escaped(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that a hostile payload, type, error and field name are escaped on every page."""
    evil = "<script>alert(1)</script>"
    fields = wire.encode_entry(evil, type=evil)
    redis_client.xadd(STREAM, fields | {evil: evil})
    redis_client.xadd(
        DLQ,
        wire.dead_letter_fields(
            fields, original_stream=STREAM, original_id="1-0", error=evil, delivery_count=1
        ),
    )
    for page in ("stream", "dead_letters"):
        body = admin_client.get(url(page, stream=STREAM)).content.decode()
        assert evil not in body, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, page


def test_long_payload_is_folded_with_a_details_element(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a long payload shows a one-line preview and the rest inside <details>."""
    redis_client.xadd(STREAM, wire.encode_entry({"text": "x" * 5000}))
    body = admin_client.get(url("stream", stream=STREAM)).content.decode()
    assert '<details class="rb-fold"><summary title="Show the whole payload' in body
    assert '<code class="rb-line">{&quot;text&quot;:&quot;' + "x" * 100 in body
    assert "x" * 5000 in body  # all of it is there, folded


def test_stream_pages_follow_cursors_and_read_one_page_only(
    admin_client: Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests cursor paging both ways, and that a page asks Redis for count + 1 entries only."""
    ids = [redis_client.xadd(STREAM, {"data": str(n)}) for n in range(60)]
    counts: list[int] = []
    # Where the method lives for both clients' pipelines (a cluster's included).
    original = StreamCommands.xrevrange

    def spy(self: Any, name: Any, max: str = "+", min: str = "-", count: Any = None) -> Any:
        counts.append(count)
        return original(self, name, max, min, count)

    monkeypatch.setattr(StreamCommands, "xrevrange", spy)
    first = admin_client.get(url("stream", stream=STREAM), {"count": 25})
    assert [e.id for e in first.context["page"].entries] == ids[:-26:-1]
    assert first.context["newer_url"] is None
    second = admin_client.get(first.context["older_url"])
    assert [e.id for e in second.context["page"].entries] == ids[-26:-51:-1]
    third = admin_client.get(second.context["older_url"])
    assert [e.id for e in third.context["page"].entries] == ids[9::-1]
    assert third.context["older_url"] is None
    back = admin_client.get(third.context["newer_url"])
    assert [e.id for e in back.context["page"].entries] == ids[-26:-51:-1]
    assert counts and set(counts) == {26}


def test_id_range_filter_limits_entries(admin_client: Client, seeded: Seeded) -> None:
    """Tests that the From/To id filter shows only entries in the inclusive range."""
    response = admin_client.get(
        url("stream", stream=STREAM), {"start": seeded.ids[2], "end": seeded.ids[5]}
    )
    assert [e.id for e in response.context["page"].entries] == seeded.ids[5:1:-1]


def test_invalid_filter_is_reported_not_sent_to_redis(admin_client: Client, seeded: Seeded) -> None:
    """Tests that a malformed id in the filter shows an error and the unfiltered page."""
    response = admin_client.get(url("stream", stream=STREAM), {"start": "1-0 OR 1"})
    assert response.status_code == 200
    assert "is not a stream entry id" in response.content.decode()
    assert len(response.context["page"].entries) == 10


def test_groups_page_shows_pending_lag_and_consumers(admin_client: Client, seeded: Seeded) -> None:
    """Tests that a group shows pending, lag (undelivered) and its consumers' pending."""
    response = admin_client.get(url("groups", stream=STREAM))
    [group] = response.context["groups"]
    assert (group.name, group.pending, group.lag) == (GROUP, 4, 6)
    assert group.last_delivered_id == seeded.pending[-1]
    assert [(c.name, c.pending) for c in group.consumers] == [("c1", 4)]


def test_pending_page_is_paged_and_filtered_by_consumer(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests XPENDING paging with an exclusive cursor, and the consumer filter."""
    redis_client.xclaim(STREAM, GROUP, "c2", 0, [seeded.pending[0]])
    first = admin_client.get(url("pending", stream=STREAM, group=GROUP), {"count": 25})
    entries = first.context["page"].entries
    assert [p.id for p in entries] == seeded.pending
    assert entries[0].consumer == "c2"
    assert entries[0].deliveries == 2
    assert first.context["next_url"] is None
    only_c1 = admin_client.get(url("pending", stream=STREAM, group=GROUP), {"consumer": "c1"})
    assert [p.id for p in only_c1.context["page"].entries] == seeded.pending[1:]
    paged = admin_client.get(url("pending", stream=STREAM, group=GROUP), {"count": 25})
    assert paged.context["next_url"] is None
    with raw_client(redis_broker_url) as raw:
        page = queries.read_pending(raw, prefix="", name=STREAM, group=GROUP, count=3)
        assert [p.id for p in page.entries] == seeded.pending[:3]
        assert page.next_after == seeded.pending[2]
        rest = queries.read_pending(
            raw, prefix="", name=STREAM, group=GROUP, count=3, after=page.next_after
        )
        assert [p.id for p in rest.entries] == seeded.pending[3:]
        assert rest.next_after is None


def test_dead_letter_page_shows_error_and_original_ids(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that dead letters show their error, original stream and original id."""
    response = admin_client.get(url("dead_letters", stream=STREAM))
    entries = response.context["page"].entries
    assert [e.id for e in entries] == seeded.dead[::-1]
    assert entries[-1].error == "ValueError: boom 0"
    assert entries[-1].original_stream == STREAM
    assert entries[-1].original_id == seeded.ids[0]
    assert "ValueError: boom 0" in response.content.decode()


#: Payloads no reader can decode: nested 1,000 deep (with markup to escape inside), an
#: integer past Python's digits limit, a lone surrogate no UTF-8 page can show.
POISON_PAYLOADS = [
    "[" * 1000 + '"<b>deep</b>"' + "]" * 1000,
    "9" * 5000,
    '"\\ud800"',
]


@pytest.mark.parametrize("page", ["stream", "dead_letters"])
def test_undecodable_payloads_are_shown_as_raw_escaped_text(
    admin_client: Client, redis_client: redis.Redis, page: str
) -> None:
    """Tests that a stream and a dead-letter stream holding payloads no reader can decode
    render (200), showing each one's raw text, escaped, with the reason."""
    key = STREAM if page == "stream" else DLQ
    for payload in POISON_PAYLOADS:
        fields = {"data": payload, "type": "poison", "event_id": "e", "published_at": ""}
        redis_client.xadd(key, fields | {"original_stream": STREAM, "original_id": "1-0"})
    response = admin_client.get(url(page, stream=STREAM))
    assert response.status_code == 200
    entries = response.context["page"].entries
    assert [e.payload for e in entries] == POISON_PAYLOADS[::-1]
    assert [e.payload_is_json for e in entries] == [False] * 3
    body = response.content.decode()
    assert "&lt;b&gt;deep&lt;/b&gt;" in body
    assert "<b>deep</b>" not in body
    assert "nested deeper than 100 levels" in body
    assert "\\ud800" in body


def test_dead_letter_page_of_a_healthy_stream_is_empty_not_404(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a stream without dead letters has an empty dead-letter page."""
    redis_client.xadd("healthy", {"data": "1"})
    response = admin_client.get(url("dead_letters", stream="healthy"))
    assert response.status_code == 200
    assert response.context["page"].entries == []


def test_pubsub_page_lists_channels_with_subscriber_counts(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that active channels are listed with their PUBSUB NUMSUB counts."""
    subscribers = [redis_client.pubsub() for _ in range(2)]
    try:
        for pubsub in subscribers:
            pubsub.subscribe("chat.lobby")
        wait_for(
            lambda: redis_client.pubsub_numsub("chat.lobby", **every_node(redis_client))[0][1] == 2,
            timeout=5,
            message="two subscribers",
        )
        response = admin_client.get(url("pubsub"))
        channels = {c.name: c.subscribers for c in response.context["info"].channels}
        assert channels == {"chat.lobby": 2}
        assert "chat.lobby" in response.content.decode()
    finally:
        for pubsub in subscribers:
            pubsub.close()


def test_outbox_page_shows_backlog_and_oldest_rows(admin_client: Client) -> None:
    """Tests that the outbox page shows the waiting count and the oldest rows."""
    for n in range(3):
        OutboxEvent.objects.create(
            stream="shop.orders", fields=wire.encode_entry({"n": n}, type="order.updated")
        )
    response = admin_client.get(url("outbox"))
    info = response.context["info"]
    assert info.backlog.count == 3
    assert [row.type for row in info.oldest] == ["order.updated"] * 3
    assert info.per_stream == [("shop.orders", 3)]
    assert "shop.orders" in response.content.decode()
    overview = admin_client.get(url("broker_changelist")).content.decode()
    assert "<strong>3</strong> model events waiting" in overview


def test_unreachable_redis_shows_a_clear_page_with_masked_url(
    admin_client: Client, settings: Any
) -> None:
    """Tests that with Redis down every Redis page answers 503 with the masked URL, not 500."""
    settings.REDIS_BROKER = {
        **settings.REDIS_BROKER,
        "URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "RETRIES": 0,
    }
    # The outbox page reads the database, not Redis; an action's confirmation page does.
    redis_pages = [page for page in PAGES if page[0] != "outbox"]
    for name, kwargs in [*redis_pages, ("ack", {"stream": STREAM, "group": GROUP})]:
        response = admin_client.get(url(name, **kwargs))
        assert response.status_code == 503, name
        body = response.content.decode()
        assert "Redis cannot be reached" in body, name
        assert ":***@127.0.0.1" in body, name
        assert "hunter2" not in body, name


def test_vanished_keys_answer_404(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that a stream, group or consumer that is gone gives the inspector's 404 page."""
    redis_client.set("gone", "a string took the stream's name")
    for name, kwargs in [
        ("stream", {"stream": "gone"}),
        ("groups", {"stream": "gone"}),
        ("dead_letters", {"stream": "gone"}),
        ("pending", {"stream": STREAM, "group": "gone"}),
        ("pending", {"stream": "gone", "group": GROUP}),
        ("trim", {"stream": "gone"}),
        ("delete_consumer", {"stream": STREAM, "group": GROUP, "consumer": "gone"}),
        ("destroy_group", {"stream": STREAM, "group": "gone"}),
    ]:
        response = admin_client.get(url(name, **kwargs))
        assert response.status_code == 404, (name, kwargs)
        assert "gone" in response.content.decode()


@override_settings(ROOT_URLCONF="tests.inspector.urls_custom_site")
def test_broker_admin_works_on_a_custom_admin_site(admin_client: Client, seeded: Seeded) -> None:
    """Tests that BrokerAdmin registered on a project's AdminSite serves its pages there."""
    overview = reverse("admin:redis_broker_broker_changelist", current_app="ops")
    assert overview.startswith("/ops/")
    response = admin_client.get(overview)
    assert response.status_code == 200
    assert f'href="/ops/redis_broker/broker/streams/{STREAM}/"' in response.content.decode()
