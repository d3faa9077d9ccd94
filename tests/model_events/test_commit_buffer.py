"""The commit buffer, seen through model events: one flush per commit, nothing on rollback.

``redis_broker.commit_buffer`` keeps a transaction's events until its work commits and
drops what a rolled-back transaction or savepoint recorded. These tests use
``django_db(transaction=True)``: the buffer flushes from ``transaction.on_commit``
callbacks, which only run when a real transaction commits (the default test wrapper
rolls back and never commits).
"""

from __future__ import annotations

import pytest
import redis
from django.db import IntegrityError, transaction

from tests.testapp.models import Customer, Order

from .helpers import read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_transaction_publishes_its_events_in_order_in_one_round_trip(
    redis_client: redis.Redis, publish_calls: list[int]
) -> None:
    """Tests that a transaction's events go out together, in the order they happened."""
    with transaction.atomic():
        first = Order.objects.create(status="a")
        second = Order.objects.create(status="b")
        first.status = "c"
        first.save()
        second.delete()
    assert publish_calls == [4]
    got = [(e.type, e.data["fields"]["status"]) for e in read_stream(redis_client, "shop.orders")]
    assert got == [
        ("testapp.order.created", "a"),
        ("testapp.order.created", "b"),
        ("testapp.order.updated", "c"),
        ("testapp.order.deleted", "b"),
    ]


def test_rolled_back_transaction_publishes_nothing(redis_client: redis.Redis) -> None:
    """Tests that an exception leaving atomic() rolls back the change and its event."""
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(status="phantom")
        raise RuntimeError("abort")
    with transaction.atomic():
        Order.objects.create(status="real")
    assert [e.data["fields"]["status"] for e in read_stream(redis_client, "shop.orders")] == [
        "real"
    ]


def test_set_rollback_publishes_nothing(redis_client: redis.Redis) -> None:
    """Tests that transaction.set_rollback(True) drops the transaction's events."""
    with transaction.atomic():
        Order.objects.create(status="phantom")
        transaction.set_rollback(True)
    assert redis_client.xlen("shop.orders") == 0


def test_rolled_back_savepoint_publishes_only_surviving_events(
    redis_client: redis.Redis,
) -> None:
    """Tests that work undone by a savepoint rollback publishes nothing; the rest does."""
    with transaction.atomic():
        Order.objects.create(status="before")
        with pytest.raises(RuntimeError), transaction.atomic():
            Order.objects.create(status="undone")
            raise RuntimeError("abort the savepoint")
        Order.objects.create(status="after")
        assert redis_client.xlen("shop.orders") == 0
    statuses = [e.data["fields"]["status"] for e in read_stream(redis_client, "shop.orders")]
    assert statuses == ["before", "after"]


def test_released_savepoint_undone_by_its_parent_publishes_nothing(
    redis_client: redis.Redis,
) -> None:
    """Tests that a savepoint released inside one that is then rolled back publishes nothing."""
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            Order.objects.create(status="outer-undone")
            with transaction.atomic():
                Order.objects.create(status="inner-undone")
            Order.objects.create(status="outer-undone-2")
            raise RuntimeError("abort the outer savepoint")
        Order.objects.create(status="kept")
    statuses = [e.data["fields"]["status"] for e in read_stream(redis_client, "shop.orders")]
    assert statuses == ["kept"]


def test_savepoint_rolled_back_after_the_last_save_publishes_nothing_from_it(
    redis_client: redis.Redis,
) -> None:
    """Tests that a rollback after the transaction's last save still drops that save's event."""
    with transaction.atomic():
        Order.objects.create(status="kept")
        with transaction.atomic():
            Order.objects.create(status="undone")
            transaction.set_rollback(True)
    statuses = [e.data["fields"]["status"] for e in read_stream(redis_client, "shop.orders")]
    assert statuses == ["kept"]


def test_get_or_create_in_a_loop_publishes_in_one_round_trip(
    redis_client: redis.Redis, publish_calls: list[int]
) -> None:
    """Tests that events from released savepoints (get_or_create) join one publish at commit."""
    Order.objects.create(status="s3")
    publish_calls.clear()
    with transaction.atomic():
        for i in range(5):
            Order.objects.get_or_create(status=f"s{i}")
        with pytest.raises(IntegrityError), transaction.atomic():
            Order.objects.create(status="bad", customer_id=999_999)
            Customer.objects.create(id=1, name="x")
            Customer.objects.create(id=1, name="duplicate")
    assert publish_calls == [4]
    statuses = [e.data["fields"]["status"] for e in read_stream(redis_client, "shop.orders")]
    assert statuses == ["s3", "s0", "s1", "s2", "s4"]
