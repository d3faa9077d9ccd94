"""The relay status each process keeps in Redis: sockets, users, channels and error
counts, written by the hub as sockets come and go, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from redis_broker import abroadcast
from redis_broker.conf import get_config
from redis_broker.naming import relay_key, relays_key
from redis_broker.relay import hub as hub_module
from redis_broker.relay.hub import aclose_hub, get_hub
from redis_broker.relay.status import (
    MISSED_WRITES,
    STATUS_INTERVAL,
    ChannelSockets,
    RelayOverview,
    UserSockets,
    read_relays,
)
from redis_broker.testing import wait_for

from .helpers import receive, send, single_node, subscribe
from .test_consumer import websocket_settings

pytestmark = pytest.mark.django_db(transaction=True)


async def overview_when(
    client: redis.Redis, holds: Callable[[RelayOverview], bool], message: str
) -> RelayOverview:
    """Poll ``read_relays`` (in a thread, so the hub keeps running) until ``holds``."""

    def check() -> RelayOverview | None:
        overview = read_relays(client, prefix=get_config().key_prefix)
        return overview if holds(overview) else None

    return await asyncio.to_thread(wait_for, check, timeout=10, message=message)


async def test_status_counts_sockets_users_and_channels_while_open(
    connect, make_user, redis_client
) -> None:
    """Tests that the process's record lists its sockets, each user's sockets, anonymous
    sockets and each channel's browser subscribers, and expires on its own."""
    alice, bob = await make_user("alice"), await make_user("bob")
    tabs = [await connect(alice), await connect(alice), await connect(bob)]
    await connect()  # anonymous
    for tab in tabs:
        await subscribe(tab, "chat.lobby")
    await subscribe(tabs[2], "chat.b")
    overview = await overview_when(
        redis_client,
        lambda o: o.sockets == 4 and o.channels[:1] == (ChannelSockets("chat.lobby", 3),),
        "a record of 4 sockets, 3 on chat.lobby",
    )
    [process] = overview.processes
    assert (process.host, process.pid) == (socket.gethostname(), os.getpid())
    assert process.process == get_hub().process
    assert process.anonymous == 1
    assert process.users == (
        UserSockets(id=str(alice.pk), name="alice", sockets=2),
        UserSockets(id=str(bob.pk), name="bob", sockets=1),
    )
    assert overview.users == process.users
    assert overview.channels == (ChannelSockets("chat.lobby", 3), ChannelSockets("chat.b", 1))
    key = relay_key(get_config().key_prefix, process.process)
    assert 0 < redis_client.pttl(key) <= STATUS_INTERVAL * MISSED_WRITES * 1000
    assert json.loads(redis_client.get(key))["users_total"] == 2


async def test_status_follows_sockets_that_close_and_goes_with_the_hub(
    connect, make_user, redis_client
) -> None:
    """Tests that closed sockets leave the record soon after, and that a closed hub
    removes its record and index entry."""
    alice, bob = await make_user("alice"), await make_user("bob")
    leaving = [await connect(alice), await connect(alice)]
    staying = await connect(bob)
    for tab in [*leaving, staying]:
        await subscribe(tab, "chat.lobby")
    await overview_when(redis_client, lambda o: o.sockets == 3, "3 sockets")
    for tab in leaving:
        await tab.disconnect(timeout=5)
    overview = await overview_when(redis_client, lambda o: o.sockets == 1, "1 socket left")
    assert overview.users == (UserSockets(id=str(bob.pk), name="bob", sockets=1),)
    assert overview.channels == (ChannelSockets("chat.lobby", 1),)
    process = overview.processes[0].process
    await aclose_hub()
    assert read_relays(redis_client, prefix="").processes == ()
    assert not redis_client.exists(relay_key("", process))
    assert redis_client.zscore(relays_key(""), process) is None


