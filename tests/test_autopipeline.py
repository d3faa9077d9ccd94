"""Auto-pipelining: concurrent async calls on one loop share one write, and each caller
still gets its own entry id or its own error."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from redis_broker import BrokerUnavailable, Reply, abroadcast, apublish, apush, arequest
from redis_broker.autopipeline import AutoPipeline, autopipeline
from redis_broker.connection import aclose_async_redis, get_async_redis
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.testing import RedisServer
from redis_broker.wire import fields_as_text
from tests.consumers.helpers import FAST
from tests.helpers import single_node_only

pytestmark = single_node_only  # a cluster client routes each call by its key instead


@pytest.fixture
def fast_consumers() -> Iterator[None]:
    """Run the responders of this module with the fast consumer settings (quick stops)."""
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "CONSUMERS": dict(FAST)}):
        yield


def doubler(message: StreamMessage) -> Reply:
    """A sync responder: the payload doubled."""
    return Reply(message.data * 2)


async def adoubler(message: StreamMessage) -> int:
    """An async responder."""
    return int(message.data) * 2


class Counted:
    """The batches and commands ``pipeline`` sent since this object was made."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self.pipeline = pipeline
        self.before = pipeline.batches, pipeline.commands

    @property
    def batches(self) -> int:
        return self.pipeline.batches - self.before[0]

    @property
    def commands(self) -> int:
        return self.pipeline.commands - self.before[1]


def script_loads(redis_client: redis.Redis) -> int:
    """Return how many times Redis was sent ``SCRIPT LOAD`` since its stats were reset."""
    stats: dict[str, Any] = redis_client.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


async def test_a_hundred_concurrent_calls_go_out_in_a_few_writes_each_with_its_own_id(
    redis_client: redis.Redis,
) -> None:
    """Tests coalescing: 100 apublish() in one pass → one batch; ids in order, all kept."""
    client = get_async_redis()
    pipeline = autopipeline(client)
    before = pipeline.batches, pipeline.commands
    ids = await asyncio.gather(*(apublish("orders", {"n": n}) for n in range(100)))
    assert pipeline.commands - before[1] == 100
    assert pipeline.batches - before[0] <= 2  # one pass of the loop (two at a boundary)
    entries = redis_client.xrange("orders")
    assert [entry_id for entry_id, _ in entries] == ids  # one caller, one entry, in order
    assert [fields_as_text(f)["data"] for _, f in entries] == [f'{{"n":{n}}}' for n in range(100)]
    await aclose_async_redis()


async def test_a_refused_command_fails_only_its_own_caller(redis_client: redis.Redis) -> None:
    """Tests that one WRONGTYPE among 100 concurrent calls fails that caller alone."""
    redis_client.set("not-a-stream", "x")
    calls = [apublish("orders", {"n": n}) for n in range(99)]
    calls.insert(50, apublish("not-a-stream", {"n": "bad"}))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(results[50], redis.ResponseError)
    assert "WRONGTYPE" in str(results[50])
    assert redis_client.xlen("orders") == 99
    assert await apush("jobs", {"after": "the error"}) == 1  # the connection is in step
    await aclose_async_redis()


@pytest.mark.parametrize("passes", [1, 2])
async def test_a_cancelled_caller_strands_none_of_the_others(
    redis_client: redis.Redis, passes: int
) -> None:
    """Tests cancelling the caller that leads a batch, while it collects the batch (one
    pass) or while it waits for its reply (two): every other caller still gets its id."""
    tasks = [asyncio.create_task(apublish("orders", {"n": n})) for n in range(100)]
    for _ in range(passes):
        await asyncio.sleep(0)
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    ids = results[1:]
    assert all(isinstance(entry_id, str) for entry_id in ids), results
    stored = [entry_id for entry_id, _ in redis_client.xrange("orders")]
    assert set(ids) <= set(stored) and len(stored) == len(set(stored))
    # Cancelled while collecting, its call was never sent; once sent, it ran.
    assert len(stored) == (99 if passes == 1 else 100)
    await aclose_async_redis()


@pytest.mark.slow
async def test_a_connection_lost_mid_batch_fails_each_caller_once_and_never_duplicates(
    redis_server_factory: Callable[[], RedisServer], redis_broker_url: str
) -> None:
    """Tests a Redis that dies with a batch in flight: every caller gets one error (none
    hangs, none gets two answers), and a Redis started again takes the next batch."""
    server = redis_server_factory()
    with override_settings(REDIS_BROKER={"URL": server.url, "RETRIES": 0}):
        await apublish("orders", {"warm": True})  # the pooled connection exists
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # takes the batch, answers nothing
        calls = asyncio.gather(
            *(apublish("orders", {"n": n}) for n in range(100)), return_exceptions=True
        )
        await asyncio.sleep(0)  # the batch is flushed on the next pass
        await asyncio.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.process = None
        results = await asyncio.wait_for(calls, timeout=10)
        assert len(results) == 100
        assert all(isinstance(r, BrokerUnavailable) for r in results), Counter(map(type, results))
        server.start()
        assert await apublish("orders", {"after": True})
        await aclose_async_redis()


async def test_a_connection_the_server_closed_is_reported_to_each_caller_once(
    redis_client: redis.Redis,
) -> None:
    """Tests a pooled connection killed while idle (as by a Redis restart): the batch is
    sent again on a new connection, each caller gets its id, no event_id twice."""
    await apublish("orders", {"warm": True})
    for client in redis_client.client_list():
        if client.get("name") == "django-redis-broker":
            redis_client.client_kill_filter(_id=client["id"])
    results: list[Any] = await asyncio.gather(
        *(apublish("orders", {"n": n}) for n in range(100)), return_exceptions=True
    )
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 100, [r for r in results if not isinstance(r, str)]
    stored = [fields_as_text(f)["event_id"] for _, f in redis_client.xrange("orders")]
    assert len(stored) == len(set(stored))  # no silent duplicate
    stored_ids = {entry_id for entry_id, _ in redis_client.xrange("orders")}
    assert set(ids) <= stored_ids
    assert await apublish("orders", {"after": True})  # and the next call works
    await aclose_async_redis()


