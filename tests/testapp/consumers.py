"""Consumers the runner tests drive through ``runconsumers`` (found by autodiscovery).

Their behaviour is scripted by the payload, so one consumer serves every test:
``{"fail_times": n}`` raises on the first n deliveries, ``{"reject": true}`` raises
``Reject``, ``{"sleep_ms": m}`` takes m milliseconds (each such call's start and end
times are appended to ``test:spans``), ``{"stuck": true}`` never returns, and
``{"block_loop_s": s}`` (async consumer only) blocks the whole event loop for s seconds.
Each call is counted in ``test:attempts:<event_id>``; each success is appended to
``test:handled`` as ``"<event_id> <pid> <delivery_count>"``, so tests can check who
handled what, and how often.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from redis_broker import (
    Reject,
    Reply,
    StreamMessage,
    channel_consumer,
    list_consumer,
    stream_consumer,
)
from redis_broker.connection import get_async_redis, get_redis

from .models import Customer

HANDLED = "test:handled"
SPANS = "test:spans"


def attempts_key(event_id: str) -> str:
    """Return the key counting the handler calls for one event."""
    return f"test:attempts:{event_id}"


def _verdict(message: StreamMessage, attempts: int) -> None:
    data = message.data if isinstance(message.data, dict) else {}
    if data.get("reject"):
        raise Reject("the payload asked to be rejected")
    if attempts <= int(data.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {attempts}")


@stream_consumer("test.orders", group="workers")
async def scripted(message: StreamMessage) -> None:
    """Handle ``test.orders`` as the payload says (async)."""
    client = get_async_redis()
    attempts = await client.incr(attempts_key(message.event_id))
    data = message.data if isinstance(message.data, dict) else {}
    if data.get("stuck"):
        await asyncio.Event().wait()  # never set: a handler stuck forever
    if block_s := data.get("block_loop_s", 0):
        time.sleep(block_s)  # noqa: ASYNC251 - the mistake under test: the loop stops
    if sleep_ms := data.get("sleep_ms", 0):
        started = time.time()
        await asyncio.sleep(sleep_ms / 1000)
        await client.rpush(SPANS, f"{started} {time.time()}")
    _verdict(message, attempts)
    await client.rpush(HANDLED, f"{message.event_id} {os.getpid()} {message.delivery_count}")


@stream_consumer("test.sync", group="workers")
def scripted_sync(message: StreamMessage) -> None:
    """Handle ``test.sync`` as the payload says, in a thread, touching the ORM."""
    client = get_redis()
    attempts = client.incr(attempts_key(message.event_id))
    data = message.data if isinstance(message.data, dict) else {}
    if data.get("stuck"):
        time.sleep(3600)  # a handler stuck for good (only ever run in a subprocess)
    Customer.objects.count()  # the ORM works here: sync handlers run with a connection
    if sleep_ms := data.get("sleep_ms", 0):
        started = time.time()
        time.sleep(sleep_ms / 1000)
        client.rpush(SPANS, f"{started} {time.time()}")
    _verdict(message, attempts)
    client.rpush(HANDLED, f"{message.event_id} {os.getpid()} {message.delivery_count}")


PRICES = "test:prices"
JOBS = "test.jobs"
# In the input's hash slot (its name as a hash tag), so the output works on a cluster too.
BILLED = "{test.billing}.billed"


@channel_consumer("test.prices.{symbol}")
async def on_price(message: StreamMessage, symbol: str) -> None:
    """Record ``symbol`` and the event of each price message in ``test:prices``."""
    await get_async_redis().rpush(PRICES, f"{symbol} {message.event_id} {message.stream}")


def _handle_as_scripted(message: StreamMessage) -> dict[str, Any]:
    """Count the call, sleep and fail as the payload says, record a success; return the data."""
    client = get_redis()
    attempts = client.incr(attempts_key(message.event_id))
    data = message.data if isinstance(message.data, dict) else {}
    if sleep_ms := data.get("sleep_ms", 0):
        time.sleep(sleep_ms / 1000)
    _verdict(message, attempts)
    client.rpush(HANDLED, f"{message.event_id} {os.getpid()} {message.delivery_count}")
    return data


@list_consumer(JOBS, batch_size=50)
def run_job(message: StreamMessage) -> None:
    """Handle ``test.jobs`` items as the payload says (sync, like ``scripted_sync``)."""
    _handle_as_scripted(message)


@stream_consumer("test.billing", group="billing", output=BILLED)
async def bill(message: StreamMessage) -> dict[str, object] | None:
    """Return the bill of an order (appended to ``BILLED``), None for ``{"none": true}``."""
    data = message.data if isinstance(message.data, dict) else {}
    attempts = await get_async_redis().incr(attempts_key(message.event_id))
    if sleep_ms := data.get("sleep_ms", 0):
        await asyncio.sleep(sleep_ms / 1000)
    _verdict(message, attempts)
    return None if data.get("none") else {"order": data.get("n"), "pid": os.getpid()}


QUOTES = "test.quote"


@stream_consumer(QUOTES, group="pricing")
def quote(message: StreamMessage) -> Reply:
    """Answer a price request (sync), as the payload says: ``sleep_ms``, ``fail_times``..."""
    data = _handle_as_scripted(message)
    return Reply({"sku": data.get("sku"), "price": 10}, headers={"currency": "EUR"})
