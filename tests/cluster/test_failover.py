"""Stream consumers through a Redis Cluster failover: a master killed under load.

Three masters with one replica each (``cluster-node-timeout`` 1 s), ``WAIT_REPLICAS=1``
so that a ``publish()`` that returned is on a replica too, one consumer running in this
process and a publisher thread writing all along. The master that owns the stream's
slot is killed with SIGKILL; its replica is promoted; the dead node is then restarted
and rejoins as the new master's replica (as a supervisor would restart it).

What is promised, and checked here: the consumer handles again within 10 s of the kill;
every entry whose ``publish()`` returned is handled (publishes that raised while the
cluster had no replica to promise with are counted, not required); the group and its
pending entries survive on the promoted replica; and a replica that had not caught up
with the group (so the promoted node has the entries but no group) makes the worker
create the group again instead of stopping.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.cluster
from django.conf import settings
from django.test import override_settings

from redis_broker import StreamMessage, publish
from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.exceptions import BrokerUnavailable
from redis_broker.testing import RedisClusterServer, RedisServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cluster_session")]

STREAM = "failover.orders"
#: The output shares the stream's hash tag: each ack and its output are one script.
OUTPUT = "{failover.orders}:handled"
GROUP = "billing"
#: Abandoned entries are reclaimed after this long: longer than a promotion, so the
#: ghost consumer's entries are still pending (with it) on the promoted replica.
CLAIM_IDLE_MS = 8000
#: The promise: handling resumes this soon after the master is killed.
RESUME_WITHIN = 10.0

# Create a group on the master alone: the script's effects are not replicated, so the
# replica never hears of the group (a replica that had not caught up when it was promoted).
_GROUP_ON_MASTER_ONLY = """
redis.set_repl(redis.REPL_NONE)
return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
"""


@dataclass
class Handled:
    """What the handler saw, in order: (monotonic time, entry id, delivery count, data)."""

    calls: list[tuple[float, str, int, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, message: StreamMessage) -> dict[str, str]:
        """Record the call; return the entry id, the output's data."""
        self.calls.append((time.monotonic(), message.id, message.delivery_count, message.data))
        return {"entry": message.id}

    def ids(self) -> set[str]:
        return {entry_id for _, entry_id, _, _ in self.calls}

    def first_after(self, moment: float) -> float | None:
        """Return when the first entry published after ``moment`` was handled."""
        times = [at for at, _, _, data in self.calls if data.get("at", 0) > moment]
        return min(times) if times else None


class Publisher(threading.Thread):
    """Publish to ``stream`` without pause until stopped, noting what returned and what raised."""

    def __init__(self, stream: str) -> None:
        super().__init__(daemon=True, name="publisher")
        self.stream = stream
        self.returned: list[tuple[float, str]] = []  # (when it returned, entry id)
        self.refused: list[str] = []  # the errors of publishes that raised
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            started = time.monotonic()
            try:
                entry_id = publish(self.stream, {"n": n, "at": started})
            except BrokerUnavailable as exc:  # WriteRefused included
                self.refused.append(type(exc).__name__)
            else:
                self.returned.append((time.monotonic(), entry_id))
            self.halt.wait(0.005)  # a steady stream, not a flood on two cores

    def returned_after(self, moment: float) -> int:
        return sum(1 for at, _ in self.returned if at > moment)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


@pytest.fixture
def cluster(
    redis_cluster_factory: Callable[..., RedisClusterServer],
) -> Iterator[RedisClusterServer]:
    """Return a 3-master cluster with a replica each, with the broker pointed at it."""
    cluster = redis_cluster_factory(3, 1)
    consumers = {"BLOCK_MS": 100, "CLAIM_IDLE_MS": CLAIM_IDLE_MS, "STATUS_INTERVAL": 60.0}
    broker = {
        **settings.REDIS_BROKER,
        "URL": cluster.url,
        "CLUSTER": True,
        "WAIT_REPLICAS": 1,
        "WAIT_TIMEOUT_MS": 1000,
        "CONSUMERS": consumers,
    }
    with override_settings(REDIS_BROKER=broker):
        yield cluster


@pytest.fixture
def client(cluster: RedisClusterServer) -> Iterator[redis.cluster.RedisCluster]:
    """Return a cluster client of the test's cluster (text replies), for assertions."""
    cluster_client = redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
    yield cluster_client
    cluster_client.close()