@pytest.mark.usefixtures("fast_consumers")
async def test_a_hundred_concurrent_requests_share_a_few_writes_each_with_its_own_reply(
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests 100 concurrent ``arequest()`` calls to a stream responder: their scripts go
    out in one or two writes, and each caller gets the reply to its own request."""
    serve(StreamConsumerSpec(func=doubler, stream="rpc.s", group="g", name="s"))
    assert (await arequest("rpc.s", 21)).data == 42  # the responder answers
    counted = Counted(autopipeline(get_async_redis()))
    replies = await asyncio.gather(*(arequest("rpc.s", n, timeout=10) for n in range(100)))
    assert [reply.data for reply in replies] == [2 * n for n in range(100)]
    assert counted.commands == 100
    assert counted.batches <= 2  # one pass of the loop (two at a boundary)


@pytest.mark.usefixtures("fast_consumers")
async def test_requests_to_a_list_and_to_a_channel_are_coalesced_too(
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests ``via="list"`` (the responder check and the RPUSH: one script) and
    ``via="channel"`` (PUBLISH) mixed in one pass: one round trip each, one write for all."""
    serve(
        ListConsumerSpec(func=doubler, list="rpc.l", name="l"),
        ChannelConsumerSpec(func=adoubler, pattern="rpc.c", name="c", concurrency=64),
    )
    assert (await arequest("rpc.l", 1, via="list")).data == 2
    counted = Counted(autopipeline(get_async_redis()))
    calls = [arequest("rpc.l", n, via="list", timeout=10) for n in range(50)]
    calls += [arequest("rpc.c", n, via="channel", timeout=10) for n in range(50)]
    replies = await asyncio.gather(*calls)
    assert [reply.data for reply in replies] == [2 * n for n in range(50)] * 2
    assert counted.commands == 100  # one command per request (no SMEMBERS, no EXISTS)
    assert counted.batches <= 2


async def test_a_refused_durable_broadcast_fails_only_its_own_caller(
    redis_client: redis.Redis,
) -> None:
    """Tests one WRONGTYPE (a durable channel whose stream key is a string) among 100
    concurrent durable broadcasts, all in one write: that caller alone gets the error."""
    redis_client.set("user.bad", "not a stream")
    counted = Counted(autopipeline(get_async_redis()))
    calls = [abroadcast(f"user.{n % 4}", {"n": n}) for n in range(99)]
    calls.insert(50, abroadcast("user.bad", {"n": "bad"}))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(results[50], redis.ResponseError), errors
    assert "WRONGTYPE" in str(results[50])
    assert counted.commands == 100 and counted.batches <= 2
    for channel in range(4):  # every other call made its entry, in the callers' order
        data = [fields_as_text(f)["data"] for _, f in redis_client.xrange(f"user.{channel}")]
        assert data == [f'{{"n":{n}}}' for n in range(channel, 99, 4)]
    assert await abroadcast("user.0", {"after": "the error"}) == 0  # the connection is in step


async def test_a_flushed_script_is_loaded_once_and_each_caller_gets_its_result_once(
    redis_client: redis.Redis,
) -> None:
    """Tests NOSCRIPT (``SCRIPT FLUSH`` before a batch): the batch loads the script once
    and sends the refused calls again; the other commands of the batch are not resent."""
    assert await abroadcast("user.0", {"warm": True}) == 0  # the script is loaded
    redis_client.script_flush()
    redis_client.config_resetstat()
    calls: list[Any] = []
    for n in range(100):  # durable broadcasts and XADDs, interleaved in one pass
        calls.append(abroadcast(f"user.{n % 4}", {"n": n}) if n % 2 else apublish("orders", n))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert results[1::2] == [0] * 50  # no subscriber: each broadcast reached none
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["failed_calls"] >= 1  # NOSCRIPT did happen
    assert script_loads(redis_client) == 1
    assert [fields_as_text(f)["data"] for _, f in redis_client.xrange("orders")] == [
        str(n) for n in range(0, 100, 2)
    ]  # each XADD once
    for channel in (1, 3):  # each broadcast once, in the callers' order
        data = [fields_as_text(f)["data"] for _, f in redis_client.xrange(f"user.{channel}")]
        assert data == [f'{{"n":{n}}}' for n in range(channel, 100, 4)]


@pytest.mark.slow
async def test_script_calls_after_a_redis_restart_are_resent_once_and_load_it_once(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """Tests a Redis restarted under idle pooled connections: the batch of durable
    broadcasts finds its connection dead, goes again on a new one, meets NOSCRIPT there
    (the new server has no scripts), loads the script once, and each caller gets one
    result and leaves one entry."""
    server = redis_server_factory()
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "URL": server.url}):
        assert await abroadcast("user.1", {"warm": True}) == 0
        server.stop()
        server.start()
        results = await asyncio.gather(
            *(abroadcast("user.1", {"n": n}) for n in range(100)), return_exceptions=True
        )
        assert results == [0] * 100
        plain = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            data = [fields_as_text(f)["data"] for _, f in plain.xrange("user.1")]
            assert data == [f'{{"n":{n}}}' for n in range(100)]  # once each, in order
            assert script_loads(plain) == 1
        finally:
            plain.close()
        await aclose_async_redis()
