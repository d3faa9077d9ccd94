"""Connections: URL forms, ACL users, unix sockets, and failing fast when Redis is away."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from django.test import override_settings

from redis_broker import BrokerUnavailable, apublish, broadcast, publish
from redis_broker.connection import (
    BATCH_WRITE_SIZE,
    aclose_async_redis,
    execute_batch,
    get_async_redis,
    get_redis,
    mask_url,
)
from redis_broker.testing import RedisServer, free_port, wait_for
from tests.helpers import broker_url, single_node_only


def test_mask_url_hides_only_the_password() -> None:
    """Tests that URLs shown in errors and pages never contain the password."""
    assert mask_url("redis://app:s3cret@cache:6380/2") == "redis://app:***@cache:6380/2"
    assert mask_url("rediss://:s3cret@cache/0") == "rediss://:***@cache/0"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_closed_port_raises_broker_unavailable_quickly() -> None:
    """Tests that publishing to a closed port fails fast with the masked URL, not a hang."""
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    with override_settings(REDIS_BROKER={"URL": url}):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            publish("orders", {"id": 1})
        elapsed = time.monotonic() - started
        with pytest.raises(BrokerUnavailable):
            broadcast("chat.lobby", 1)
    assert elapsed < 2.0
    assert "redis://app:***@127.0.0.1" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung or half-open Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_silent_server_raises_within_the_socket_timeout(silent_server: int) -> None:
    """Tests that a Redis that never answers costs at most about one SOCKET_TIMEOUT."""
    settings = {
        "URL": f"redis://127.0.0.1:{silent_server}/0",
        "SOCKET_TIMEOUT": 0.5,
        "CONSUMERS": {"BLOCK_MS": 100},
    }
    with override_settings(REDIS_BROKER=settings):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            publish("orders", {"id": 1})
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.5


def test_acl_user_from_the_url_is_used(redis_client: redis.Redis, redis_broker_url: str) -> None:
    """Tests that user:password@ in the URL logs in as that ACL user."""
    redis_client.acl_setuser(
        "publisher", enabled=True, passwords=["+pw1"], keys=["orders*"], commands=["+@all"]
    )
    try:
        host = redis_broker_url.removeprefix("redis://")
        with override_settings(REDIS_BROKER={"URL": f"redis://publisher:pw1@{host}"}):
            publish("orders", 1)
            assert get_redis().acl_whoami() in ("publisher", b"publisher")
            with pytest.raises(redis.ResponseError, match="no permissions"):
                publish("invoices", 1)  # the ACL limits this user to orders*
        assert redis_client.xlen("orders") == 1
    finally:
        redis_client.acl_deluser("publisher")


def test_wrong_password_is_reported_as_unavailable(redis_broker_url: str) -> None:
    """Tests that a wrong ACL password surfaces as BrokerUnavailable saying why, password masked."""
    host = redis_broker_url.removeprefix("redis://")
    with (
        override_settings(REDIS_BROKER={"URL": f"redis://nobody:wrong@{host}"}),
        pytest.raises(BrokerUnavailable, match=r"nobody:\*\*\*@.*invalid username-password"),
    ):
        publish("orders", 1)


def test_unix_socket_url_connects(redis_server_factory: Callable[[], RedisServer]) -> None:
    """Tests that unix:// URLs reach Redis over its socket."""
    server = redis_server_factory()
    with override_settings(REDIS_BROKER={"URL": f"unix://{server.unix_socket}?db=0"}):
        publish("orders", {"id": 1})
    client = redis.Redis(unix_socket_path=server.unix_socket)
    try:
        assert client.xlen("orders") == 1
    finally:
        client.close()


def test_options_are_passed_to_the_pool(redis_broker_url: str) -> None:
    """Tests that OPTIONS reach redis-py (here: the client name Redis reports)."""
    with override_settings(
        REDIS_BROKER={**broker_url(redis_broker_url), "OPTIONS": {"client_name": "billing-web"}}
    ):
        client = get_redis()
        client.ping()
        assert client.client_getname() in ("billing-web", b"billing-web")


def test_client_survives_a_redis_restart(redis_server_factory: Callable[[], RedisServer]) -> None:
    """Tests that the pooled client reconnects after Redis restarts on the same port."""
    server = redis_server_factory()
    with override_settings(REDIS_BROKER={"URL": server.url}):
        publish("orders", 1)
        server.stop()
        with pytest.raises(BrokerUnavailable):
            publish("orders", 2)
        server.start()
        publish("orders", 3)
        assert get_redis().xlen("orders") == 1  # the restarted Redis kept nothing


@single_node_only
def test_execute_batch_sends_commands_in_a_few_writes_and_returns_replies_in_order(
    redis_client: redis.Redis, sends: list[int]
) -> None:
    """Tests that a batch goes out in writes of BATCH_WRITE_SIZE commands, without waiting
    for replies in between, and gives each reply in order."""
    client = get_redis()
    client.ping()  # open the pooled connection first
    sends.clear()
    count = 2 * BATCH_WRITE_SIZE + 50
    replies = execute_batch(client, [("XADD", "batch", "*", "n", str(n)) for n in range(count)])
    assert len(sends) == 3
    entries = redis_client.xrange("batch")
    assert [fields["n"] for _id, fields in entries] == [str(n) for n in range(count)]
    assert [entry_id.encode() for entry_id, _fields in entries] == replies


