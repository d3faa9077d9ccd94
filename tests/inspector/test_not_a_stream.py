"""A key that holds another type than a stream is reported with its type, not as missing."""

from __future__ import annotations

import pytest
import redis
from django.test import Client

from redis_broker import wire
from redis_broker.models import OutboxEvent

from .helpers import GROUP, url

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("kind", "make", "size"),
    [
        ("list", lambda r: r.rpush("orders", "a", "b", "c"), "3 items"),
        ("string", lambda r: r.set("orders", "hello"), "5 bytes"),
        ("hash", lambda r: r.hset("orders", mapping={"a": 1, "b": 2}), "2 fields"),
        ("set", lambda r: r.sadd("orders", "x"), "1 member"),
    ],
)
def test_every_stream_page_names_the_type_of_a_key_that_is_not_a_stream(
    admin_client: Client, redis_client: redis.Redis, kind: str, make: object, size: str
) -> None:
    """Tests the stream, groups, pending and trim pages on a key of another type."""
    make(redis_client)  # type: ignore[operator]
    for name, kwargs in [
        ("stream", {"stream": "orders"}),
        ("groups", {"stream": "orders"}),
        ("pending", {"stream": "orders", "group": GROUP}),
        ("trim", {"stream": "orders"}),
    ]:
        response = admin_client.get(url(name, **kwargs))
        assert response.status_code == 404, name
        body = response.content.decode()
        assert f"“orders” is a {kind}, not a stream." in body, name
        assert "may have been deleted" not in body, name
        assert size in body, name
        assert "WRONGTYPE" in body, name


def test_not_a_stream_page_counts_the_outbox_rows_it_holds_back(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that the page links the outbox when events wait for that stream, and the TTL."""
    redis_client.rpush("orders", "x")
    redis_client.expire("orders", 3600)
    for n in range(2):
        OutboxEvent.objects.create(stream="orders", fields=wire.encode_entry({"n": n}))
    response = admin_client.get(url("stream", stream="orders"))
    assert response.context["facts"].type == "list"
    assert response.context["facts"].ttl_ms > 3_000_000
    body = response.content.decode()
    assert f'<a href="{url("outbox")}">2 outbox events</a>' in body


def test_a_missing_key_still_says_it_may_have_been_deleted(admin_client: Client) -> None:
    """Tests that a key that does not exist at all keeps the "not found" wording."""
    response = admin_client.get(url("stream", stream="nothing"))
    assert response.status_code == 404
    body = response.content.decode()
    assert "There is no stream &#x27;nothing&#x27;." in body
    assert "may have been deleted" in body
