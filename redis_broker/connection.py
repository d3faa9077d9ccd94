"""Redis clients built from the configuration: one sync client per process, one async
client per running event loop.

Why per loop: redis-py's asyncio connections belong to the loop that opened them, and
Django runs async views, Channels consumers and ``async_to_sync`` calls on several loops
in one process. A client shared across loops fails with "attached to a different loop".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from .conf import SETTING_NAME, BrokerConfig, get_config
from .exceptions import BrokerUnavailable, WriteRefused
from .sharded_pubsub import aclose_cluster_client

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # the hiredis extra is optional
    _hiredis_pack = None  # type: ignore[assignment]

#: Errors that mean "Redis is not there or not answering", as opposed to a command error.
#: On a cluster: no node answers (``RedisClusterException``, which redis-py raises as a
#: plain ``Exception``), the cluster is failing over (CLUSTERDOWN) or a slot is moving
#: (TRYAGAIN); each passes like an outage of one Redis.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
#: Anything a Redis call may raise: a lost connection or a refused command.
REDIS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.RedisError)

_lock = threading.Lock()
_sync_client: tuple[int, redis.Redis] | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)
#: Async clients that a settings change replaced while their loop was running.
_retired_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[redis.asyncio.Redis]
] = weakref.WeakKeyDictionary()


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and pages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def client_kwargs(config: BrokerConfig) -> dict[str, Any]:
    """Return the keyword arguments our clients get on top of the URL and ``OPTIONS``.

    The socket timeout must be longer than any blocking read (checked by E010) so a
    half-open connection is detected instead of hanging a worker forever.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.socket_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": config.health_check_interval,
        "client_name": "django-redis-broker",
    }
    if config.url.startswith("unix:"):
        del kwargs["socket_keepalive"]  # a TCP option; unix sockets reject it
    kwargs.update(config.options)
    kwargs["decode_responses"] = False  # wire.py decodes; binary-safe for foreign entries
    return kwargs


def _retry(config: BrokerConfig, *, asyncio_: bool) -> Any:
    """Retry dropped or refused connections, but never a timeout.

    A timeout has already waited SOCKET_TIMEOUT; retrying it would make callers wait a
    multiple of the configured limit. A reset or refused connection fails fast, and a
    retry with backoff rides out a Redis restart or a failover.
    """
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
    if asyncio_:
        return redis.asyncio.retry.Retry(backoff, config.retries, (redis.ConnectionError,))
    return Retry(backoff, config.retries, (redis.ConnectionError,))


