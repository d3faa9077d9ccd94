"""Model events with ``on_commit`` delivery: what is published, and when.

These tests use ``django_db(transaction=True)``: the events are published by
``transaction.on_commit`` callbacks, which only run when a real transaction commits
(the default test wrapper rolls back and never commits). What a transaction's
savepoints and rollbacks let through is in test_commit_buffer.py.
"""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save

from redis_broker import publish_model_event, wire
from redis_broker.model_events import connect_receivers
from tests.testapp.models import Customer, Note, Order, Preference

from .helpers import broker_settings, model_events, read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_create_publishes_created_event_only_after_commit(redis_client: redis.Redis) -> None:
    """Tests that a create publishes the contract's type and data, and nothing before commit."""
    placed = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    customer = Customer.objects.create(name="Ada")
    with transaction.atomic():
        order = Order.objects.create(
            customer=customer, status="new", total=Decimal("12.50"), placed_at=placed
        )
        assert redis_client.xlen("shop.orders") == 0
    [entry] = read_stream(redis_client, "shop.orders")
    assert entry.type == "testapp.order.created"
    assert entry.data == {
        "pk": order.pk,
        "fields": {
            "id": order.pk,
            "customer": customer.pk,
            "status": "new",
            "total": "12.50",
            "placed_at": "2026-01-02T03:04:05Z",
        },
    }


def test_update_publishes_updated_event_with_new_values(redis_client: redis.Redis) -> None:
    """Tests that saving an existing row publishes ``updated`` with the saved values."""
    order = Order.objects.create(status="new")
    with transaction.atomic():
        order.status = "paid"
        order.save()
        assert redis_client.xlen("shop.orders") == 1
    entries = read_stream(redis_client, "shop.orders")
    assert [e.type for e in entries] == ["testapp.order.created", "testapp.order.updated"]
    assert entries[1].data["fields"]["status"] == "paid"


def test_delete_publishes_last_known_values(redis_client: redis.Redis) -> None:
    """Tests that a delete carries the primary key and the values the row had."""
    order = Order.objects.create(status="shipped", total=Decimal("3.00"))
    pk = order.pk
    with transaction.atomic():
        order.delete()
        assert redis_client.xlen("shop.orders") == 1
    deleted = read_stream(redis_client, "shop.orders")[-1]
    assert deleted.type == "testapp.order.deleted"
    assert deleted.data["pk"] == pk
    assert deleted.data["fields"]["status"] == "shipped"
    assert deleted.data["fields"]["total"] == "3.00"


def test_save_in_autocommit_publishes_at_once(redis_client: redis.Redis) -> None:
    """Tests that outside any transaction the event is on the stream when save() returns."""
    Order.objects.create(status="new")
    assert [e.type for e in read_stream(redis_client, "shop.orders")] == ["testapp.order.created"]


def test_events_carry_the_values_saved_not_later_changes_before_commit(
    redis_client: redis.Redis,
) -> None:
    """Tests that changing an instance (or its JSONField dict) after save leaves its event alone."""
    with transaction.atomic():
        order = Order.objects.create(status="saved")
        order.status = "changed in memory"
        pref = Preference.objects.create(name="theme", data={"colour": "blue", "tags": ["a"]})
        pref.data["colour"] = "red"
        pref.data["tags"].append("b")
        pref.name = "renamed in memory"
    [order_event] = read_stream(redis_client, "shop.orders")
    assert order_event.data["fields"]["status"] == "saved"
    [pref_event] = read_stream(redis_client, "prefs")
    assert pref_event.data["fields"] == {
        "id": pref.pk,
        "name": "theme",
        "data": {"colour": "blue", "tags": ["a"]},
    }


def test_events_of_a_transaction_have_distinct_uuid4_ids_and_save_times(
    redis_client: redis.Redis,
) -> None:
    """Tests the envelope of buffered events: a fresh UUID4 each, published_at from the save."""
    before = wire.now_iso()
    with transaction.atomic():
        for i in range(300):
            Order.objects.create(status=f"s{i}")
        saved = wire.now_iso()
    entries = read_stream(redis_client, "shop.orders")
    ids = [entry.event_id for entry in entries]
    assert len(set(ids)) == 300
    assert all(str(uuid.UUID(event_id, version=4)) == event_id for event_id in ids)
    assert all(before <= entry.published_at <= saved for entry in entries)


