"""The admin inspector and the scrape-time metrics view on a Redis Cluster.

Every test runs on the session's three-master cluster (``--redis-broker-cluster``) and
puts its keys on every master on purpose, checked with ``key_slot`` and the cluster's
own slot map: a page that asked one node only would miss two thirds of them.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from redis_broker import wire
from redis_broker.connection import get_redis
from redis_broker.inspector import nodes, queries
from redis_broker.metrics.scrape import read_figures
from redis_broker.naming import (
    dead_letter_name,
    key_slot,
    list_consumers_name,
    prefixed,
    processing_list_name,
)
from redis_broker.testing import free_port, names_by_master, wait_for
from tests.inspector.helpers import beat, channel_spec, list_spec, url

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("cluster_session")]

SUFFIX = ":dlq"
TOKEN = "cluster-metrics-token-0123456789"


def spread(client: Any, stem: str, per_master: int = 2) -> list[str]:
    """Return names spread over every master (checked: three masters, distinct slots)."""
    by_master = names_by_master(client, stem, per_master)
    assert len(by_master) == 3
    names = sorted(name for names in by_master.values() for name in names)
    assert len({key_slot(name) for name in names}) == len(names)
    return names


def get_client() -> redis.Redis:
    """Return the app's own client (bytes replies, a cluster client here)."""
    return get_redis()


def add_dead_letters(client: Any, stream: str, count: int, prefix: str = "") -> list[str]:
    """Add ``count`` dead letters of ``stream``; return their event ids, oldest first."""
    event_ids = []
    for n in range(count):
        fields = wire.encode_entry({"n": n}, type="order.created")
        event_ids.append(fields[wire.EVENT_ID])
        client.xadd(
            prefixed(prefix, dead_letter_name(stream, SUFFIX)),
            wire.dead_letter_fields(
                fields,
                original_stream=stream,
                original_id=f"{n + 1}-0",
                error=f"ValueError: no {n}",
                delivery_count=5,
            ),
        )
    return event_ids


