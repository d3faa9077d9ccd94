"""Send a test message from the admin: publish to a stream or broadcast on a channel."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from redis.cluster import RedisCluster

from redis_broker.testing import wait_for

from .helpers import STREAM, url

pytestmark = pytest.mark.django_db


def test_send_publishes_to_a_stream_and_shows_the_entry_id(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a stream message is appended with its type and data, and its id reported."""
    response = admin_client.post(
        url("send"),
        {"kind": "stream", "name": STREAM, "type": "order.test", "payload": '{"order": 42}'},
        follow=True,
    )
    ((entry_id, fields),) = redis_client.xrange(STREAM)
    assert (fields["type"], json.loads(fields["data"])) == ("order.test", {"order": 42})
    assert f"to stream {STREAM} as entry {entry_id}" in response.content.decode()
    # The form comes back filled as sent, to send another.
    assert response.context["form"].initial["name"] == STREAM
    entry = LogEntry.objects.get()
    assert entry.object_repr == f"Sent a test message to {STREAM} (entry {entry_id})"
    assert entry.object_id == STREAM


def test_send_honours_key_prefix(
    admin_client: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Tests that the name is given as application code gives it: without KEY_PREFIX."""
    settings.REDIS_BROKER = {**settings.REDIS_BROKER, "KEY_PREFIX": "app:"}
    admin_client.post(url("send"), {"kind": "stream", "name": "jobs", "payload": "1"})
    assert redis_client.xlen("app:jobs") == 1
    assert not redis_client.exists("jobs")


def test_send_broadcasts_on_a_channel_and_shows_the_receiver_count(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a channel message reaches a live subscriber and the count is reported (a
    sharded subscriber on a cluster, where ``broadcast`` uses SPUBLISH)."""
    pubsub: Any = redis_client.pubsub()
    sharded = isinstance(redis_client, RedisCluster)
    receive = pubsub.get_sharded_message if sharded else pubsub.get_message
    try:
        if sharded:
            pubsub.ssubscribe("alerts")
        else:
            pubsub.subscribe("alerts")
        wait_for(lambda: receive(timeout=0.05) is not None)  # the subscribe reply
        response = admin_client.post(
            url("send"), {"kind": "channel", "name": "alerts", "payload": '"hello"'}, follow=True
        )
        assert "on channel alerts: 1 subscriber received it" in response.content.decode()
        message = wait_for(lambda: receive(timeout=0.05))
        assert json.loads(message["data"])["data"] == "hello"
    finally:
        pubsub.close()
    entry = LogEntry.objects.get()
    assert entry.object_repr == "Broadcast a test message on alerts (1 subscriber)"
    assert admin_client.get(entry.get_admin_url())["Location"] == url("pubsub")


def test_send_refuses_data_that_is_not_json_and_sends_nothing(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that the data must be JSON the wire format accepts: the form shows the reason."""
    for bad in ("{order: 42}", "[" * 200 + "]" * 200):
        response = admin_client.post(
            url("send"), {"kind": "stream", "name": STREAM, "payload": bad}
        )
        assert response.status_code == 200
        assert response.context["form"].errors["payload"]
    assert not redis_client.exists(STREAM)
    assert not LogEntry.objects.exists()


def test_send_to_a_key_of_another_type_reports_the_refusal(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that Redis's WRONGTYPE becomes an error message on the form, not a 500 or a log."""
    redis_client.set(STREAM, "a string")
    response = admin_client.post(
        url("send"), {"kind": "stream", "name": STREAM, "payload": "{}"}, follow=True
    )
    assert response.status_code == 200
    assert "Not sent: WRONGTYPE" in response.content.decode()
    assert not LogEntry.objects.exists()


def test_send_needs_change_permission_and_csrf(
    viewer: Client, admin_user: User, redis_client: redis.Redis
) -> None:
    """Tests that view-only staff get 403 on the form and a POST without CSRF is refused."""
    data = {"kind": "stream", "name": STREAM, "payload": "{}"}
    assert viewer.get(url("send")).status_code == 403
    assert viewer.post(url("send"), data).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.get(url("send")).status_code == 200  # the form itself
    assert strict.post(url("send"), data).status_code == 403
    assert not redis_client.exists(STREAM)