def is_cluster(client: Any) -> bool:
    """Return True when ``client`` is one of redis-py's Redis Cluster clients."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def _cluster_retry(config: BrokerConfig, *, asyncio_: bool) -> Any:
    """Retry a cluster command through a failover: the promotion of a replica takes
    ``cluster-node-timeout`` plus an election (about 2 s with a 1 s timeout), so the
    cluster client keeps trying for that long, refreshing the slot map between tries."""
    backoff = ExponentialWithJitterBackoff(base=0.1, cap=1.0)
    retries = max(config.retries, 6)
    if asyncio_:
        return redis.asyncio.retry.Retry(backoff, retries)
    return Retry(backoff, retries)


def _cluster_kwargs(config: BrokerConfig, *, asyncio_: bool) -> dict[str, Any]:
    kwargs = client_kwargs(config)
    kwargs.setdefault("retry", _cluster_retry(config, asyncio_=asyncio_))
    node = redis.asyncio.cluster.ClusterNode if asyncio_ else redis.cluster.ClusterNode
    if config.startup_nodes:
        kwargs["startup_nodes"] = [node(host, port) for host, port in config.startup_nodes]
    return kwargs


def build_client(config: BrokerConfig) -> redis.Redis:
    """Return a new sync client for ``config`` (URL, TLS, ACL, unix socket, Sentinel or
    a Redis Cluster, whose client routes each command to the node of its keys)."""
    if config.cluster:
        cluster = redis.cluster.RedisCluster.from_url(
            config.url, **_cluster_kwargs(config, asyncio_=False)
        )
        return cast(redis.Redis, cluster)  # the same commands, routed by key
    kwargs = client_kwargs(config)
    kwargs.setdefault("retry", _retry(config, asyncio_=False))
    if config.sentinels:
        url_kwargs = _url_kwargs(config.url)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels),
            sentinel_kwargs=dict(config.sentinel_options) or None,
            **{**url_kwargs, **kwargs},
        )
        assert config.sentinel_service is not None  # validated with SENTINELS
        master: redis.Redis = sentinel.master_for(config.sentinel_service)  # type: ignore[no-untyped-call]
        return master
    return redis.Redis.from_url(config.url, **kwargs)


def build_async_client(config: BrokerConfig, *, retries: bool = True) -> redis.asyncio.Redis:
    """Return a new asyncio client for ``config``; use it only on the current loop.

    ``retries=False`` lets every dropped connection surface at once, for a caller that
    must notice it (a Pub/Sub reader that logs the window in which it heard nothing).
    """
    if config.cluster:
        cluster_kwargs = _cluster_kwargs(config, asyncio_=True)
        if not retries:
            cluster_kwargs["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
        cluster = redis.asyncio.cluster.RedisCluster.from_url(config.url, **cluster_kwargs)
        return cast(redis.asyncio.Redis, cluster)
    kwargs = client_kwargs(config)
    if retries:
        kwargs.setdefault("retry", _retry(config, asyncio_=True))
    else:
        kwargs["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if config.sentinels:
        url_kwargs = _url_kwargs(config.url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels),
            sentinel_kwargs=dict(config.sentinel_options) or None,
            **{**url_kwargs, **kwargs},
        )
        assert config.sentinel_service is not None
        master: redis.asyncio.Redis = sentinel.master_for(config.sentinel_service)
        return master
    return redis.asyncio.Redis.from_url(config.url, **kwargs)


def _url_kwargs(url: str) -> dict[str, Any]:
    """Return db, username, password and TLS from ``url`` for the Sentinel-managed master."""
    parts = urlsplit(url)
    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["username"] = parts.username
    if parts.password:
        kwargs["password"] = parts.password
    path = parts.path.lstrip("/")
    if path.isdigit():
        kwargs["db"] = int(path)
    if parts.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


def get_redis() -> redis.Redis:
    """Return this process's sync client (thread-safe; rebuilt after a fork)."""
    global _sync_client
    current = _sync_client
    pid = os.getpid()
    if current is not None and current[0] == pid:
        return current[1]
    with _lock:
        if _sync_client is None or _sync_client[0] != pid:
            _sync_client = (pid, build_client(get_config()))
        return _sync_client[1]


def get_async_redis() -> redis.asyncio.Redis:
    """Return the async client of the running event loop, creating it on first use."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = build_async_client(get_config())
        _async_clients[loop] = client
    return client


def execute_batch(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one round trip and return their raw replies, in order.

    A non-transactional pipeline without the pipeline's per-command Python work. That
    work (building each command, packing it, running its response callback) costs a few
    microseconds per command, which is most of what a commit with a thousand model
    events spends talking to Redis. Commands are packed by hiredis when it is installed
    and written ``BATCH_WRITE_SIZE`` at a time, without waiting for replies in between,
    so Redis runs the first ones while the rest are packed; replies are returned as the
    parser gives them (bytes, no callbacks).

    The pipeline's rules hold: every reply is read before the first ``ResponseError`` is
    raised, so the connection never goes back to the pool out of step; a dropped
    connection is retried under the client's ``Retry`` (the whole batch, as a pipeline
    does); any other failure disconnects the connection before it is released.
    """
    if not commands:
        return []
    if is_cluster(client):
        replies = _cluster_batch(client, commands)
    else:
        replies = _node_batch(client, commands)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply  # every reply was read: connections are in step
    return replies


