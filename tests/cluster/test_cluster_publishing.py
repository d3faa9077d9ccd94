"""Publishing on a Redis Cluster: batches across slots, and the WAIT promise."""

from __future__ import annotations

import pytest
import redis
import redis.cluster
from django.test import override_settings

from redis_broker import WriteRefused, apublish, publish, publish_many, wire
from redis_broker.connection import aclose_async_redis, get_redis
from redis_broker.naming import key_slot
from redis_broker.publishing import publish_encoded
from redis_broker.testing import RedisClusterServer


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_session")
def test_a_batch_over_streams_on_every_master_lands_in_order(
    redis_cluster_factory: object,
) -> None:
    """Tests that a batch is split per node (not refused) and ids come back in order."""
    cluster: RedisClusterServer = redis_cluster_factory()  # type: ignore[operator]
    names = cluster.spread_names("spread.orders.", 9)
    assert len({key_slot(name) for name in names}) > 1
    entries = [(name, wire.encode_entry({"i": i})) for i, name in enumerate(names * 3)]
    with override_settings(REDIS_BROKER={"URL": cluster.url, "CLUSTER": True}):
        ids = publish_encoded(entries)
        client = get_redis()
        for (name, fields), entry_id in zip(entries, ids, strict=True):
            ((got_id, got),) = client.xrange(name, entry_id, entry_id)
            assert wire.reply_text(got_id) == entry_id
            assert wire.fields_as_text(got)[wire.EVENT_ID] == fields[wire.EVENT_ID]
        assert publish_many(names[0], [1, 2, 3]) and client.xlen(names[0]) == 6


@pytest.mark.slow
@pytest.mark.usefixtures("cluster_session")
async def test_publish_waits_for_a_replica_and_refuses_when_too_few_acknowledge(
    redis_cluster_factory: object,
) -> None:
    """Tests WAIT_REPLICAS: one replica acknowledges; asking for two raises WriteRefused."""
    cluster: RedisClusterServer = redis_cluster_factory(3, 1)  # type: ignore[operator]
    base = {"URL": cluster.url, "CLUSTER": True, "WAIT_TIMEOUT_MS": 200}
    with override_settings(REDIS_BROKER={**base, "WAIT_REPLICAS": 1}):
        entry_id = publish("orders", {"n": 1})
        assert await apublish("orders", {"n": 2}) > entry_id
        assert len(publish_many("orders", [3, 4])) == 2
        replica = next(server for server in cluster.servers if _replicates(server.port, "orders"))
        client = redis.Redis(port=replica.port)
        client.execute_command("READONLY")
        assert client.xlen("orders") == 4  # on the replica when publish() returned
        client.close()
        await aclose_async_redis()
    with override_settings(REDIS_BROKER={**base, "WAIT_REPLICAS": 2}):
        with pytest.raises(WriteRefused, match="1 of 2 replicas"):
            publish("orders", {"n": 5})
        with pytest.raises(WriteRefused, match="1 of 2 replicas"):
            await apublish("orders", {"n": 6})
        await aclose_async_redis()


def _replicates(port: int, key: str) -> bool:
    """Return True when the replica on ``port`` replicates the master of ``key``'s slot."""
    client = redis.Redis(port=port, decode_responses=True)
    try:
        slot = key_slot(key)
        for start, end, _master, *replicas in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return any(int(replica[1]) == port for replica in replicas)
        return False
    finally:
        client.close()


def test_wait_replicas_on_a_redis_without_replicas_refuses_the_write(
    redis_broker_url: str, redis_broker_cluster: bool
) -> None:
    """Tests the promise on one Redis too: no replica, no promise, WriteRefused."""
    if redis_broker_cluster:
        pytest.skip("the session's cluster has no replicas either; tested above")
    settings = {"URL": redis_broker_url, "WAIT_REPLICAS": 1, "WAIT_TIMEOUT_MS": 50}
    with override_settings(REDIS_BROKER=settings):
        with pytest.raises(WriteRefused, match="0 of 1 replicas"):
            publish("orders", {"n": 1})
        assert get_redis().xlen("orders") == 1  # on the master, but not promised
