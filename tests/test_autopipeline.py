"""Auto-pipelining: concurrent async calls on one loop share one write, and each caller
still gets its own entry id or its own error."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.test import override_settings

from redis_broker import BrokerUnavailable, apublish, apush
from redis_broker.autopipeline import autopipeline
from redis_broker.connection import aclose_async_redis, get_async_redis
from redis_broker.testing import RedisServer
from redis_broker.wire import fields_as_text
from tests.helpers import single_node_only

pytestmark = single_node_only  # a cluster client routes each call by its key instead


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