def node(server: RedisServer) -> redis.Redis:
    """Return a client of one node (text replies), for what only that node says."""
    return redis.Redis(port=server.port, decode_responses=True)


def replica_of(cluster: RedisClusterServer, master: RedisServer) -> RedisServer:
    """Return the running replica of ``master``."""
    for server in cluster.servers:
        if server is master or server.process is None:
            continue
        info = node(server).info("replication")
        if info["role"] == "slave" and info["master_port"] == master.port:
            return server
    raise AssertionError(f"no replica of {master.port}")


def fail_over(cluster: RedisClusterServer, key: str) -> tuple[RedisServer, RedisServer, float]:
    """Kill the master of ``key``; return it, its promoted replica and when it was killed."""
    old = cluster.master_of(key)
    killed_at = time.monotonic()
    cluster.kill(old)

    def promoted() -> RedisServer | None:
        try:
            new = cluster.master_of(key)
            return new if new is not old and node(new).ping() else None
        except redis.RedisError:
            return None

    new = wait_for(promoted, timeout=20, message="a replica promoted")
    return old, new, killed_at


def rejoin(cluster: RedisClusterServer, server: RedisServer) -> None:
    """Restart a killed node: it rejoins as a replica of whoever took its slots."""
    server.start()
    wait_for(cluster.healthy, timeout=30, message="the cluster healed")


def test_consumer_resumes_on_the_promoted_replica_and_loses_no_returned_publish(
    cluster: RedisClusterServer,
    client: redis.cluster.RedisCluster,
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests a master killed under load: handling resumes within 10 s, every returned
    publish is handled and output, the group and a ghost's pending entries survive."""
    before = [publish(STREAM, {"n": -n}) for n in range(10)]
    # A consumer that took five entries and died: they stay pending with it. WAIT on the
    # same connection: the group and the ghost's delivery are on the replica too.
    pipe = node(cluster.master_of(STREAM)).pipeline(transaction=False)
    pipe.xgroup_create(STREAM, GROUP, id="0")
    pipe.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=5)
    pipe.execute_command("WAIT", 1, 1000)
    _, [[_, taken]], acknowledged = pipe.execute()
    assert acknowledged == 1
    ghost_ids = {entry_id for entry_id, _ in taken}

    handled = Handled()
    spec = StreamConsumerSpec(
        func=handled.handle, stream=STREAM, group=GROUP, name="bill", output=OUTPUT
    )
    runner = serve(spec)
    publisher = Publisher(STREAM)
    publisher.start()
    try:
        wait_for(lambda: len(handled.calls) >= 40, message="handling under load")
        old, new, killed_at = fail_over(cluster, STREAM)
        promoted_at = time.monotonic()
        # The group and the ghost's pending entries came through on the promoted replica
        # (or the worker already reclaimed them there: a second delivery, counted).
        assert GROUP in [g["name"] for g in node(new).xinfo_groups(STREAM)]
        rows = node(new).xpending_range(STREAM, GROUP, "-", "+", 10_000)
        kept = {
            row["message_id"]
            for row in rows
            if row["consumer"] == "ghost" or row["times_delivered"] >= 2
        }
        reclaimed = {i for _, i, count, _ in handled.calls if count >= 2}
        assert ghost_ids <= kept | reclaimed, (kept, reclaimed)

        rejoin(cluster, old)
        healed_at = time.monotonic()
        wait_for(
            lambda: publisher.returned_after(healed_at) >= 30, message="publishes after healing"
        )
    finally:
        publisher.stop()

    returned = {entry_id for _, entry_id in publisher.returned} | set(before)
    wait_for(lambda: returned <= handled.ids(), timeout=30, message="every returned publish")
    resumed = handled.first_after(killed_at)
    assert resumed is not None and resumed - killed_at <= RESUME_WITHIN
    for entry_id in ghost_ids:  # reclaimed from the ghost's pending list: a second delivery
        assert max(c for _, i, c, _ in handled.calls if i == entry_id) >= 2

    def settled() -> bool:
        outputs = {json.loads(fields["data"])["entry"] for _, fields in client.xrange(OUTPUT)}
        return client.xpending(STREAM, GROUP)["pending"] == 0 and returned <= outputs

    wait_for(settled, timeout=30, message="everything acked with its output")
    group = next(g for g in node(new).xinfo_groups(STREAM) if g["name"] == GROUP)
    assert group["pending"] == 0
    assert runner.workers[0].stats.processed >= len(returned)
    print(
        f"\nfailover: promoted {promoted_at - killed_at:.2f} s after the kill, handling "
        f"resumed after {resumed - killed_at:.2f} s, healed after {healed_at - killed_at:.2f} s; "
        f"{len(publisher.returned)} publishes returned, {len(publisher.refused)} raised "
        f"({', '.join(sorted(set(publisher.refused))) or 'none'}); "
        f"{len(handled.calls)} calls for {len(handled.ids())} entries"
    )