def _node_batch(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``commands`` on one connection of ``client``; errors are left in place."""
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        replies: list[Any] = conn.retry.call_with_retry(
            lambda: _exchange(conn, commands), lambda _error: conn.disconnect()
        )
        return replies
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _cluster_batch(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send each node its share of ``commands`` in one round trip; return replies in order.

    Commands are grouped by the node serving their key (``command[1]``: every batched
    command names its key first) and each group goes through :func:`execute_batch` on
    that node's own client, which packs with hiredis: about 5x the throughput of
    redis-py's cluster pipeline, which works out each command's slot in Python. The
    commands a node refused with MOVED/ASK (a slot moved: a failover, a resharding), or
    a whole share whose connection failed, are sent again through the cluster pipeline,
    which follows redirections and refreshes the slot map (after a failed connection an
    XADD may then be written twice, with one ``event_id``).
    """
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, command in enumerate(commands):
        node = client.get_node_from_key(command[1])
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(commands)
    for node, indexes in groups.values():
        share = [commands[i] for i in indexes]
        try:
            got = _node_batch(client.get_redis_connection(node), share)
        except CONNECTION_ERRORS:
            got = _cluster_pipeline(client, share)
        if any(
            isinstance(r, (redis.exceptions.MovedError, redis.exceptions.AskError)) for r in got
        ):
            moved = [i for i, r in enumerate(got) if isinstance(r, redis.ResponseError)]
            for i, reply in zip(
                moved, _cluster_pipeline(client, [share[i] for i in moved]), strict=True
            ):
                got[i] = reply
        for i, reply in zip(indexes, got, strict=True):
            replies[i] = reply
    return replies


def _cluster_pipeline(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``commands`` through the cluster pipeline (follows MOVED/ASK); errors in place."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies


#: Commands per write in a batch: Redis runs the first writes while the rest are packed.
BATCH_WRITE_SIZE = 200


def pack_commands(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """Return ``commands`` packed for ``conn.send_packed_command`` (sync or asyncio: a
    list of buffers; hiredis makes it one).

    hiredis packs a command in C when it is installed; redis-py's own packer costs about
    0.5 us a command in Python (the XACKs of a batch: bench/consume.py).
    """
    if _hiredis_pack is not None:
        return [b"".join([_hiredis_pack(command) for command in commands])]
    return conn.pack_commands(commands)


def _exchange(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    for start in range(0, len(commands), BATCH_WRITE_SIZE):
        chunk = commands[start : start + BATCH_WRITE_SIZE]
        conn.send_packed_command(pack_commands(conn, chunk), check_health=not start)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)  # the caller raises the first, after reading them all
    return replies


def reset_connections() -> None:
    """Forget every client so the next call builds new ones from the current settings.

    The sync client's pool is disconnected. Async clients cannot be closed from sync
    code: the running loop's client is set aside for :func:`aclose_async_redis` on that
    loop to close; those of other loops (which may be gone) are left to the garbage
    collector.
    """
    global _sync_client
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    with _lock:
        if _sync_client is not None:
            with contextlib.suppress(Exception):
                _close_sentinels(_sync_client[1])
                _sync_client[1].close()
            _sync_client = None
        for loop in [loop for loop in _retired_async_clients if loop.is_closed()]:
            del _retired_async_clients[loop]  # nobody closed them; do not keep the loop alive
        if running is not None and running in _async_clients:
            _retired_async_clients.setdefault(running, []).append(_async_clients[running])
        _async_clients.clear()


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Forget every client when a test overrides ``REDIS_BROKER`` (see ``conf.py``)."""
    if setting == SETTING_NAME:
        reset_connections()


async def aclose_async_redis() -> None:
    """Close the running loop's async clients; call before the loop ends to avoid warnings.

    Closes the current one and any that a settings change set aside on this loop, with
    the Sentinel connections a Sentinel-managed client opened to find its master.
    """
    loop = asyncio.get_running_loop()
    clients = _retired_async_clients.pop(loop, [])
    current = _async_clients.pop(loop, None)
    if current is not None:
        clients.append(current)
    for client in clients:
        for sentinel in _sentinel_clients(client):
            await sentinel.aclose()
        if is_cluster(client):
            await aclose_cluster_client(cast(Any, client))
        else:
            await client.aclose()


def _sentinel_clients(client: Any) -> list[Any]:
    """Return the clients a Sentinel-managed ``client`` uses to ask for its master."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", ()))


def _close_sentinels(client: redis.Redis) -> None:
    for sentinel in _sentinel_clients(client):
        sentinel.close()


#: Replies of a Redis that is up but takes no writes: memory full under ``noeviction``
#: (OOM), or a read-only replica (READONLY).
WRITE_REFUSALS: tuple[type[BaseException], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)

_URL_KEY = "REDIS_BROKER['URL']"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def explain(exc: BaseException, url: str) -> str:
    """Return what a connection failure most likely means, in words an operator can act on.

    redis-py reports the symptom: a TLS handshake that a plain Redis never answers is
    "Timeout connecting to server", a missing password is "Authentication required."
    (or, over RESP3, "HELLO must be called…"). The cause is named here, with Redis's
    own words kept at the end.
    """
    said = str(exc) or type(exc).__name__
    scheme = urlsplit(url).scheme if "://" in url else ""
    if isinstance(exc, redis.AuthenticationError):
        lowered = said.lower()
        if "invalid username" in lowered or "wrongpass" in lowered:
            return (
                f"authentication failed: the user or password in {_URL_KEY} is wrong "
                f"(Redis said: {said})"
            )
        return (
            f"Redis requires authentication: put user:password@ in {_URL_KEY} (Redis said: {said})"
        )
    chain = list(_chain(exc))
    words = " ".join(str(e) for e in chain).lower()
    if scheme == "rediss":
        if "wrong_version_number" in words or "record layer failure" in words:
            return (
                f"the server does not speak TLS on that port: it answered the TLS handshake "
                f"with plain text; use redis:// for a plain Redis port ({said})"
            )
        if "certificate verify failed" in words:
            return (
                f"the server's TLS certificate was not trusted; give its CA with "
                f"REDIS_BROKER['OPTIONS']['ssl_ca_certs'] ({said})"
            )
        timed_out = any(isinstance(e, TimeoutError | redis.TimeoutError) for e in chain)
        if timed_out and "handshake" in words:  # the sync client says where it waited
            return (
                f"probably a TLS mismatch: the TLS handshake got no answer; is the server "
                f"speaking TLS on that port? A plain Redis port needs redis:// ({said})"
            )
        if timed_out and "connecting" in words:  # the async client does not
            return (
                f"{said}: the host did not answer, or the TLS handshake got no answer "
                f"(a TLS mismatch); is the server speaking TLS on that port? A plain "
                f"Redis port needs redis://"
            )
    elif scheme == "redis" and any(isinstance(e, ConnectionResetError) for e in chain):
        return (
            f"{said}; if that port serves TLS, the URL must start with rediss:// "
            f"(a TLS port resets a plain-text client)"
        )
    return said


def unavailable(exc: BaseException, url: str | None = None) -> BrokerUnavailable:
    """Return a ``BrokerUnavailable`` for ``exc`` that names the masked URL and the cause."""
    url = url if url is not None else get_config().url
    return BrokerUnavailable(f"Redis at {mask_url(url)} is unavailable: {explain(exc, url)}")


#: What a write went to, for error messages: text, or a function that builds it only
#: when an error needs it (a batch's stream names are not worth collecting otherwise).
Target = str | Callable[[], str] | None


def write_refused(exc: BaseException, target: Target = None) -> WriteRefused:
    """Return a ``WriteRefused`` for an OOM or READONLY reply, naming ``target`` and why."""
    shown = mask_url(get_config().url)
    named = target() if callable(target) else target
    where = f" to {named}" if named else ""
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        hint = (
            "it is a read-only replica; point REDIS_BROKER['URL'] at the primary "
            "(or use SENTINELS, which always finds it)"
        )
    else:
        hint = (
            "its memory is full (maxmemory) and its maxmemory-policy evicts nothing; "
            "raise maxmemory, trim or consume streams (STREAM_MAXLEN), or choose a "
            "maxmemory-policy such as volatile-lru that frees memory"
        )
    return WriteRefused(f"Redis at {shown} refused the write{where}: {hint} (Redis said: {exc})")


@contextlib.contextmanager
def translate_errors(target: Target = None) -> Iterator[None]:
    """Turn redis-py connection errors into ``BrokerUnavailable`` inside the block.

    OOM and READONLY replies become ``WriteRefused`` (a ``BrokerUnavailable``) naming
    ``target``, the stream or channel written to.
    """
    try:
        yield
    except BrokerUnavailable:
        raise
    except WRITE_REFUSALS as exc:
        raise write_refused(exc, target) from exc
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc) from exc


