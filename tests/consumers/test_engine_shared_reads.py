"""Tests of the stream consumers' shared reads: the consumers of one group on many streams,
read by one XREADGROUP per round (``streams.GroupReads``), reading ahead, raw replies."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from redis_broker import publish, publish_many, wire
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.consumers.streams import GroupWorker
from redis_broker.exceptions import MalformedEntry
from redis_broker.testing import wait_for
from tests.helpers import single_node_only

from .helpers import dead_letters

pytestmark = pytest.mark.usefixtures("fast_consumers")

STREAMS = [f"test.many.{n}" for n in range(12)]


class Recorder:
    """Records the ``n`` of each message its async ``handle`` gets, per stream."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)

        async def handle(message: StreamMessage) -> None:
            self.seen[message.stream].append(message.data["n"])

        self.handle = handle

    def total(self) -> int:
        """Return how many messages were handled."""
        return sum(len(ns) for ns in self.seen.values())


def specs_for(
    recorder: Recorder, streams: list[str], group: str = "many"
) -> list[StreamConsumerSpec]:
    """Return one consumer per stream, all in ``group``, each handling one call at a time."""
    return [
        StreamConsumerSpec(
            func=recorder.handle, stream=stream, group=group, name=f"c{n}-{group}", concurrency=1
        )
        for n, stream in enumerate(streams)
    ]


@contextmanager
def running(recorder: Recorder, streams: list[str]) -> Iterator[ConsumerRunner]:
    """Run a consumer per stream in a thread until the block ends; the runner has started
    when the block begins, and has stopped, its thread joined, when it ends."""
    runner = ConsumerRunner(
        specs=specs_for(recorder, streams), relay_outbox=False, echo=lambda line: None
    )
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_for(lambda: runner.health is not None and runner.health.started, message="start")
        yield runner
    finally:
        runner.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()


def run_burst(specs: list[StreamConsumerSpec]) -> tuple[int, ConsumerRunner]:
    """Run ``specs`` until nothing is left; return the status and the runner."""
    runner = ConsumerRunner(specs=specs, burst=True, relay_outbox=False, echo=lambda line: None)
    return runner.run(), runner


def pending(client: redis.Redis, streams: list[str], group: str = "many") -> int:
    """Return the entries pending in ``group`` over ``streams``."""
    return sum(int(client.xpending(stream, group)["pending"]) for stream in streams)


def test_consumers_of_one_group_share_rounds_and_keep_each_streams_order(
    redis_client: redis.Redis, redis_broker_cluster: bool
) -> None:
    """Tests 12 streams of 250 entries: each handled once, in its stream's order, all acked,
    read by rounds shared by the 12 consumers (far fewer than one read per batch each)."""
    for stream in STREAMS:
        publish_many(stream, [{"n": n} for n in range(250)])
    recorder = Recorder()
    code, runner = run_burst(specs_for(recorder, STREAMS))
    assert code == 0
    assert {stream: recorder.seen[stream] for stream in STREAMS} == {
        stream: list(range(250)) for stream in STREAMS
    }
    assert pending(redis_client, STREAMS) == 0
    workers = [w for w in runner.workers if isinstance(w, GroupWorker)]
    shared = {id(w.reads) for w in workers}
    # One per group; on a cluster one per group and hash slot (one command, one node).
    assert len(shared) == (len({w.key_bytes for w in workers}) if redis_broker_cluster else 1)


def test_consumers_of_different_groups_on_one_stream_each_get_every_entry(
    redis_client: redis.Redis,
) -> None:
    """Tests that two groups on the same streams are read apart: each sees every entry."""
    streams = STREAMS[:3]
    for stream in streams:
        publish_many(stream, [{"n": n} for n in range(120)])
    first, second = Recorder(), Recorder()
    code, runner = run_burst(
        specs_for(first, streams, group="one") + specs_for(second, streams, group="two")
    )
    assert code == 0
    for recorder in (first, second):
        assert {s: recorder.seen[s] for s in streams} == {s: list(range(120)) for s in streams}
    reads = {w.group: w.reads for w in runner.workers if isinstance(w, GroupWorker)}
    assert reads["one"] is not reads["two"]


