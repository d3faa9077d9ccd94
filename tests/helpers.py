"""Helpers shared by the tests: subprocess environments and process control."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from django.db import connection, connections

from redis_broker.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent
P = ParamSpec("P")
R = TypeVar("R")


def database_url() -> str:
    """Return a DATABASE_URL for the test database the current test is using."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{s['NAME']}"


def closing_db(function: Callable[P, R]) -> Callable[P, R]:
    """Return ``function`` closing this thread's database connections when it returns.

    For ORM work on a worker thread (``asyncio.to_thread``): Django opens one connection
    per thread, and one left open is closed by the garbage collector later, which
    Python 3.13 reports as an unraisable ResourceWarning in whatever test runs then.
    """

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return run


def subprocess_env(**extra: str) -> dict[str, str]:
    """Return an environment for a child process that shares this test's Redis and database."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(
    *args: str, env: Mapping[str, str] | None = None, **popen: object
) -> subprocess.Popen[str]:
    """Start ``manage.py`` with ``args`` in a child process (text output, piped)."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=dict(env) if env is not None else subprocess_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def broker_url(url: str) -> dict[str, object]:
    """Return the ``REDIS_BROKER`` keys that point at the session's Redis: its URL, and
    ``CLUSTER`` when the session runs on a cluster (``make test-cluster``)."""
    return {"URL": url, **({"CLUSTER": True} if os.environ.get("REDIS_CLUSTER") == "1" else {})}


#: Marks a test of single-node internals (one connection's writes, one server's config)
#: that ``make test-cluster`` skips; every other Redis-facing test runs on both.
single_node_only = pytest.mark.skipif(
    os.environ.get("REDIS_CLUSTER") == "1", reason="tests a single-node code path"
)


def listen(client: Any, channel: str) -> tuple[Any, Callable[[], Any]]:
    """Subscribe ``channel`` as another service would, once Redis confirmed; return the
    Pub/Sub object and a function returning its next message (or None). On a cluster
    broadcast() uses SPUBLISH, so this uses SSUBSCRIBE there."""
    pubsub = client.pubsub()
    if hasattr(client, "get_primaries"):  # a cluster client
        pubsub.ssubscribe(channel)

        def next_message() -> Any:
            return pubsub.get_sharded_message(timeout=0.1)
    else:
        pubsub.subscribe(channel)

        def next_message() -> Any:
            return pubsub.get_message(timeout=0.1)

    wait_for(next_message, message="subscribe confirmation")
    return pubsub, next_message


def staff_client(*codenames: str, staff: bool = True, superuser: bool = False) -> Any:
    """Return a Django test client logged in as a new user holding the given
    ``redis_broker`` permission codenames (staff unless ``staff=False``)."""
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    user = User.objects.create_user(
        f"u{User.objects.count()}", password="x", is_staff=staff, is_superuser=superuser
    )
    if codenames:
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="redis_broker", codename__in=codenames
            )
        )
    client = Client()
    client.force_login(user)
    return client


def read_ticket_events(redis_client: Any) -> list[Any]:
    """Return the entries model events appended to ``demo.tickets``, as the runner would."""
    from redis_broker import wire
    from redis_broker.consumers.message import StreamMessage

    messages = []
    for entry_id, fields in redis_client.xrange("demo.tickets"):
        entry = wire.decode_entry(fields)
        messages.append(
            StreamMessage(
                id=entry_id,
                stream="demo.tickets",
                group="notifier",
                data=entry.data,
                type=entry.type,
                event_id=entry.event_id,
                headers=entry.headers,
                published_at=entry.published_at,
                delivery_count=1,
                fields=entry.fields,
            )
        )
    return messages
