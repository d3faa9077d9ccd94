"""Fixtures of the browser tests: a live daphne server, the demo's consumers and
logged-in pages."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redis_broker.testing import stop_process, wait_for
from tests.helpers import manage, subprocess_env
from tests.relay.live_server import LiveServer


@pytest.fixture
def daphne_server(transactional_db: None, redis_broker_url: str) -> Iterator[LiveServer]:
    """Return a daphne process serving the demo on this test's database and Redis."""
    with LiveServer(subprocess_env(REDIS_URL=redis_broker_url)) as server:
        yield server


@pytest.fixture
def demo_consumers(
    transactional_db: None, redis_broker_url: str, redis_client: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run the demo's channel and list consumers in ``manage.py runconsumers``.

    Returns once the channel consumer's pattern subscription is live (Pub/Sub keeps
    nothing for late subscribers). Its output is printed when the test failed.
    """
    env = subprocess_env(REDIS_URL=redis_broker_url)
    process = manage("runconsumers", "track_presence", "send_email", env=env)

    def subscribed() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"runconsumers exited: {process.communicate()[0]}")
        return bool(redis_client.pubsub_numpat())  # presence.* (the relay only SUBSCRIBEs)

    try:
        wait_for(subscribed, timeout=30, message="runconsumers subscribed to presence.*")
        yield process
    finally:
        stop_process(process)
        assert process.stdout is not None
        output = process.stdout.read()
        process.stdout.close()
        print(f"runconsumers output:\n{output}")  # pytest shows it when the test failed


@pytest.fixture
def demo_users(transactional_db: None) -> dict[str, Any]:
    """Return the demo's users alice and bob (password = username)."""
    from django.contrib.auth import get_user_model

    model = get_user_model()
    return {name: model.objects.create_user(name, password=name) for name in ("alice", "bob")}


@pytest.fixture
def logged_in_page(browser: Any, daphne_server: LiveServer) -> Iterator[Callable[[str], Any]]:
    """Return ``logged_in_page(username)``: a page in a fresh browser context, logged in."""
    contexts = []

    def _open(username: str) -> Any:
        context = browser.new_context(viewport={"width": 1100, "height": 700})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(daphne_server.url + "/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", username)
        page.click("#login-submit")
        page.wait_for_selector("#whoami")
        return page

    yield _open
    for context in contexts:
        context.close()
