"""Stream consumers on a Redis Cluster: streams on every master, one worker process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import redis.cluster
from django.conf import settings
from django.test import override_settings

from redis_broker import Reject, StreamMessage, publish, publish_many
from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.consumers.worker import is_failing_over
from redis_broker.naming import dead_letter_name, key_slot
from redis_broker.testing import RedisClusterServer

pytestmark = pytest.mark.usefixtures("cluster_session")


@pytest.mark.slow
def test_one_runner_consumes_streams_served_by_every_master_and_dead_letters_beside_them(
    redis_cluster_factory: Callable[..., RedisClusterServer],
) -> None:
    """Tests one worker process reading streams on three masters: each entry handled
    once, nothing pending, and a rejected entry's dead letter in its stream's slot."""
    cluster = redis_cluster_factory(3)
    names = cluster.spread_names("spread.orders.", 3)
    seen: list[tuple[str, int]] = []

    async def handle(message: StreamMessage) -> None:
        if message.data["n"] == -1:
            raise Reject("refused on purpose")
        seen.append((message.stream, message.data["n"]))

    broker = {**settings.REDIS_BROKER, "URL": cluster.url, "CLUSTER": True}
    with override_settings(REDIS_BROKER=broker):
        for name in names:
            publish_many(name, [{"n": n} for n in range(100)])
        rejected = publish(names[0], {"n": -1})
        specs = [
            StreamConsumerSpec(func=handle, stream=name, group="g", name=f"c{i}")
            for i, name in enumerate(names)
        ]
        runner = ConsumerRunner(specs=specs, burst=True, relay_outbox=False, echo=lambda _: None)
        assert runner.run() == 0
        dead_letters = dead_letter_name(names[0], ":dlq")
    assert sorted(seen) == sorted((name, n) for name in names for n in range(100))
    client = redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        assert all(client.xpending(name, "g")["pending"] == 0 for name in names)
        assert dead_letters == "{" + names[0] + "}:dlq"
        assert key_slot(dead_letters) == key_slot(names[0])
        ((_, dead),) = client.xrange(dead_letters)
        assert dead["original_id"] == rejected
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "failing_over"),
    [
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing"), True),
        (redis.exceptions.MovedError("3999 127.0.0.1:7001"), True),
        (
            redis.ResponseError(
                "Command # 2 (XREADGROUP ...) of pipeline caused error: ('UNBLOCKED force "
                "unblock from blocking operation, instance state changed (master -> replica?)',)"
            ),
            True,
        ),
        (redis.ResponseError("Command # 1 (XADD) of pipeline caused error: CLUSTERDOWN"), True),
        (redis.ResponseError("NOGROUP No such key 'orders' or consumer group 'g'"), False),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (
            redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica"),
            False,
        ),
        (ValueError("a bug"), False),
    ],
)
def test_failover_replies_are_told_apart_from_other_errors(
    error: BaseException, failing_over: bool
) -> None:
    """Tests which errors the worker retries as a failover (one warning, no traceback)."""
    assert is_failing_over(error) is failing_over
