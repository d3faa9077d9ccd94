"""Fixtures of the test suite; the Redis ones come from the redis_broker.testing plugin."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_broker.connection import aclose_async_redis
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.testing import wait_for

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def artifacts_dir() -> Path:
    """Return the folder where browser tests write screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Return a headless Debian Chromium driven by Playwright, for one test module.

    Playwright never downloads a browser here: it drives /usr/bin/chromium (skipped when
    missing). Module scope, not session: Playwright's sync API keeps an event loop running
    in the main thread while it lives, and later tests that run their own loop would fail.
    """
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    # The ORM refuses to run beside a running loop unless told it does not serve requests.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the real socket writes of sync clients (a spy: the real method still runs)."""
    calls: list[int] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def spy(self: Any, command: Any, check_health: bool = True) -> None:
        calls.append(1)
        real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", spy)
    return calls


@pytest.fixture
async def close_async_redis() -> AsyncIterator[None]:
    """Close the async Redis clients of an async test's loop when the test ends.

    Every async test gets it (see ``pytest_collection_modifyitems``): a client left open
    when its loop closes would leak its sockets to the garbage collector, and the suite
    treats that ResourceWarning as an error.
    """
    yield
    await aclose_async_redis()


@pytest.fixture
def serve() -> Iterator[Callable[..., ConsumerRunner]]:
    """Return ``serve(*specs)``: run a runner with ``specs`` in a thread until the test ends."""
    running: list[tuple[ConsumerRunner, threading.Thread]] = []

    def start(*specs: Any) -> ConsumerRunner:
        runner = ConsumerRunner(specs=list(specs), relay_outbox=False, echo=lambda line: None)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        running.append((runner, thread))
        wait_for(lambda: runner.heartbeat is not None and runner.heartbeat.held, message="up")
        if runner.subscriber is not None:
            wait_for(runner.subscriber.subscribed.is_set, message="subscribed")
        return runner

    yield start
    for runner, thread in running:
        runner.stop()
        thread.join(timeout=15)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        fixtures: list[str] | None = getattr(item, "fixturenames", None)
        if inspect.iscoroutinefunction(function) and fixtures is not None:
            if "close_async_redis" not in fixtures:
                fixtures.insert(0, "close_async_redis")  # set up first, torn down last
