"""The document's servers: where Redis is, never who logs in or with what."""

from __future__ import annotations

import json

import pytest

from redis_broker.asyncapi import servers

from .helpers import asyncapi_errors, build, config

SECRETS = ("s3cret-pass", "alice-the-user", "query-secret", "option-secret")


@pytest.mark.parametrize(
    "raw",
    [
        {"URL": "rediss://alice-the-user:s3cret-pass@127.0.0.1:6380/2"},
        {"URL": "redis://:s3cret-pass@127.0.0.1/0?password=query-secret"},
        {"URL": "redis://127.0.0.1:6379/0", "OPTIONS": {"password": "option-secret"}},
        {
            "URL": "rediss://alice-the-user:s3cret-pass@127.0.0.1:7000/0",
            "CLUSTER": True,
            "STARTUP_NODES": [("127.0.0.1", 7002), "127.0.0.1:7003"],
        },
        {
            "URL": "redis://alice-the-user:s3cret-pass@127.0.0.1/1",
            "SENTINELS": [("127.0.0.1", 26379), ("127.0.0.1", 26380)],
            "SENTINEL_SERVICE": "mymaster",
        },
        {"URL": "unix://alice-the-user:s3cret-pass@/run/redis.sock?db=3&password=query-secret"},
    ],
    ids=["tls-acl", "query-password", "options-password", "cluster", "sentinel", "unix"],
)
def test_no_user_name_or_password_reaches_the_document(raw: dict[str, object]) -> None:
    """Tests that no user name or password of the URL, its query or OPTIONS appears
    anywhere in the document, which says instead that the server asks for credentials."""
    document = build(**raw)
    text = json.dumps(document)
    for secret in SECRETS:
        assert secret not in text
    assert asyncapi_errors(document) == []
    scheme = document["components"]["securitySchemes"]["redis_acl"]
    assert scheme["type"] == "userPassword"
    for server in document["servers"].values():
        assert server["security"] == [{"$ref": "#/components/securitySchemes/redis_acl"}]


def test_a_tls_url_is_a_rediss_server_with_host_port_and_database() -> None:
    """Tests that ``rediss://`` gives protocol rediss, the host with its port and the
    database as the path."""
    assert servers(config(URL="rediss://:pw@127.0.0.1:6380/2")) == {
        "redis": {
            "host": "127.0.0.1:6380",
            "pathname": "/2",
            "protocol": "rediss",
            "description": "The Redis server.",
        }
    }


def test_a_url_without_port_or_credentials_has_no_security() -> None:
    """Tests that the default port is written out and that a server without credentials
    gets no security requirement."""
    document = build(URL="redis://[::1]")
    assert document["servers"]["redis"]["host"] == "[::1]:6379"
    assert document["servers"]["redis"]["pathname"] == "/0"
    assert "security" not in document["servers"]["redis"]
    assert "securitySchemes" not in document["components"]


def test_each_cluster_node_and_sentinel_is_a_server() -> None:
    """Tests that a cluster's URL node and startup nodes, and each Sentinel, are servers."""
    cluster = servers(
        config(URL="redis://127.0.0.1:7000", CLUSTER=True, STARTUP_NODES=["127.0.0.1:7001"])
    )
    assert [s["host"] for s in cluster.values()] == ["127.0.0.1:7000", "127.0.0.1:7001"]
    sentinel = servers(
        config(SENTINELS=[("127.0.0.1", 26379), ("::1", 26380)], SENTINEL_SERVICE="mymaster")
    )
    assert [s["host"] for s in sentinel.values()] == ["127.0.0.1:26379", "[::1]:26380"]
    assert "`mymaster`" in sentinel["sentinel-1"]["description"]
