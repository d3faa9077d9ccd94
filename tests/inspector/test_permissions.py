"""Who may see the inspector and who may act: login, view_broker, change_broker, CSRF."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from .helpers import DEAD_WORKER, DLQ, GROUP, LIST, LIVE, PAGES, STREAM, Seeded, snapshot, url


def action_requests(seeded: Seeded) -> list[tuple[str, dict[str, str], dict[str, object]]]:
    """Return (url name, url kwargs, POST data) for every action, with valid parameters."""
    return [
        ("ack", {"stream": STREAM, "group": GROUP}, {"ids": seeded.pending[:2]}),
        ("claim", {"stream": STREAM, "group": GROUP}, {"ids": seeded.pending, "consumer": "c9"}),
        ("requeue", {"stream": STREAM}, {"ids": seeded.dead}),
        ("delete", {"stream": STREAM}, {"ids": seeded.ids[-2:]}),
        ("delete", {"stream": DLQ}, {"ids": seeded.dead[:1]}),
        ("trim", {"stream": STREAM}, {"maxlen": 3}),
        (
            "delete_consumer",
            {"stream": STREAM, "group": GROUP, "consumer": "c1"},
            {},
        ),
        ("create_group", {"stream": STREAM}, {"group": "new", "start": "0"}),
        ("destroy_group", {"stream": STREAM, "group": GROUP}, {}),
        ("requeue_processing", {"stream": LIST, "consumer": DEAD_WORKER}, {}),
        ("retry", {"stream": STREAM, "group": GROUP}, {"ids": seeded.pending[:2]}),
        ("delete_outbox", {}, {"ids": ["1", "2"]}),
        ("retry_outbox", {}, {"ids": ["1", "2"]}),
        ("send", {}, {"kind": "stream", "name": STREAM, "payload": '{"n": 1}'}),
        ("requeue_matching", {"stream": STREAM}, {"by": "type", "q": "order.created"}),
        ("delete_matching", {"stream": STREAM}, {}),
    ]


@pytest.mark.django_db
def test_anonymous_user_is_sent_to_admin_login(seeded: Seeded) -> None:
    """Tests that every page and action sends an anonymous visitor to the admin login."""
    client = Client()
    targets = [url(n, **k) for n, k in [*PAGES, *LIVE]]
    targets += [url(n, **k) for n, k, _ in action_requests(seeded)]
    for target in targets:
        response = client.get(target)
        assert response.status_code == 302, target
        assert response["Location"].startswith(reverse("admin:login")), target


def test_staff_without_view_permission_is_forbidden(
    user_client: Callable[..., Client], seeded: Seeded
) -> None:
    """Tests that staff without view_broker get 403 on every page and action."""
    client = user_client()
    for name, kwargs in [*PAGES, *LIVE]:
        assert client.get(url(name, **kwargs)).status_code == 403, name
    for name, kwargs, data in action_requests(seeded):
        assert client.post(url(name, **kwargs), data).status_code == 403, name


def test_admin_index_shows_redis_broker_section_only_with_view_permission(
    user_client: Callable[..., Client], viewer: Client
) -> None:
    """Tests that the admin index lists the "Redis broker" section for view_broker only."""
    inspector = url("broker_changelist")
    assert inspector in viewer.get(reverse("admin:index")).content.decode()
    assert inspector not in user_client().get(reverse("admin:index")).content.decode()


def test_view_only_user_sees_every_page_without_action_buttons(
    viewer: Client, seeded: Seeded
) -> None:
    """Tests that view_broker alone shows every page but no link to any action."""
    for name, kwargs in [*PAGES, *LIVE]:
        response = viewer.get(url(name, **kwargs))
        assert response.status_code == 200, name
        body = response.content.decode()
        for action, action_kwargs, _ in action_requests(seeded):
            assert url(action, **action_kwargs) not in body, (name, action)


def test_view_only_user_is_refused_every_action_and_redis_is_unchanged(
    viewer: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that without change_broker every action is refused, on GET and POST alike."""
    before = snapshot(redis_client)
    for name, kwargs, data in action_requests(seeded):
        assert viewer.get(url(name, **kwargs), data).status_code == 403, name
        assert viewer.post(url(name, **kwargs), data).status_code == 403, name
    assert snapshot(redis_client) == before
    assert not LogEntry.objects.exists()


def test_get_on_every_action_url_changes_nothing(
    admin_client: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that a GET only shows the confirmation page, even with every parameter given."""
    before = snapshot(redis_client)
    for name, kwargs, data in action_requests(seeded):
        response = admin_client.get(url(name, **kwargs), data)
        assert response.status_code == 200, name
        assert b'method="post"' in response.content, name
    assert snapshot(redis_client) == before
    assert not LogEntry.objects.exists()


def test_post_without_csrf_token_is_refused(
    admin_user: object, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that an action POSTed without the CSRF token is rejected and changes nothing."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)  # type: ignore[arg-type]
    before = snapshot(redis_client)
    for name, kwargs, data in action_requests(seeded):
        assert client.post(url(name, **kwargs), data).status_code == 403, name
    assert snapshot(redis_client) == before


def test_change_permission_without_superuser_may_act(
    operator: Client, seeded: Seeded, redis_client: redis.Redis
) -> None:
    """Tests that change_broker is enough to act: staff need not be superusers."""
    response = operator.post(url("ack", stream=STREAM, group=GROUP), {"ids": seeded.pending})
    assert response.status_code == 302
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