@contextlib.asynccontextmanager
async def atranslate_errors(target: Target = None) -> AsyncIterator[None]:
    """Async twin of :func:`translate_errors`."""
    try:
        yield
    except BrokerUnavailable:
        raise
    except WRITE_REFUSALS as exc:
        raise write_refused(exc, target) from exc
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc) from exc


class LuaScript:
    """A Lua script run by its SHA1 (EVALSHA), loaded on first use (EVAL on NOSCRIPT).

    ``arun`` packs the whole command with hiredis when it is installed: a script that
    takes hundreds of arguments (outputs of a batch, bench/subscribers.py) spends most
    of its client time in redis-py's pure-Python packing otherwise.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script on the sync ``client`` and return its reply."""
        run: Any = client.execute_command
        try:
            return run("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return run("EVAL", self.source, len(keys), *keys, *args)

    async def arun(
        self, client: redis.asyncio.Redis, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        """Run the script on ``client`` and return its reply."""
        try:
            return await _acommand(client, ("EVALSHA", self.sha, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            return await _acommand(client, ("EVAL", self.source, len(keys), *keys, *args))


async def _acommand(client: redis.asyncio.Redis, command: tuple[Any, ...]) -> Any:
    """Send one command on a pooled async connection and read its reply (no callbacks).

    A dropped connection is retried under the client's ``Retry``; any failure but a
    ``ResponseError`` (after which the connection is in step) disconnects it. A cluster
    client routes the command itself (by its keys, EVALSHA's included).
    """
    if is_cluster(client):
        routed: Any = client.execute_command  # by the command's keys
        return await routed(*command)
    pool: Any = client.connection_pool
    conn: Any = await pool.get_connection()

    async def exchange() -> Any:
        await conn.send_packed_command(pack_commands(conn, [command]))
        return await conn.read_response()

    async def failed(_error: BaseException) -> None:
        await conn.disconnect()

    try:
        return await conn.retry.call_with_retry(exchange, failed)
    except redis.ResponseError:
        raise
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


def publish_command(client: Any) -> str:
    """Return the command that publishes a Pub/Sub message on ``client``'s Redis.

    A cluster uses sharded Pub/Sub (``SPUBLISH``): a message goes to the shard that
    owns its channel's slot, not to every node, and ``SSUBSCRIBE`` hears it there.
    """
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


def pubsub_publish(client: redis.Redis, channel: str, message: Any) -> int:
    """Publish ``message`` on ``channel``; return how many subscribers got it."""
    run: Any = client.execute_command
    return int(run(publish_command(client), channel, message))


async def apubsub_publish(client: redis.asyncio.Redis, channel: str, message: Any) -> int:
    """Async twin of :func:`pubsub_publish`."""
    run: Any = client.execute_command
    return int(await run(publish_command(client), channel, message))
