"""The pytest plugin users get: a real private Redis, isolation, and refusal of shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from redis_broker.testing import RedisServer, wait_for

USER_TEST = """
import os, redis

def test_uses_a_real_empty_redis(redis_client):
    assert os.environ["REDIS_URL"].startswith("redis://127.0.0.1:")
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", 1)

def test_each_test_starts_empty(redis_client):
    assert redis_client.dbsize() == 0
"""


def run_user_suite(tmp_path: Path, *, redis_url: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--redis-broker", "-p", "no:django",
         "-p", "no:cacheprovider", "-q", "test_user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_plugin_starts_a_private_redis_when_redis_url_is_unset(tmp_path: Path) -> None:
    """Tests that a user's suite gets a private redis-server and an empty db per test."""
    result = run_user_suite(tmp_path, redis_url=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_plugin_refuses_a_non_empty_redis(
    tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> None:
    """Tests that the plugin will not flush a database that holds someone's keys."""
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url)
    client.set("precious", 1)
    result = run_user_suite(tmp_path, redis_url=server.url)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "refuses a non-empty one" in result.stdout + result.stderr
    assert client.get("precious") == b"1"
    client.close()


def test_redis_server_stops_and_starts_on_the_same_port(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    """Tests that RedisServer can take Redis away and bring it back at the same address."""
    server = redis_server_factory()
    port = server.port
    server.stop()
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.start()
    assert wait_for(client.ping, message="restarted server answers")
    assert server.port == port
    client.close()
