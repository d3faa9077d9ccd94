"""Fixtures of the browser tests: a live daphne server, the demo's consumers and
logged-in pages."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from redis_broker.testing import stop_process, wait_for
from tests.helpers import manage, subprocess_env
from tests.relay.live_server import LiveServer


@pytest.fixture
def daphne_server(transactional_db: None, redis_broker_url: str) -> Iterator[LiveServer]:
    """Return a daphne process serving the demo on this test's database and Redis."""
    with LiveServer(subprocess_env(REDIS_URL=redis_broker_url)) as server:
        yield server


@contextlib.contextmanager
def running_consumers(
    names: tuple[str, ...], ready: Callable[[], bool], what: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """Run ``manage.py runconsumers <names>`` until the block ends, once ``ready()`` holds.

    Its output is printed on the way out, so pytest shows it when the test failed.
    """
    process = manage("runconsumers", *names, env=env)

    def started() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"runconsumers {' '.join(names)} exited")
        return ready()

    try:
        wait_for(started, timeout=30, message=what)
        yield process
    finally:
        stop_process(process)
        assert process.stdout is not None
        output = process.stdout.read()
        process.stdout.close()
        print(f"runconsumers {' '.join(names)} output:\n{output}")


@pytest.fixture
def demo_consumers(
    transactional_db: None, redis_broker_url: str, redis_client: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run the demo's channel and list consumers in ``manage.py runconsumers``.

    Returns once the channel consumer's pattern subscription is live (Pub/Sub keeps
    nothing for late subscribers).
    """
    with running_consumers(
        ("track_presence", "send_email"),
        lambda: bool(redis_client.pubsub_numpat()),  # presence.* (the relay only SUBSCRIBEs)
        "runconsumers subscribed to presence.*",
        subprocess_env(REDIS_URL=redis_broker_url),
    ) as process:
        yield process


@pytest.fixture
def pricing_consumer(
    transactional_db: None, redis_broker_url: str, redis_client: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run the demo's pricing service: ``runconsumers price_quote``.

    Returns once a consumer of the ``pricing`` group has read ``demo.quotes``: from then
    on ``request("demo.quotes", ...)`` finds a responder.
    """

    def reading() -> bool:
        try:
            return bool(redis_client.xinfo_consumers("demo.quotes", "pricing"))
        except redis.ResponseError:  # no stream or no group yet
            return False

    with running_consumers(
        ("price_quote",),
        reading,
        "runconsumers reading demo.quotes",
        subprocess_env(REDIS_URL=redis_broker_url),
    ) as process:
        yield process


@pytest.fixture
def notify_consumer(
    transactional_db: None, redis_broker_url: str, redis_client: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run the demo's ticket notifier: ``runconsumers notify``.

    Returns once a consumer of the ``notifier`` group has read ``demo.tickets``: from
    then on every ticket change reaches its owner's ``user.<pk>`` channel.
    """

    def reading() -> bool:
        try:
            return bool(redis_client.xinfo_consumers("demo.tickets", "notifier"))
        except redis.ResponseError:  # no stream or no group yet
            return False

    with running_consumers(
        ("notify",),
        reading,
        "runconsumers reading demo.tickets",
        subprocess_env(REDIS_URL=redis_broker_url),
    ) as process:
        yield process


@pytest.fixture
def demo_users(transactional_db: None) -> dict[str, Any]:
    """Return the demo's users alice and bob (password = username)."""
    from django.contrib.auth import get_user_model

    model = get_user_model()
    return {name: model.objects.create_user(name, password=name) for name in ("alice", "bob")}


@pytest.fixture
def logged_in_page(browser: Any, daphne_server: LiveServer) -> Iterator[Callable[..., Any]]:
    """Return ``logged_in_page(username, width=1100, height=700)``: a page in a fresh
    browser context of that viewport, logged in."""
    contexts = []

    def _open(username: str, width: int = 1100, height: int = 700) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(daphne_server.url + "/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", username)
        page.click("#login-submit")
        page.wait_for_selector("#whoami")
        # The header can be parsed before the page's scripts have run; tests start from
        # a page whose scripts are loaded.
        page.wait_for_load_state("load")
        return page

    yield _open
    for context in contexts:
        context.close()
