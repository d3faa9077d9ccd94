"""The live console: the overview's JSON figures, the workers page, search, bulk actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.test import Client

from redis_broker import wire
from redis_broker.connection import get_redis
from redis_broker.inspector import actions, search
from redis_broker.naming import worker_key, workers_key
from redis_broker.testing import free_port, wait_for

from .helpers import (
    DLQ,
    GROUP,
    LIST,
    LIVE,
    STREAM,
    Seeded,
    beat,
    channel_spec,
    connected_clients,
    list_spec,
    snapshot,
    url,
)


def fill(client: redis.Redis, stream: str, count: int, **fields: Any) -> list[tuple[str, str]]:
    """Append ``count`` wire-format entries (pipelined); return (entry id, event id) each."""
    pipe = client.pipeline(transaction=False)
    event_ids = []
    for n in range(count):
        entry = wire.encode_entry({"n": n, "note": f"item-{n}"}, type=f"kind.{n % 3}")
        event_ids.append(entry[wire.EVENT_ID])
        pipe.xadd(stream, {**entry, **fields})
    return list(zip(pipe.execute(), event_ids, strict=True))


def dead_letters(client: redis.Redis, count: int, error: str = "ValueError: no") -> list[str]:
    """Add ``count`` dead letters of STREAM to DLQ; return their event ids, oldest first."""
    event_ids = []
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        fields = wire.encode_entry({"n": n}, type="order.created")
        event_ids.append(fields[wire.EVENT_ID])
        pipe.xadd(
            DLQ,
            wire.dead_letter_fields(
                fields,
                original_stream=STREAM,
                original_id=f"{n + 1}-0",
                error=f"{error} {n}",
                delivery_count=5,
            ),
        )
    pipe.execute()
    return event_ids


# --- The overview's JSON -------------------------------------------------------------------


def test_overview_figures_are_what_redis_says_and_reading_them_writes_nothing(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that the live endpoint's length, entries added, lag, pending and dead letters
    equal XLEN / XINFO, and that polling it leaves Redis unchanged."""
    redis_client.xtrim(
        STREAM, maxlen=8, approximate=False
    )  # entries-added stays 10, the length drops to 8
    before = snapshot(redis_client)
    data = admin_client.get(url("overview_live")).json()
    assert snapshot(redis_client) == before
    streams = {s["name"]: s for s in data["streams"]}
    orders = streams[STREAM]
    info = redis_client.xinfo_stream(STREAM)
    group = redis_client.xinfo_groups(STREAM)[0]
    assert orders["length"] == redis_client.xlen(STREAM) == 8
    assert orders["added"] == info["entries-added"] == 10
    assert orders["lag"] == [{"group": GROUP, "lag": group["lag"], "pending": 4}]
    assert orders["dead_letters"] == redis_client.xlen(DLQ) == 2
    assert orders["last_id"] == info["last-entry"][0]
    assert streams[DLQ]["dead_letter_of"] == STREAM
    assert data["server"]["connected_clients"] == connected_clients(redis_client)
    assert data["outbox"] == 0