def test_a_promoted_replica_without_the_group_gets_it_created_again(
    cluster: RedisClusterServer,
    client: redis.cluster.RedisCluster,
    serve: Callable[..., ConsumerRunner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tests NOGROUP after a failover: the promoted replica never got the group, so the
    worker creates it again and handles the stream from its start, then new entries."""
    stream = "failover.lost"
    before = {publish(stream, {"n": n}) for n in range(20)}
    client.eval(_GROUP_ON_MASTER_ONLY, 1, stream, GROUP)
    master = cluster.master_of(stream)
    replica = replica_of(cluster, master)
    handled = Handled()
    serve(StreamConsumerSpec(func=handled.handle, stream=stream, group=GROUP, name="lost"))
    wait_for(lambda: handled.ids() == before, message="the entries before the kill")
    reader = node(replica)
    reader.execute_command("READONLY")
    assert reader.xlen(stream) == 20 and reader.xinfo_groups(stream) == []  # not caught up

    _, new, killed_at = fail_over(cluster, stream)
    wait_for(
        lambda: before <= {i for at, i, _, _ in handled.calls if at > killed_at},
        timeout=RESUME_WITHIN,
        message="the stream handled again from its start",
    )
    resumed = min(at for at, _, _, _ in handled.calls if at > killed_at)
    assert resumed - killed_at <= RESUME_WITHIN
    assert [g["name"] for g in node(new).xinfo_groups(stream)] == [GROUP]
    assert any("is gone" in r.getMessage() for r in caplog.records), caplog.text

    rejoin(cluster, master)
    after = {publish(stream, {"n": 100 + n}) for n in range(5)}
    wait_for(lambda: after <= handled.ids(), message="entries published after the failover")
    wait_for(lambda: client.xpending(stream, GROUP)["pending"] == 0, message="all acked")
    print(f"\nNOGROUP failover: handling resumed {resumed - killed_at:.2f} s after the kill")


def test_a_planned_failover_redirects_the_worker_and_recreates_a_group_it_lacks(
    cluster: RedisClusterServer,
    client: redis.cluster.RedisCluster,
    serve: Callable[..., ConsumerRunner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tests CLUSTER FAILOVER under a running worker: its blocked read on the old master
    is ended (UNBLOCKED ... master -> replica), its next commands follow the slot to the
    new master (MOVED), which lacks the group: the worker creates it again with one
    warning and goes on."""
    stream = "failover.planned"
    before = {publish(stream, {"n": n}) for n in range(10)}
    client.eval(_GROUP_ON_MASTER_ONLY, 1, stream, GROUP)
    master = cluster.master_of(stream)
    replica = replica_of(cluster, master)
    handled = Handled()
    serve(StreamConsumerSpec(func=handled.handle, stream=stream, group=GROUP, name="planned"))
    wait_for(lambda: handled.ids() == before, message="the entries before the failover")

    switched_at = time.monotonic()
    node(replica).execute_command("CLUSTER", "FAILOVER")  # waits for the replica to catch up
    wait_for(lambda: cluster.master_of(stream) is replica, message="the replica took over")
    wait_for(
        lambda: before <= {i for at, i, _, _ in handled.calls if at > switched_at},
        timeout=RESUME_WITHIN,
        message="the stream handled again from its start",
    )
    resumed = min(at for at, _, _, _ in handled.calls if at > switched_at)
    after = {publish(stream, {"n": 100 + n}) for n in range(5)}  # the old master replicates
    wait_for(lambda: after <= handled.ids(), message="entries published after the failover")
    wait_for(lambda: client.xpending(stream, GROUP)["pending"] == 0, message="all acked")
    assert [g["name"] for g in node(replica).xinfo_groups(stream)] == [GROUP]
    warnings = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    print(f"\nplanned failover: handling resumed {resumed - switched_at:.2f} s after it began")