def test_fields_setting_limits_the_payload(redis_client: redis.Redis) -> None:
    """Tests that only the listed fields are sent; a foreign key may be named by attname."""
    customer = Customer.objects.create(name="Bo")
    spec = {"stream": "shop.orders", "fields": ["status", "customer_id"]}
    with model_events(testapp__Order=spec):
        order = Order.objects.create(customer=customer, status="new")
    [entry] = read_stream(redis_client, "shop.orders")
    assert entry.data == {"pk": order.pk, "fields": {"status": "new", "customer_id": customer.pk}}


def test_actions_setting_filters_events(redis_client: redis.Redis) -> None:
    """Tests that actions left out of ``actions`` publish nothing (Note: created, deleted)."""
    note = Note.objects.create(title="t", body="hidden")
    note.title = "renamed"
    note.save()
    note.delete()
    entries = read_stream(redis_client, "testapp.note")
    assert [e.type for e in entries] == ["testapp.note.created", "testapp.note.deleted"]
    assert entries[0].data["fields"] == {"title": "t"}
    assert entries[1].data["fields"] == {"title": "renamed"}


def test_model_removed_from_settings_stops_publishing(redis_client: redis.Redis) -> None:
    """Tests that receivers read the current settings, so removing a model silences it."""
    with model_events(testapp__Order=None), transaction.atomic():
        pass
    remaining = {
        k: v for k, v in settings.REDIS_BROKER["MODEL_EVENTS"].items() if k != "testapp.Order"
    }
    with broker_settings(MODEL_EVENTS=remaining):
        Order.objects.create(status="quiet")
    assert redis_client.xlen("shop.orders") == 0


def test_connect_receivers_is_idempotent(redis_client: redis.Redis) -> None:
    """Tests that connecting twice (ready() runs again) still publishes each event once."""
    connect_receivers()
    connect_receivers()
    assert post_save.has_listeners(Order)
    Order.objects.create(status="once")
    assert redis_client.xlen("shop.orders") == 1


def test_raw_save_from_fixtures_publishes_nothing(redis_client: redis.Redis) -> None:
    """Tests that loaddata's raw saves (post_save with raw=True) publish nothing."""
    Order(status="fixture").save_base(raw=True)
    assert Order.objects.filter(status="fixture").exists()
    assert redis_client.xlen("shop.orders") == 0


def test_publish_model_event_covers_bulk_create(redis_client: redis.Redis) -> None:
    """Tests that bulk_create fires no signal and publish_model_event fills the gap on commit."""
    with transaction.atomic():
        orders = Order.objects.bulk_create([Order(status="x"), Order(status="y")])
        assert redis_client.xlen("shop.orders") == 0
        for order in orders:
            publish_model_event(order, "created")
        assert redis_client.xlen("shop.orders") == 0
    entries = read_stream(redis_client, "shop.orders")
    assert [(e.type, e.data["pk"]) for e in entries] == [
        ("testapp.order.created", orders[0].pk),
        ("testapp.order.created", orders[1].pk),
    ]


def test_queryset_delete_publishes_an_event_per_row(redis_client: redis.Redis) -> None:
    """Tests the README's claim: QuerySet.delete() sends post_delete for each row."""
    Order.objects.bulk_create([Order(status="x"), Order(status="y")])
    Order.objects.all().delete()
    assert [e.type for e in read_stream(redis_client, "shop.orders")] == [
        "testapp.order.deleted",
        "testapp.order.deleted",
    ]


def test_publish_model_event_rejects_unknown_action_and_unconfigured_model() -> None:
    """Tests that publish_model_event names the mistake instead of publishing nothing."""
    order = Order.objects.create(status="x")
    with pytest.raises(ValueError, match="'archived' is not a model event action"):
        publish_model_event(order, "archived")
    with pytest.raises(ValueError, match="testapp.Customer is not in"):
        publish_model_event(Customer.objects.create(name="c"), "created")


def test_cascade_delete_publishes_deleted_events_for_related_rows(
    redis_client: redis.Redis,
) -> None:
    """Tests the README's claim: rows deleted by an ON DELETE CASCADE publish their events."""
    customer = Customer.objects.create(name="Cy")
    customer_pk = customer.pk
    Order.objects.create(customer=customer, status="a")
    customer.delete()
    entries = read_stream(redis_client, "shop.orders")
    assert [e.type for e in entries] == ["testapp.order.created", "testapp.order.deleted"]
    assert entries[1].data["fields"]["customer"] == customer_pk