@single_node_only
def test_execute_batch_reads_every_reply_before_raising_a_command_error(
    redis_client: redis.Redis,
) -> None:
    """Tests that a refused command in a batch raises after the others ran, and the pooled
    connection stays open and in step for the next command."""
    client = get_redis()
    connection_id = client.client_id()
    redis_client.set("not-a-stream", "x")
    commands = [
        ("XADD", "ok", "*", "n", "1"),
        ("XADD", "not-a-stream", "*", "n", "2"),
        ("XADD", "ok", "*", "n", "3"),
    ]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        execute_batch(client, commands)
    assert redis_client.xlen("ok") == 2
    assert client.echo("in step") == b"in step"  # not a stale reply from the batch
    assert client.client_id() == connection_id


@single_node_only
def test_execute_batch_resends_a_batch_whose_connection_dropped(redis_client: redis.Redis) -> None:
    """Tests that a connection lost in the middle of a batch is retried on a new one.

    The batch's first command kills its own connection, so Redis runs nothing after it;
    on the retry that connection no longer exists (nothing to kill) and the XADD runs.
    """
    client = get_redis()
    doomed = client.client_id()
    commands = [
        ("CLIENT", "KILL", "ID", doomed, "SKIPME", "no"),
        ("XADD", "after-drop", "*", "n", "1"),
    ]
    killed, entry_id = execute_batch(client, commands)
    assert killed == 0  # the retry's answer: the first attempt's connection was gone
    assert redis_client.xrange("after-drop")[0][0].encode() == entry_id
    assert redis_client.xlen("after-drop") == 1
    assert client.client_id() != doomed


async def test_a_settings_change_leaves_the_loops_async_client_for_aclose_to_close(
    redis_client: redis.Redis, redis_broker_url: str
) -> None:
    """Tests that an async client replaced by a settings change while its loop runs is
    closed by ``aclose_async_redis()`` on that loop, not left to the garbage collector."""
    replaced = get_async_redis()
    connection_id = await replaced.client_id()
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "KEY_PREFIX": "other:"}):
        assert get_async_redis() is not replaced
    await aclose_async_redis()

    def gone() -> bool:
        return all(client["id"] != str(connection_id) for client in redis_client.client_list())

    wait_for(gone, timeout=5, message=f"connection {connection_id} closed")


# --- Messages that name the cause, not the symptom ----------------------------------------


def test_rediss_url_to_a_plain_port_says_it_is_probably_a_tls_mismatch(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """Tests that rediss:// to a plain Redis says the TLS handshake got no answer, not
    only "Timeout connecting"."""
    server = redis_server_factory()
    settings = {
        "URL": f"rediss://127.0.0.1:{server.port}/0",
        "SOCKET_TIMEOUT": 0.5,
        "SOCKET_CONNECT_TIMEOUT": 0.5,
        "CONSUMERS": {"BLOCK_MS": 100},
    }
    with (
        override_settings(REDIS_BROKER=settings),
        pytest.raises(BrokerUnavailable, match="TLS mismatch: the TLS handshake got no answer"),
    ):
        publish("orders", 1)


async def test_async_rediss_url_to_a_plain_port_says_it_is_probably_a_tls_mismatch(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """Tests that the async client's timeout gets the same explanation."""
    server = redis_server_factory()
    settings = {
        "URL": f"rediss://127.0.0.1:{server.port}/0",
        "SOCKET_TIMEOUT": 0.5,
        "SOCKET_CONNECT_TIMEOUT": 0.5,
        "CONSUMERS": {"BLOCK_MS": 100},
    }
    with override_settings(REDIS_BROKER=settings):
        with pytest.raises(BrokerUnavailable, match="is the server speaking TLS on that port"):
            await apublish("orders", 1)
        await aclose_async_redis()


@pytest.fixture
def password_server(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    """Return a private Redis that requires the password ``s3cret``."""
    server = redis_server_factory()
    client = redis.Redis(port=server.port)
    client.config_set("requirepass", "s3cret")
    client.close()
    return server


@pytest.mark.parametrize("protocol", [2, 3])
def test_missing_password_says_redis_requires_authentication(
    password_server: RedisServer, protocol: int
) -> None:
    """Tests that a URL without a password, for a Redis that wants one, says where to put
    it instead of redis-py's "HELLO must be called…" or "Authentication required."."""
    settings = {"URL": password_server.url, "OPTIONS": {"protocol": protocol}}
    with (
        override_settings(REDIS_BROKER=settings),
        pytest.raises(BrokerUnavailable) as info,
    ):
        publish("orders", 1)
    assert "Redis requires authentication: put user:password@ in REDIS_BROKER['URL']" in str(
        info.value
    )


def test_wrong_password_says_authentication_failed(password_server: RedisServer) -> None:
    """Tests that a wrong password is reported as failed authentication, password masked."""
    url = f"redis://:wrong@127.0.0.1:{password_server.port}/0"
    with (
        override_settings(REDIS_BROKER={"URL": url}),
        pytest.raises(BrokerUnavailable) as info,
    ):
        publish("orders", 1)
    said = str(info.value)
    assert "authentication failed: the user or password in REDIS_BROKER['URL'] is wrong" in said
    assert "redis://:***@127.0.0.1" in said
    assert "wrong@" not in said