def test_overview_figures_change_as_entries_are_published(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that two polls a few entries apart differ by exactly those entries."""
    first = {s["name"]: s for s in admin_client.get(url("overview_live")).json()["streams"]}
    fill(redis_client, STREAM, 7)
    second = {s["name"]: s for s in admin_client.get(url("overview_live")).json()["streams"]}
    assert second[STREAM]["added"] - first[STREAM]["added"] == 7
    assert second[STREAM]["length"] - first[STREAM]["length"] == 7
    assert second[STREAM]["lag"][0]["lag"] == first[STREAM]["lag"][0]["lag"] + 7


def test_live_endpoints_answer_json_503_with_the_masked_url_when_redis_is_down(
    admin_client: Client, settings: Any
) -> None:
    """Tests that a poll during an outage gets a JSON error the page can show, no password."""
    settings.REDIS_BROKER = {
        **settings.REDIS_BROKER,
        "URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "RETRIES": 0,
    }
    for name, kwargs in LIVE:
        response = admin_client.get(url(name, **kwargs))
        assert response.status_code == 503, name
        error = response.json()["error"]
        assert error.startswith("Redis cannot be reached at redis://:***@127.0.0.1"), error
        assert "hunter2" not in response.content.decode()


def test_live_endpoints_follow_the_page_permissions(
    user_client: Callable[..., Client], viewer: Client
) -> None:
    """Tests that the JSON endpoints need view_broker like the pages (403 without it)."""
    for name, kwargs in LIVE:
        assert user_client().get(url(name, **kwargs)).status_code == 403, name
        assert viewer.get(url(name, **kwargs)).status_code == 200, name
        assert Client().get(url(name, **kwargs)).status_code == 302, name


# --- Workers -------------------------------------------------------------------------------


def test_workers_page_lists_live_workers_with_what_they_consume(
    admin_client: Client, redis_broker_url: str, redis_broker_cluster: bool
) -> None:
    """Tests that each heartbeat shows as a row: name, host, pid, consumers; names escaped."""
    # A cluster has no pattern subscriptions (sharded Pub/Sub): a channel by name there.
    prices = "prices.eur" if redis_broker_cluster else "prices.{symbol}"
    with ThreadPoolExecutor(1) as thread:
        thread.submit(
            beat,
            redis_broker_url,
            "w-<b>1</b>",
            list_spec(LIST),
            channel_spec(prices, "on_price"),
        ).result()
    page = admin_client.get(url("workers"))
    body = page.content.decode()
    (row,) = page.context["workers"]
    assert row.info.name == "w-<b>1</b>"
    assert [(c.kind, c.name, c.source) for c in row.consumers] == [
        ("list", "run_job", LIST),
        ("channel", "on_price", prices),
    ]
    assert "w-&lt;b&gt;1&lt;/b&gt;" in body and "w-<b>1</b>" not in body
    assert f"pid {row.info.pid}" in body
    live = admin_client.get(url("workers_live")).json()
    assert live["count"] == 1
    assert "w-&lt;b&gt;1&lt;/b&gt;" in live["html"] and "run_job" in live["html"]


def test_a_worker_drops_off_the_workers_page_when_its_heartbeat_expires(
    admin_client: Client, redis_broker_url: str
) -> None:
    """Tests that a worker that stops beating leaves the list after three intervals."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(beat, redis_broker_url, "w-short", list_spec(), interval=0.2).result()
    assert admin_client.get(url("workers_live")).json()["count"] == 1
    wait_for(
        lambda: admin_client.get(url("workers_live")).json()["count"] == 0,
        timeout=5,
        message="the expired worker to leave the list",
    )
    assert "No live worker" in admin_client.get(url("workers")).content.decode()


def test_workers_page_shows_what_a_newer_heartbeat_adds_and_tolerates_what_it_lacks(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that per-consumer in-flight counts and unknown keys show, and missing ones don't
    break the page (a heartbeat written by another version)."""
    info = {
        "name": "w-new",
        "host": "h1",
        "pid": 7,
        "started_at": 1_700_000_000.0,
        "beat_at": 1_700_000_100.0,
        "live": False,
        "ready": True,
        "problems": ["bill: no progress for 42 s with work waiting"],
        "consumers": [
            {
                "kind": "stream",
                "name": "bill",
                "stream": STREAM,
                "group": GROUP,
                "in_flight": 2,
                "oldest_call_s": 42.0,
                "last_progress_s": 1.5,
            },
            {"kind": "mystery"},
        ],
    }
    redis_client.hset(worker_key("", "w-new"), mapping={"token": "t", "info": json.dumps(info)})
    redis_client.zadd(workers_key(""), {"w-new": 4_000_000_000})
    body = admin_client.get(url("workers")).content.decode()
    assert "2 in flight" in body and "oldest call 42 s" in body
    assert "not live</strong>, ready" in body and "no progress for 42 s" in body
    assert 'last progress: <span class="rb-mono">1 s</span>' in body and "mystery" in body


# --- Search --------------------------------------------------------------------------------


def test_search_finds_the_oldest_entry_by_event_id_in_a_20000_entry_stream(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a search by event id scans newest first, in chunks, to the oldest entry."""
    entries = fill(redis_client, STREAM, 20_000)
    oldest_id, oldest_event = entries[0]
    response = admin_client.get(url("search", stream=STREAM), {"q": oldest_event})
    result = response.context["result"]
    assert [e.id for e in result.entries] == [oldest_id]
    assert result.scanned == 20_000 and result.older is None
    assert oldest_event in response.content.decode()
    assert "reached the oldest entry" in response.content.decode()


def test_search_stops_at_its_window_and_search_older_continues_below(
    redis_client: redis.Redis,
) -> None:
    """Tests the bounded window: the first request stops short, its link finds the rest."""
    entries = fill(redis_client, STREAM, 5000)
    found = search.search_entries(
        get_redis(),
        prefix="",
        name=STREAM,
        by="event_id",
        needle=entries[10][1],
        window=3000,
    )
    assert found.entries == [] and found.scanned == 3000 and found.window_full
    assert found.older == entries[5000 - 3000][0]  # the last (oldest) entry scanned
    more = search.search_entries(
        get_redis(),
        prefix="",
        name=STREAM,
        by="event_id",
        needle=entries[10][1],
        before=found.older,
        window=3000,
    )
    assert [e.id for e in more.entries] == [entries[10][0]]


def test_search_by_type_payload_and_entry_id(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests the other ways: type equality, a payload substring, and an entry id jump."""
    entries = fill(redis_client, STREAM, 30)
    page = admin_client.get(url("search", stream=STREAM), {"q": "kind.1", "by": "type"})
    ids = [e.id for e in page.context["result"].entries]
    assert ids == [entry_id for entry_id, _ in reversed(entries[1::3])]
    page = admin_client.get(url("search", stream=STREAM), {"q": '"item-17"', "by": "payload"})
    assert [e.id for e in page.context["result"].entries] == [entries[17][0]]
    page = admin_client.get(url("search", stream=STREAM), {"q": entries[4][0]})
    result = page.context["result"]
    assert [e.id for e in result.entries] == [entries[4][0]] and result.scanned == 1
    page = admin_client.get(url("search", stream=STREAM), {"q": "12x-0", "by": "id"})
    assert page.context["result"] is None
    assert "is not a stream entry id" in page.content.decode()


def test_search_shows_payloads_escaped(admin_client: Client, redis_client: redis.Redis) -> None:
    """Tests that a matched payload with markup is shown as text."""
    redis_client.xadd(STREAM, wire.encode_entry({"x": "<script>alert(1)</script>"}, type="t"))
    body = admin_client.get(url("search", stream=STREAM), {"q": "script", "by": "payload"})
    text = body.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)</script>" not in text


# --- Bulk actions on dead letters -----------------------------------------------------------


def test_bulk_requeue_of_1000_dead_letters_appends_them_all_and_logs_one_entry(
    operator: Client, redis_client: redis.Redis
) -> None:
    """Tests "Requeue all": 1,000 dead letters go back in order with their event ids, the
    dead-letter stream is empty, and one admin log entry says what was done."""
    redis_client.xadd(STREAM, {"type": "x", "data": "{}"})
    event_ids = dead_letters(redis_client, 1000)
    confirm = operator.get(url("requeue_matching", stream=STREAM))
    assert confirm.status_code == 200
    assert f"Requeue 1,000 dead letters of {DLQ}?" in confirm.content.decode()
    assert redis_client.xlen(DLQ) == 1000  # the GET changed nothing
    response = operator.post(url("requeue_matching", stream=STREAM))
    assert response.status_code == 302
    assert redis_client.xlen(DLQ) == 0
    requeued = redis_client.xrange(STREAM)[1:]
    assert [fields["event_id"] for _, fields in requeued] == event_ids
    (entry,) = LogEntry.objects.all()
    assert entry.object_repr == f"Requeued 1,000 dead letters of {DLQ} to {STREAM}"
    assert entry.object_id == STREAM


def test_bulk_requeue_of_matching_dead_letters_leaves_the_others(
    operator: Client, redis_client: redis.Redis
) -> None:
    """Tests "Requeue all matching" with an error search: only those move."""
    dead_letters(redis_client, 6, error="ValueError: no")
    timeouts = dead_letters(redis_client, 4, error="TimeoutError: slow")
    page = operator.get(url("dead_letters", stream=STREAM), {"q": "Timeout", "by": "error"})
    assert len(page.context["result"].entries) == 4
    bulk = page.context["requeue_all_url"]
    assert "q=Timeout" in bulk and "by=error" in bulk
    assert "Requeue 4 dead letters" in operator.get(bulk).content.decode()
    operator.post(url("requeue_matching", stream=STREAM), {"by": "error", "q": "Timeout"})
    assert [f["event_id"] for _, f in redis_client.xrange(STREAM)] == timeouts
    assert redis_client.xlen(DLQ) == 6
    assert "whose error contains “Timeout”" in LogEntry.objects.get().change_message


def test_bulk_delete_of_matching_dead_letters(operator: Client, redis_client: redis.Redis) -> None:
    """Tests "Delete all matching": the matches are gone, the others stay, one log entry."""
    keep = dead_letters(redis_client, 3, error="ValueError: no")
    dead_letters(redis_client, 5, error="KeyError: gone")
    operator.post(url("delete_matching", stream=STREAM), {"by": "error", "q": "KeyError"})
    assert [f["event_id"] for _, f in redis_client.xrange(DLQ)] == keep
    assert LogEntry.objects.get().object_repr == f"Deleted 5 dead letters of {DLQ}"


def test_bulk_actions_stop_at_their_limit_and_say_so(
    operator: Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests the bound: past BULK_LIMIT the newest matches are acted on, and the message
    says to run it again for the rest."""
    monkeypatch.setattr(actions, "BULK_LIMIT", 5)
    monkeypatch.setattr(actions, "BULK_CHUNK", 2)
    event_ids = dead_letters(redis_client, 8)
    question = operator.get(url("requeue_matching", stream=STREAM)).content.decode()
    assert f"Requeue 5 dead letters of {DLQ} (the oldest 5; more remain)?" in question
    response = operator.post(url("requeue_matching", stream=STREAM), follow=True)
    assert "run it again for the rest" in response.content.decode()
    assert [f["event_id"] for _, f in redis_client.xrange(STREAM)] == event_ids[:5]
    operator.post(url("requeue_matching", stream=STREAM), {"by": "error", "q": "ValueError"})
    assert [f["event_id"] for _, f in redis_client.xrange(STREAM)][5:] == event_ids[5:]


def test_bulk_action_with_nothing_matching_changes_nothing(
    operator: Client, redis_client: redis.Redis
) -> None:
    """Tests that a search matching no dead letter disables the button and logs nothing."""
    dead_letters(redis_client, 2)
    page = operator.get(url("delete_matching", stream=STREAM), {"by": "type", "q": "nope"})
    assert "there is nothing to do" in page.content.decode() and b" disabled" in page.content
    operator.post(url("delete_matching", stream=STREAM), {"by": "type", "q": "nope"})
    assert redis_client.xlen(DLQ) == 2
    assert not LogEntry.objects.exists()
