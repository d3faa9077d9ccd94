"""Lists, processing lists and channel consumers on the inspector, and the requeue of a
dead worker's processing list."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.test import Client
from redis.cluster import RedisCluster

from redis_broker import wire
from redis_broker.inspector import queries
from redis_broker.models import Broker
from redis_broker.naming import (
    dead_letter_name,
    deliveries_name,
    list_consumers_name,
    prefixed,
    processing_list_name,
    worker_key,
)
from redis_broker.testing import wait_for

from .helpers import (
    DEAD_WORKER,
    LIST,
    Seeded,
    beat,
    channel_spec,
    list_spec,
    raw_client,
    snapshot,
    url,
)

pytestmark = pytest.mark.django_db

#: The dead-letter stream of LIST: "jobs:dlq", or "{jobs}:dlq" on a cluster.
LIST_DLQ = dead_letter_name(LIST, ":dlq")
EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def messages_of(response: Any, level: str) -> list[str]:
    """Return the texts of the messages of ``level`` set on ``response``'s request."""
    return [m.message for m in get_messages(response.wsgi_request) if m.level_tag == level]


def only_list(response: Any, name: str = LIST) -> queries.ListSummary:
    """Return the summary of list ``name`` on a lists page response."""
    [found] = [summary for summary in response.context["listing"].lists if summary.name == name]
    return found