def test_a_malformed_entry_in_one_of_many_streams_is_dead_lettered_and_all_else_flows(
    redis_client: redis.Redis,
) -> None:
    """Tests that a bad entry read in a shared round is dead-lettered with its fields kept,
    while its stream's later entries and the other streams' are handled and acked."""
    streams = STREAMS[:4]
    for stream in streams:
        publish(stream, {"n": 0})
    bad = redis_client.xadd(streams[2], {"data": "{not json", "extra": "kept"})
    for stream in streams:
        publish(stream, {"n": 1})
    recorder = Recorder()
    code, _ = run_burst(specs_for(recorder, streams))
    assert code == 0
    assert {s: recorder.seen[s] for s in streams} == {s: [0, 1] for s in streams}
    dead = redis_client.xrange(dead_letters(streams[2]))
    assert [fields["original_id"] for _, fields in dead] == [bad]
    assert dead[0][1]["extra"] == "kept"
    assert "MalformedEntry" in dead[0][1]["error"]
    assert pending(redis_client, streams) == 0


def test_an_idle_consumer_among_many_gets_a_new_entry_without_waiting_out_block_ms(
    redis_client: redis.Redis,
) -> None:
    """Tests the blocking round: eight idle consumers wait in one XREADGROUP; an entry on
    any stream wakes it, and each stream's entry reaches its own handler."""
    streams = STREAMS[:8]
    recorder = Recorder()
    with running(recorder, streams):
        for n, stream in enumerate(reversed(streams)):
            publish(stream, {"n": n})
            wait_for(lambda stream=stream: recorder.seen[stream], message=f"the entry on {stream}")
    assert {s: recorder.seen[s] for s in streams} == {
        s: [n] for n, s in enumerate(reversed(streams))
    }
    assert pending(redis_client, streams) == 0


# On a cluster the shared reads are per hash slot, so 110 streams in 110 slots are 110
# blocking reads again (the README says so); the claim tested here is the single node's.
@single_node_only
def test_more_consumers_than_the_connection_pool_holds_all_wait_and_get_their_entries(
    redis_client: redis.Redis,
) -> None:
    """Tests 110 idle consumers in one process (redis-py's pool holds 100 connections): they
    wait in shared reads, not in a blocked connection each, so none fails with "Too many
    connections" and an entry on any of their streams is handled."""
    streams = [f"test.pool.{n}" for n in range(110)]
    recorder = Recorder()
    with running(recorder, streams) as runner:
        chosen = streams[::10]
        for stream in chosen:
            publish(stream, {"n": 7})
        wait_for(
            lambda: all(recorder.seen[s] == [7] for s in chosen), message="every chosen stream"
        )
        assert all(w.readiness_problem() is None for w in runner.workers)
    assert recorder.total() == len(streams[::10])


def test_a_warm_stop_handles_and_acks_every_entry_read_including_a_batch_read_ahead(
    redis_client: redis.Redis,
) -> None:
    """Tests stopping mid-backlog: whatever was read (the batch read ahead too) is handled
    and acked before the runner returns 0, so nothing is left pending for a reclaim."""
    streams = STREAMS[:2]
    for stream in streams:
        publish_many(stream, [{"n": n} for n in range(3000)])
    recorder = Recorder()
    runner = ConsumerRunner(
        specs=specs_for(recorder, streams), relay_outbox=False, echo=lambda line: None
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    try:
        wait_for(lambda: recorder.total() >= 300, message="300 entries handled")
    finally:
        runner.stop()
        thread.join(timeout=15)
    assert result == [0]
    assert pending(redis_client, streams) == 0
    for stream in streams:  # a prefix of each stream, in order
        assert recorder.seen[stream] == list(range(len(recorder.seen[stream])))


def test_a_stream_whose_group_is_lost_is_the_only_one_warned_about(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests NOGROUP in a shared round: the round is asked again stream by stream, so only
    the consumer of the stream that lost its group warns and recreates it; the others
    go on."""
    streams = STREAMS[:5]
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="redis_broker")
    with running(recorder, streams):
        redis_client.xgroup_destroy(streams[3], "many")
        for stream in streams:
            publish(stream, {"n": 1})
        wait_for(
            lambda: all(recorder.seen[s] == [1] for s in streams), message="every stream's entry"
        )
    lost = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert len(lost) == 1 and streams[3] in lost[0]


def test_flat_field_lists_of_raw_replies_decode_like_redis_py_mappings() -> None:
    """Tests that ``wire`` decodes an entry given as ``[field, value, ...]`` (a raw reply,
    as the shared reads get it) exactly as the mapping redis-py would have built."""
    fields = wire.encode_entry({"n": 1}, type="t", headers={"h": "v"})
    flat = [part.encode() for pair in fields.items() for part in pair]
    mapping = {key.encode(): value.encode() for key, value in fields.items()}
    assert wire.decode_entry_parts(flat) == wire.decode_entry_parts(mapping)
    with pytest.raises(MalformedEntry):
        wire.decode_entry_parts([b"data", b"\xff"])