def test_overview_lists_the_streams_of_every_master_with_their_dead_letters(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that streams on all three masters are listed, each with its dead-letter count
    (its dead-letter stream shares its slot, hence its master)."""
    names = spread(redis_client, "orders.")
    for n, name in enumerate(names):
        for _ in range(n + 1):
            redis_client.xadd(name, {"data": "1"})
    first = names[0]
    assert key_slot(dead_letter_name(first, SUFFIX)) == key_slot(first)
    add_dead_letters(redis_client, first, 2)
    response = admin_client.get(url("broker_changelist"))
    assert response.status_code == 200
    listing = response.context["listing"]
    streams = {s.name: s for s in listing.streams}
    assert set(streams) == {*names, dead_letter_name(first, SUFFIX)}
    assert [streams[name].length for name in names] == list(range(1, len(names) + 1))
    assert streams[first].dead_letters == 2
    assert streams[dead_letter_name(first, SUFFIX)].dead_letter_of == first
    assert not listing.truncated
    server = response.context["server"]
    assert server.mode == "cluster, 3 masters" and server.role == "master"
    body = response.content.decode()
    assert all(url("stream", stream=name) in body for name in names)


def test_overview_under_a_key_prefix_lists_plain_and_tagged_keys_of_every_master(
    admin_client: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Tests KEY_PREFIX on a cluster: ``app:orders`` and ``{app:orders}:dlq`` are both
    found (the prefix sits inside the hash tag of the second), another prefix's are not."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    names = spread(redis_client, "app:orders.", per_master=1)
    names = [name.removeprefix("app:") for name in names]
    for name in names:
        redis_client.xadd(prefixed("app:", name), {"data": "1"})
        add_dead_letters(redis_client, name, 1, prefix="app:")
        redis_client.xadd(prefixed("ap:", dead_letter_name(name, SUFFIX)), {"data": "1"})
    assert prefixed("app:", dead_letter_name(names[0], SUFFIX)) == "{app:" + names[0] + "}:dlq"
    listing = queries.list_streams(get_client(), prefix="app:", dead_letter_suffix=SUFFIX)
    assert {s.name for s in listing.streams} == {
        *names,
        *(dead_letter_name(name, SUFFIX) for name in names),
    }
    assert all(s.dead_letters == 1 for s in listing.streams if s.dead_letter_of is None)
    page = admin_client.get(url("dead_letters", stream=names[-1]))
    assert len(page.context["page"].entries) == 1


def test_scan_bounds_hold_for_the_whole_cluster(redis_client: redis.Redis) -> None:
    """Tests that the SCAN budget is shared fairly: one call per master finds every
    stream of a small keyspace, and the limit on streams stops the walk and says so."""
    names = spread(redis_client, "s.")
    for name in names:
        redis_client.xadd(name, {"n": "1"})
    client = get_client()
    keys, truncated = queries.scan_streams(client, prefix="", max_calls=3)
    assert (sorted(k.decode() for k in keys), truncated) == (names, False)
    keys, truncated = queries.scan_streams(client, prefix="", max_calls=2)
    assert truncated and 0 < len(keys) < len(names)  # the third master was not asked
    keys, truncated = queries.scan_streams(client, prefix="", limit=4)
    assert truncated and len(keys) == 4


def test_dead_letters_of_a_stream_are_found_and_requeued_on_a_cluster(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that each master's stream shows its dead letters, that a selected one and then
    all the rest go back to their stream with their event ids, and that it is logged."""
    for stream in spread(redis_client, "pay.", per_master=1):
        redis_client.xadd(stream, {"data": "0"})
        event_ids = add_dead_letters(redis_client, stream, 3)
        dlq = dead_letter_name(stream, SUFFIX)
        page = admin_client.get(url("dead_letters", stream=stream))
        assert page.status_code == 200 and page.context["dlq"] == dlq
        dead = [e.id for e in page.context["page"].entries][::-1]
        assert len(dead) == 3
        response = admin_client.post(url("requeue", stream=stream), {"ids": dead[:1]})
        assert response.status_code == 302
        assert response["Location"] == url("dead_letters", stream=stream)
        assert admin_client.get(url("requeue_matching", stream=stream)).status_code == 200
        admin_client.post(url("requeue_matching", stream=stream))
        assert redis_client.xlen(dlq) == 0
        requeued = [fields[wire.EVENT_ID] for _, fields in redis_client.xrange(stream)[1:]]
        assert requeued == event_ids
    assert LogEntry.objects.count() == 6


def test_metrics_view_reports_the_streams_of_every_master(
    redis_client: redis.Redis, settings: Any
) -> None:
    """Tests that a scrape lists streams of all three masters with their groups' figures
    and dead letters, read through cluster pipelines."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "METRICS_TOKEN": TOKEN, "MODEL_EVENTS": {}}
    names = spread(redis_client, "m.")
    for name in names:
        for n in range(4):
            redis_client.xadd(name, {"n": str(n)})
        redis_client.xgroup_create(name, "g", id="0")
        redis_client.xreadgroup("g", "c", {name: ">"}, count=1)
    add_dead_letters(redis_client, names[-1], 2)
    response = Client().get("/broker/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert samples["redis_broker_redis_up", ()] == 1
    assert samples["redis_broker_scrape_truncated", ()] == 0
    lengths = {
        dict(labels)["stream"]: number
        for (name, labels), number in samples.items()
        if name == "redis_broker_stream_length"
    }
    assert lengths == dict.fromkeys(names, 4)
    for name in names:
        labels = (("group", "g"), ("stream", name))
        assert samples["redis_broker_group_pending", labels] == 1
        assert samples["redis_broker_group_lag", labels] == 3
    assert samples["redis_broker_dead_letters", (("stream", names[-1]),)] == 2
    figures = read_figures(get_client(), prefix="", dead_letter_suffix=SUFFIX)
    assert [s.name for s in figures.streams] == names


def test_an_unreachable_cluster_is_a_503_page_and_redis_up_0(
    admin_client: Client, settings: Any
) -> None:
    """Tests that a cluster no startup node of which answers gives the outage page (not a
    500) and a scrape with redis_broker_redis_up 0, the URL's password masked."""
    settings.REDIS_BROKER = {
        **settings.REDIS_BROKER,
        "URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "RETRIES": 0,
        "METRICS_TOKEN": TOKEN,
    }
    response = admin_client.get(url("broker_changelist"))
    assert response.status_code == 503
    body = response.content.decode()
    assert "Redis cannot be reached" in body and "hunter2" not in body
    live = admin_client.get(url("overview_live"))
    assert live.status_code == 503 and "hunter2" not in live.content.decode()
    scrape = Client().get("/broker/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scrape.status_code == 200
    assert "redis_broker_redis_up 0.0" in scrape.content.decode()


def test_lists_page_finds_consumer_sets_on_every_master_under_a_prefix(
    admin_client: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Tests that ``{app:<list>}:consumers`` sets are found on every master (the SCAN glob
    follows the prefix into the hash tag), with their dead workers' processing lists."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    lists = [name.removeprefix("app:") for name in spread(redis_client, "app:jobs.", 1)]
    for name in lists:
        redis_client.rpush(prefixed("app:", name), wire.encode_message(1))
        redis_client.rpush(
            prefixed("app:", processing_list_name(name, "w-dead")), wire.encode_message(2)
        )
        redis_client.sadd(prefixed("app:", list_consumers_name(name)), "w-dead")
    redis_client.sadd(list_consumers_name("other"), "w9")  # no prefix: another app's
    response = admin_client.get(url("lists"))
    listing = response.context["listing"]
    assert [s.name for s in listing.lists] == sorted(lists)
    assert listing.scan_complete
    assert all(
        [(p.consumer, p.length) for p in s.processing] == [("w-dead", 1)] for s in listing.lists
    )
    name = lists[0]
    moved = admin_client.post(url("requeue_processing", stream=name, consumer="w-dead"))
    assert moved.status_code == 302
    assert redis_client.llen(prefixed("app:", name)) == 2


def test_pubsub_page_shows_sharded_channels_of_every_master_and_classic_ones(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that SSUBSCRIBEd channels on each master are listed as sharded with their
    PUBSUB SHARDNUMSUB counts, and a classic subscription with its NUMSUB, apart."""
    channels = spread(redis_client, "chat.", per_master=1)
    sharded: Any = redis_client.pubsub()
    classic: Any = redis_client.pubsub()
    try:
        for channel in channels:
            sharded.ssubscribe(channel)
        classic.subscribe(channels[0])
        wait_for(
            lambda: (
                shard_counts(redis_client, channels) == [1, 1, 1]
                and redis_client.pubsub_numsub(channels[0], **nodes.every_node(redis_client))[0][1]
                == 1
            ),
            timeout=5,
            message="the subscriptions",
        )
        response = admin_client.get(url("pubsub"))
    finally:
        sharded.close()
        classic.close()
    rows = {(c.name, c.sharded): c.subscribers for c in response.context["info"].channels}
    assert rows == {**{(c, True): 1 for c in channels}, (channels[0], False): 1}
    assert "(sharded)" in response.content.decode()


def shard_counts(client: Any, channels: list[str]) -> list[int]:
    """Return each channel's sharded subscribers, asked of the master of its slot."""
    counts = []
    for channel in channels:
        master = client.get_node_from_key(channel)
        reply = client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=master)
        counts.append(int(reply[0][1]))
    return counts


def test_channel_consumers_on_a_cluster_are_shown_with_their_sharded_subscription(
    admin_client: Client, redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that a live worker's channel consumer shows as SSUBSCRIBE, seen once a sharded
    subscriber holds its channel, whichever master owns it."""
    channels = spread(redis_client, "audit.", per_master=1)
    beat(
        redis_broker_url,
        "w-chan",
        *(channel_spec(channel, f"on_{n}") for n, channel in enumerate(channels)),
    )
    response = admin_client.get(url("pubsub"))
    assert [s.seen for s in response.context["subscriptions"]] == [False, False, False]
    subscriber: Any = redis_client.pubsub()
    try:
        subscriber.ssubscribe(*channels[:2])
        wait_for(lambda: shard_counts(redis_client, channels[:2]) == [1, 1], timeout=5)
        response = admin_client.get(url("pubsub"))
    finally:
        subscriber.close()
    rows = {s.subscription: s for s in response.context["subscriptions"]}
    assert [rows[c].seen for c in channels] == [True, True, False]
    assert all(rows[c].sharded for c in channels)
    assert "SSUBSCRIBE" in response.content.decode()


def test_workers_page_shows_heartbeats_on_a_cluster(
    admin_client: Client, redis_broker_url: str, redis_client: redis.Redis
) -> None:
    """Tests that a heartbeat (its key and the index may live on different masters) shows
    on the workers page, with a list consumer of a list on any master."""
    assert isinstance(redis_client, RedisCluster)
    beat(redis_broker_url, "w-1", list_spec("jobs.a"), list_spec("jobs.b", name="other"))
    rows = admin_client.get(url("workers")).context["workers"]
    assert [(r.info.name, [c.source for c in r.consumers]) for r in rows] == [
        ("w-1", ["jobs.a", "jobs.b"])
    ]


def test_server_facts_add_up_the_masters(redis_client: redis.Redis) -> None:
    """Tests that the overview's memory and clients are the sums over the masters."""

    def masters_info() -> list[dict[str, Any]]:
        replies = redis_client.info(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
        return list(replies.values())

    queries.server_info(get_client())  # both clients connect to every master first
    masters_info()
    server = queries.server_info(get_client())
    infos = masters_info()
    assert server.mode == "cluster, 3 masters"
    assert server.connected_clients == sum(int(info["connected_clients"]) for info in infos)
    assert server.uptime_seconds <= min(int(info["uptime_in_seconds"]) for info in infos)
    used = sum(int(info["used_memory"]) for info in infos)
    number, unit = float(server.used_memory_human[:-1]), server.used_memory_human[-1]
    shown = number * 1024 ** "BKMGT".index(unit)
    assert 0.8 * used <= shown <= 1.2 * used  # memory moves a little between the two reads