def test_lists_page_shows_lists_with_processing_lists_and_heartbeats(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that a list shows its length, head, dead letters, readers and processing lists."""
    beat(redis_broker_url, "w-live", list_spec())
    taken = wire.encode_message({"job": 99}, type="job.run")
    redis_client.rpush(processing_list_name(LIST, "w-live"), taken)
    redis_client.sadd(list_consumers_name(LIST), "w-live")
    redis_client.xadd(
        LIST_DLQ,
        wire.dead_letter_fields(
            wire.decode_element(seeded.items[0]).fields(),
            original_stream=LIST,
            original_id="",
            error="ValueError: bad job",
            delivery_count=5,
        ),
    )
    response = admin_client.get(url("lists"))
    assert response.status_code == 200
    jobs = only_list(response)
    assert (jobs.length, jobs.dead_letters) == (3, 1)
    assert jobs.head is not None and jobs.head.payload == '{\n  "job": 0\n}'
    assert jobs.head.type == "job.run"
    assert [(r.worker, r.consumer) for r in jobs.readers] == [("w-live", "run_job")]
    dead, live = jobs.processing
    assert (dead.consumer, dead.length, dead.alive, dead.beat_age_ms) == (
        DEAD_WORKER,
        2,
        False,
        None,
    )
    assert dead.oldest is not None and dead.oldest.payload == '{\n  "job": -2\n}'
    assert (live.consumer, live.length, live.alive) == ("w-live", 1, True)
    assert live.beat_age_ms is not None and 0 <= live.beat_age_ms < 10_000
    assert jobs.orphaned == 2
    body = response.content.decode()
    assert "dead/expired" in body
    assert "last beat" in body
    assert url("dead_letters", stream=LIST) in body
    assert url("requeue_processing", stream=LIST, consumer=DEAD_WORKER) in body
    assert url("requeue_processing", stream=LIST, consumer="w-live") not in body
    assert url("lists") in admin_client.get(url("index")).content.decode()


def test_lists_are_found_in_heartbeats_and_in_consumer_sets(
    admin_client: Client, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that a list only a live worker names and one only a consumers set names show."""
    beat(redis_broker_url, "w-mail", list_spec("emails", name="send_mail"))
    redis_client.rpush("reports", "r1")
    redis_client.sadd(list_consumers_name("reports"), "w-gone")
    redis_client.rpush("unrelated", "x")
    response = admin_client.get(url("lists"))
    assert [s.name for s in response.context["listing"].lists] == ["emails", "reports"]
    assert response.context["listing"].scan_complete
    emails, reports = response.context["listing"].lists
    assert (emails.length, emails.processing, emails.head) == (0, [], None)
    assert [(p.consumer, p.alive) for p in reports.processing] == [("w-gone", False)]
    assert "No live worker reads this list" not in response.content.decode()  # nothing held


def test_list_items_are_shown_escaped_whatever_produced_them(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that our elements, foreign text and undecodable bytes render, markup escaped."""
    redis_client.lpush(LIST, wire.encode_message({"note": EVIL}, type=EVIL))
    redis_client.lpush(processing_list_name(LIST, DEAD_WORKER), f"plain {EVIL}")
    redis_client.rpush(processing_list_name(LIST, "w-binary"), b"\xff\xfe" + EVIL.encode())
    redis_client.sadd(list_consumers_name(LIST), "w-binary")
    response = admin_client.get(url("lists"))
    assert response.status_code == 200
    body = response.content.decode()
    assert EVIL not in body
    assert body.count(ESCAPED) >= 4  # the head's type and payload, both processing lists
    jobs = only_list(response)
    assert jobs.head is not None and jobs.head.type == EVIL
    binary, dead = jobs.processing
    assert dead.oldest is not None and dead.oldest.payload == f'"plain {EVIL}"'
    assert binary.oldest is not None and not binary.oldest.payload_is_json
    assert binary.oldest.payload.startswith("\ufffd")


def test_lists_page_honours_key_prefix(
    admin_client: Client, redis_client: redis.Redis, redis_broker_url: str, settings: Any
) -> None:
    """Tests that only lists under KEY_PREFIX are shown, without it, with their workers."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    beat(redis_broker_url, "w1", list_spec())
    redis_client.rpush(prefixed("app:", LIST), wire.encode_message(1))
    redis_client.rpush(prefixed("app:", processing_list_name(LIST, "w1")), wire.encode_message(2))
    redis_client.sadd(prefixed("app:", list_consumers_name(LIST)), "w1")
    redis_client.sadd(list_consumers_name("other"), "w9")  # another prefix's list
    redis_client.sadd(prefixed("ap:", list_consumers_name("near")), "w8")  # nor this
    response = admin_client.get(url("lists"))
    [jobs] = response.context["listing"].lists
    assert (jobs.name, jobs.length, [r.worker for r in jobs.readers]) == (LIST, 1, ["w1"])
    assert [(p.consumer, p.length, p.alive) for p in jobs.processing] == [("w1", 1, True)]


def test_search_for_consumer_sets_is_bounded(
    redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that the SCAN for consumers sets stops after its call budget and says so."""
    filler = redis_client.pipeline(transaction=False)  # split per node on a cluster
    for n in range(5000):
        filler.set(f"filler:{n}", "x")
    filler.execute()
    redis_client.sadd(list_consumers_name(LIST), DEAD_WORKER)
    with raw_client(redis_broker_url) as raw:
        calls: list[int] = []
        real_scan = raw.scan

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return real_scan(*args, **kwargs)

        raw.scan = spy  # type: ignore[method-assign]
        cut = queries.list_lists(raw, prefix="", dead_letter_suffix=":dlq", scan_calls=2)
        assert len(calls) == 2
        assert not cut.scan_complete
        full = queries.list_lists(raw, prefix="", dead_letter_suffix=":dlq")
        assert full.scan_complete
        assert [s.name for s in full.lists] == [LIST]


def test_requeue_processing_confirms_on_get_and_changes_nothing(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that the GET page asks, names the items and the dead worker, and writes nothing."""
    before = snapshot(redis_client)
    response = admin_client.get(url("requeue_processing", stream=LIST, consumer=DEAD_WORKER))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'method="post"' in body
    assert f"Move the 2 items that consumer “{DEAD_WORKER}” took from list “{LIST}”" in body
    assert "heartbeat has expired" in body
    assert snapshot(redis_client) == before
    assert not LogEntry.objects.exists()


def test_requeue_processing_moves_items_back_to_the_head_in_order_and_logs(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that the items go back before the waiting ones, oldest first, and are logged."""
    digest = "0" * 40
    redis_client.hset(deliveries_name(LIST), digest, 3)
    response = admin_client.post(url("requeue_processing", stream=LIST, consumer=DEAD_WORKER))
    assert response.status_code == 302
    assert response["Location"] == url("lists")
    assert redis_client.lrange(LIST, 0, -1) == seeded.taken + seeded.items
    assert not redis_client.exists(processing_list_name(LIST, DEAD_WORKER))
    assert not redis_client.sismember(list_consumers_name(LIST), DEAD_WORKER)
    assert redis_client.hget(deliveries_name(LIST), digest) == "3"  # counts are kept
    entry = LogEntry.objects.get()
    assert entry.content_type == ContentType.objects.get_for_model(Broker)
    assert (entry.object_id, entry.object_repr, entry.action_flag) == (
        f"lists/{LIST}",
        f"Requeued 2 items of dead worker {DEAD_WORKER} to list {LIST}",
        CHANGE,
    )
    assert entry.change_message.startswith(f"Moved 2 items of consumer {DEAD_WORKER}")
    assert messages_of(response, "success") == [entry.change_message]
    assert admin_client.get(entry.get_admin_url())["Location"] == url("lists")


def test_requeue_processing_is_refused_while_its_worker_is_alive(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that a live owner's list is left alone, with an error, until its beat expires."""
    beat(redis_broker_url, DEAD_WORKER, list_spec(), interval=0.5)
    target = url("requeue_processing", stream=LIST, consumer=DEAD_WORKER)
    assert "the requeue will be refused" in admin_client.get(target).content.decode()
    before = snapshot(redis_client)
    response = admin_client.post(target)
    assert response.status_code == 302
    [error] = messages_of(response, "error")
    assert f"the worker {DEAD_WORKER} is alive" in error
    assert messages_of(response, "success") == []
    assert snapshot(redis_client) == before
    assert not LogEntry.objects.exists()
    # Three missed beats later the claim has expired: the worker is gone.
    wait_for(
        lambda: not redis_client.exists(worker_key("", DEAD_WORKER)),
        timeout=10,
        message="the heartbeat to expire",
    )
    assert admin_client.post(target).status_code == 302
    assert redis_client.lrange(LIST, 0, 1) == seeded.taken


def test_requeue_processing_of_an_unknown_consumer_is_404(
    admin_client: Client, seeded: Seeded
) -> None:
    """Tests that a consumer with neither a processing list nor a set entry gives the 404 page."""
    response = admin_client.get(url("requeue_processing", stream=LIST, consumer="nobody"))
    assert response.status_code == 404
    assert "nobody" in response.content.decode()


def test_requeue_of_an_emptied_dead_workers_entry_forgets_it(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a dead consumer with an empty processing list can still be forgotten."""
    redis_client.sadd(list_consumers_name(LIST), DEAD_WORKER, "w-other")
    response = admin_client.post(url("requeue_processing", stream=LIST, consumer=DEAD_WORKER))
    assert response.status_code == 302
    assert redis_client.smembers(list_consumers_name(LIST)) == {"w-other"}
    assert "Moved 0 items" in LogEntry.objects.get().change_message


@pytest.mark.parametrize("emptied", [False, True])
def test_list_dead_letters_are_requeued_to_the_end_of_the_list(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis, emptied: bool
) -> None:
    """Tests that a list's dead letter goes back to the list's end as the element it was."""
    if emptied:
        redis_client.delete(LIST)
    message = wire.decode_element(wire.encode_message({"job": 7}, type="job.run", headers={"h": 1}))
    dead = redis_client.xadd(
        LIST_DLQ,
        wire.dead_letter_fields(
            message.fields(), original_stream=LIST, original_id="", error="boom", delivery_count=5
        ),
    )
    page = admin_client.get(url("dead_letters", stream=LIST))
    assert page.status_code == 200
    assert f'href="{url("stream", stream=LIST)}"' not in page.content.decode()  # no stream tabs
    response = admin_client.post(url("requeue", stream=LIST), {"ids": [dead]})
    assert response.status_code == 302
    assert redis_client.type(LIST) == "list"
    back = wire.decode_element(redis_client.lrange(LIST, -1, -1)[0])
    assert (back.data, back.type, back.event_id, back.headers) == (
        {"job": 7},
        "job.run",
        message.event_id,
        {"h": 1},
    )
    assert redis_client.xlen(LIST_DLQ) == 0
    assert "(end of the list)" in LogEntry.objects.get().change_message


def test_pubsub_page_lists_channel_consumers_and_their_subscriptions(
    admin_client: Client, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that each live worker's channel consumers show with what Redis shows of them
    (on a single Redis; tests/cluster has the sharded twin, where patterns do not exist)."""
    if isinstance(redis_client, RedisCluster):
        pytest.skip("a cluster has no pattern subscriptions: see tests/cluster")
    beat(
        redis_broker_url,
        "w-chan",
        channel_spec("prices.{symbol}", "on_price"),
        channel_spec("chat.lobby", "on_chat"),
        channel_spec("audit.log", "on_audit"),
    )
    response = admin_client.get(url("pubsub"))
    rows = {s.consumer: s for s in response.context["subscriptions"]}
    assert {(s.worker, s.pattern, s.subscription, s.is_pattern) for s in rows.values()} == {
        ("w-chan", "prices.{symbol}", "prices.*", True),
        ("w-chan", "chat.lobby", "chat.lobby", False),
        ("w-chan", "audit.log", "audit.log", False),
    }
    assert [rows[c].seen for c in ("on_price", "on_chat", "on_audit")] == [False, False, False]
    subscriber = redis_client.pubsub()
    try:
        subscriber.psubscribe("prices.*")
        subscriber.subscribe("chat.lobby")
        wait_for(
            lambda: (
                redis_client.pubsub_numpat() == 1
                and redis_client.pubsub_numsub("chat.lobby")[0][1] == 1
            ),
            timeout=5,
            message="the subscriptions",
        )
        response = admin_client.get(url("pubsub"))
    finally:
        subscriber.close()
    rows = {s.consumer: s for s in response.context["subscriptions"]}
    assert [rows[c].seen for c in ("on_price", "on_chat", "on_audit")] == [None, True, False]
    body = response.content.decode()
    assert "prices.{symbol}" in body
    assert "Redis does not say whose" in body
    assert "subscribed (1 subscriber)" in body
    assert "no subscriber" in body
