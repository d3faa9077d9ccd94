"""Helpers of the consumer tests: fast settings, ``runconsumers`` subprocesses, readers of
what the test consumers recorded."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from redis_broker.conf import get_config
from redis_broker.naming import dead_letter_name
from redis_broker.testing import wait_for
from tests.helpers import manage, subprocess_env
from tests.testapp.consumers import HANDLED

#: Consumer settings that keep the tests fast: short blocks, claims and back-offs.
FAST = {
    "BLOCK_MS": 100,
    "CLAIM_IDLE_MS": 300,
    "RETRY_BACKOFF_MS": 10,
    "RETRY_BACKOFF_MAX_MS": 50,
    "MAX_DELIVERIES": 3,
    "STATUS_INTERVAL": 0.5,
    "SHUTDOWN_GRACE": 10.0,
}


class Worker:
    """A ``runconsumers`` subprocess whose output is collected line by line.

    ``redis_url`` points it at another Redis than the session's (``cluster``: a cluster).
    """

    def __init__(
        self, *args: str, redis_url: str | None = None, cluster: bool = False, **consumers: Any
    ) -> None:
        extra = {
            "DJANGO_SETTINGS_MODULE": "tests.consumers.settings",
            "TEST_CONSUMERS": json.dumps({**FAST, **consumers}),
        }
        if redis_url is not None:
            # A server of the test's own: a single Redis unless ``cluster`` says otherwise,
            # whatever the session runs on.
            extra["REDIS_URL"] = redis_url
            extra["REDIS_CLUSTER"] = "1" if cluster else "0"
        self.process = manage("runconsumers", *args, env=subprocess_env(**extra))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Return everything the worker printed so far."""
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        """Return the worker's process id."""
        return self.process.pid

    def wait_for_line(self, text: str, timeout: float = 15.0) -> str:
        """Wait until a printed line contains ``text``; return that line."""

        def found() -> str | None:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"worker exited early:\n{self.output}")
            return next((line for line in self.lines if text in line), None)

        return wait_for(found, timeout=timeout, message=f"a line with {text!r}")

    def expect(self, predicate: Callable[[], object], message: str, timeout: float = 15.0) -> None:
        """Wait for ``predicate`` like ``wait_for``; on timeout fail with the worker's output."""
        try:
            wait_for(predicate, timeout=timeout, message=message)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; worker output:\n{self.output}") from None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the worker to exit and its output to be read; return the exit status."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still runs after {timeout} s:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """Kill the worker if it still runs (test cleanup)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel does not refuse
            pass
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def handled_ids(client: redis.Redis) -> list[str]:
    """Return the event id of every successful handler call."""
    return [line.split()[0] for line in client.lrange(HANDLED, 0, -1)]


def handled_pids(client: redis.Redis) -> Counter[int]:
    """Return how many entries each worker process handled."""
    return Counter(int(line.split()[1]) for line in client.lrange(HANDLED, 0, -1))


def dead_letters(stream: str) -> str:
    """Return the dead-letter stream of ``stream`` as the app names it now: ``<stream>:dlq``,
    or ``{<stream>}:dlq`` on a Redis Cluster (the stream's hash slot)."""
    return dead_letter_name(stream, get_config().consumers.dead_letter_suffix)


def published_ids(client: redis.Redis, stream: str = "test.orders") -> set[str]:
    """Return the event ids in ``stream``."""
    return {fields["event_id"] for _, fields in client.xrange(stream)}