async def test_status_counts_rate_limited_too_large_and_forbidden_frames(
    connect, make_user, redis_client
) -> None:
    """Tests that the error frames a process sent are counted in its record, by code."""
    with override_settings(REDIS_BROKER=websocket_settings(PUBLISH_RATE=2, MAX_MESSAGE_BYTES=1000)):
        tab = await connect(await make_user("alice"))
        for n in range(5):
            await send(tab, {"action": "publish", "channel": "admin.x", "data": n})
        await tab.send_to(text_data=json.dumps({"action": "publish", "data": "x" * 2000}))
        await tab.send_to(text_data=" " * 1001)
        await send(tab, {"action": "subscribe", "channel": "admin.secrets"})
        codes = [(await receive(tab))["code"] for _ in range(8)]
        assert sorted(codes) == sorted(["forbidden"] * 3 + ["rate_limited"] * 3 + ["too_large"] * 2)
        overview = await overview_when(
            redis_client,
            lambda o: bool(o.processes) and o.too_large == 2 and o.forbidden == 3,
            "the error counts",
        )
        assert (overview.rate_limited, overview.too_large, overview.forbidden) == (3, 2, 3)
        [process] = overview.processes
        assert (process.rate_limited, process.too_large, process.bad_request) == (3, 2, 0)


async def test_status_write_refused_by_redis_is_logged_once_and_sockets_carry_on(
    connect, make_user, redis_server_factory, monkeypatch, caplog
) -> None:
    """Tests that while Redis refuses the record (out of memory) sockets still work, the
    failure is logged once however often it repeats, and the record comes back after."""
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    writes: list[int] = []
    real_write = hub_module.write_status

    async def spy(*args: Any) -> None:
        writes.append(1)
        await real_write(*args)

    monkeypatch.setattr(hub_module, "write_status", spy)
    caplog.set_level(logging.INFO, logger="redis_broker.relay")
    try:
        # noeviction with no memory to spare: SET and ZADD are refused, PUBLISH is not.
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, **single_node(server.url)}):
            user = await make_user("alice")
            tabs = [await connect(user)]
            await subscribe(tabs[0], "chat.lobby")
            await asyncio.to_thread(wait_for, lambda: writes, message="a first write")
            tabs.append(await connect(user))
            await asyncio.to_thread(wait_for, lambda: len(writes) >= 2, message="a second write")
            await subscribe(tabs[1], "chat.lobby")
            assert await abroadcast("chat.lobby", "still here") == 1
            assert [(await receive(tab))["data"] for tab in tabs] == ["still here"] * 2
            failures = [r for r in caplog.records if "Cannot write the relay's status" in r.message]
            assert len(failures) == 1
            assert failures[0].levelno == logging.WARNING
            assert "OutOfMemoryError" in failures[0].message
            assert admin.keys("*") == []
            admin.config_set("maxmemory", 0)
            await send(tabs[1], {"action": "unsubscribe", "channel": "chat.lobby"})
            overview = await overview_when(
                admin, lambda o: o.channels == (ChannelSockets("chat.lobby", 1),), "the record"
            )
            assert overview.sockets == 2
            assert any("written to Redis again" in r.message for r in caplog.records)
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


async def test_messages_fanned_out_do_not_touch_the_status(
    connect, make_user, monkeypatch, redis_client
) -> None:
    """Tests that fanning out messages neither builds a record nor wakes the writer: only
    sockets coming and going (and errors) do."""
    user = await make_user("alice")
    tab = await connect(user)
    await subscribe(tab, "chat.lobby")
    await overview_when(redis_client, lambda o: bool(o.channels), "the record with chat.lobby")
    hub = get_hub()
    built: list[int] = []
    real_status = hub._status

    def spy() -> str:
        built.append(1)
        return real_status()

    monkeypatch.setattr(hub, "_status", spy)
    for n in range(50):
        await abroadcast("chat.lobby", n)
    assert [(await receive(tab))["data"] for _ in range(50)] == list(range(50))
    assert not hub._changed.is_set()
    assert built == []
