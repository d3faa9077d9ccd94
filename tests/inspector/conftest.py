"""Fixtures of the admin inspector tests: users with given permissions, and a seeded Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.test import Client

from redis_broker import wire
from redis_broker.naming import list_consumers_name, processing_list_name
from tests.helpers import staff_client

from .helpers import DEAD_WORKER, DLQ, GROUP, LIST, STREAM, Seeded


@pytest.fixture
def user_client(db: Any) -> Callable[..., Client]:
    """Return a factory of logged-in clients for staff users with the given codenames."""
    return staff_client


@pytest.fixture
def viewer(user_client: Callable[..., Client]) -> Client:
    """Return a client of a staff user who may view the inspector but not act."""
    return user_client("view_broker")


@pytest.fixture
def operator(user_client: Callable[..., Client]) -> Client:
    """Return a client of a staff user with view_broker and change_broker (not superuser)."""
    return user_client("view_broker", "change_broker")


@pytest.fixture
def seeded(redis_client: redis.Redis) -> Seeded:
    """Fill Redis: 10 entries in ``orders``, 4 pending in ``billing``, 2 dead letters;
    3 items in list ``jobs`` and 2 in the processing list of its dead worker ``w-dead``."""
    ids = [
        redis_client.xadd(STREAM, wire.encode_entry({"n": n}, type="order.created"))
        for n in range(10)
    ]
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    delivered = redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=4)
    pending = [entry_id for entry_id, _ in delivered[0][1]]
    dead = []
    event_ids = []
    for n, original in enumerate(ids[:2]):
        fields = wire.encode_entry({"n": n, "dead": True}, type="order.created")
        event_ids.append(fields[wire.EVENT_ID])
        dead.append(
            redis_client.xadd(
                DLQ,
                wire.dead_letter_fields(
                    fields,
                    original_stream=STREAM,
                    original_id=original,
                    error=f"ValueError: boom {n}",
                    delivery_count=5,
                ),
            )
        )
    items = [wire.encode_message({"job": n}, type="job.run") for n in range(3)]
    taken = [wire.encode_message({"job": n}, type="job.run") for n in (-2, -1)]
    redis_client.rpush(LIST, *items)
    redis_client.rpush(processing_list_name(LIST, DEAD_WORKER), *taken)
    redis_client.sadd(list_consumers_name(LIST), DEAD_WORKER)
    return Seeded(
        ids=ids, pending=pending, dead=dead, dead_event_ids=event_ids, items=items, taken=taken
    )
