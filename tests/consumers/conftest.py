"""Fixtures of the consumer tests: fast consumer settings and ``runconsumers`` subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from .helpers import FAST, Worker


@pytest.fixture
def fast_consumers() -> Iterator[None]:
    """Override ``CONSUMERS`` in this process with the fast settings."""
    current = dict(settings.REDIS_BROKER)
    with override_settings(REDIS_BROKER={**current, "CONSUMERS": dict(FAST)}):
        yield


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Worker]]:
    """Return a factory of ``runconsumers`` subprocesses, all killed after the test."""
    workers: list[Worker] = []

    def start(*args: str, **kwargs: Any) -> Worker:
        worker = Worker(*args, **kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
