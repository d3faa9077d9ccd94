"""The JSON Schema of each configured model's event, derived from its fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
import redis
from django.contrib.auth.models import User
from django.db import models

from redis_broker import wire
from redis_broker.model_events import event_schemas, field_schema
from tests.testapp.models import Customer, Note, Order, Preference


def test_each_kind_of_field_has_the_type_its_value_is_written_as() -> None:
    """Tests the field table: numbers as numbers, Decimals, dates, durations and UUIDs as
    formatted text, a file by its name, a JSON field as any JSON."""
    cases = [
        (models.IntegerField(), {"type": "integer"}),
        (models.BigAutoField(primary_key=True), {"type": "integer"}),
        (models.PositiveSmallIntegerField(), {"type": "integer", "minimum": 0}),
        (models.FloatField(), {"type": "number"}),
        (models.BooleanField(), {"type": "boolean"}),
        (
            models.DecimalField(max_digits=5, decimal_places=2),
            {"type": ["string", "number"], "format": "decimal"},
        ),
        (models.DateTimeField(), {"type": "string", "format": "date-time"}),
        (models.DateField(), {"type": "string", "format": "date"}),
        (models.TimeField(), {"type": "string", "format": "time"}),
        (models.DurationField(), {"type": "string", "format": "duration"}),
        (models.UUIDField(), {"type": "string", "format": "uuid"}),
        (models.EmailField(), {"type": "string", "format": "email"}),
        (models.URLField(), {"type": "string", "format": "uri"}),
        (models.SlugField(max_length=30), {"type": "string", "maxLength": 30}),
        (models.TextField(), {"type": "string"}),
        (models.FileField(), {"type": "string", "maxLength": 100}),  # its name
        (models.BinaryField(), {"type": "string", "contentEncoding": "base64"}),
        (models.JSONField(), {}),
    ]
    for field, expected in cases:
        assert field_schema(field) == expected, type(field).__name__


def test_null_choices_and_help_text_shape_the_schema() -> None:
    """Tests that ``null=True`` adds null (to the type and the enum), ``choices`` become an
    enum and ``help_text`` the description."""
    field = models.CharField(
        max_length=2, null=True, choices=[("a", "A"), ("b", "B")], help_text="Grade"
    )
    assert field_schema(field) == {
        "type": ["string", "null"],
        "maxLength": 2,
        "enum": ["a", "b", None],
        "description": "Grade",
    }


def test_a_foreign_key_has_its_targets_type() -> None:
    """Tests that a foreign key carries the related primary key's type, nullable when the
    key is."""
    assert field_schema(Order._meta.get_field("customer")) == {"type": ["integer", "null"]}
    assert field_schema(Customer._meta.get_field("id")) == {"type": "integer"}


def test_the_schema_follows_the_configured_fields_and_their_keys(db: Any) -> None:
    """Tests that an event's schema lists the fields MODEL_EVENTS names (all concrete ones
    when it names none), each required, under ``fields`` beside the ``pk``."""
    found = event_schemas()
    note = found["testapp.note"]
    assert note["required"] == ["pk", "fields"]
    assert note["properties"]["fields"]["required"] == ["title"]
    assert note["title"] == "testapp.Note"
    order = found["testapp.order"]["properties"]["fields"]
    assert order["required"] == ["id", "customer", "status", "total", "placed_at"]
    assert order["properties"]["placed_at"] == {"type": ["string", "null"], "format": "date-time"}
    ticket = found["demo.ticket"]["properties"]["fields"]["properties"]
    assert ticket["status"]["enum"] == ["open", "in_progress", "resolved"]
    assert found["testapp.preference"]["properties"]["fields"]["properties"]["data"] == {}


@pytest.mark.django_db(transaction=True)
def test_published_events_validate_against_their_schemas(redis_client: redis.Redis) -> None:
    """Tests that the events real saves and deletes publish (after commit, hence a
    transactional database) match their model's schema, decimals, dates, nulls and JSON
    included."""
    customer = Customer.objects.create(name="Ada")
    order = Order.objects.create(customer=customer, total=Decimal("12.50"))
    order.placed_at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    order.customer = None
    order.save()
    order.delete()
    Order.objects.create()  # total=0 as assigned (an int), no customer, no date
    Note.objects.create(title="hello", body="not published")
    Preference.objects.create(name="p", data={"theme": ["dark", 1, None]})
    schemas = event_schemas()
    checked = 0
    for stream, key in [
        ("shop.orders", "testapp.order"),
        ("testapp.note", "testapp.note"),
        ("prefs", "testapp.preference"),
    ]:
        validator = jsonschema.Draft7Validator(schemas[key])
        for _entry_id, fields in redis_client.xrange(stream):
            data = wire.decode_entry(fields).data
            assert list(validator.iter_errors(data)) == [], data
            checked += 1
    assert checked == 6


def test_a_field_named_by_its_attname_is_keyed_so(db: Any, settings: Any) -> None:
    """Tests that ``fields: ["customer_id"]`` keys the value as written, as the recorder
    does, with the related key's type."""
    settings.REDIS_BROKER = {
        **settings.REDIS_BROKER,
        "MODEL_EVENTS": {"testapp.Order": {"fields": ["customer_id", "status"]}},
    }
    schema = event_schemas()["testapp.order"]["properties"]["fields"]
    assert schema["required"] == ["customer_id", "status"]
    assert schema["properties"]["customer_id"] == {"type": ["integer", "null"]}


def test_the_user_models_fields_have_their_types() -> None:
    """Tests a real model beside the test app's: auth's User (e-mail, nullable date)."""
    assert field_schema(User._meta.get_field("email")) == {"type": "string", "format": "email"}
    last_login = field_schema(User._meta.get_field("last_login"))
    assert last_login == {"type": ["string", "null"], "format": "date-time"}
