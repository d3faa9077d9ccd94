"""System checks for ``REDIS_BROKER``.

The static check runs the very validator ``get_config()`` uses, so ``manage.py check``
and runtime can never disagree. Checks that talk to Redis are deploy checks only
(``manage.py check --deploy``): a plain ``check`` never does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import conf
from .conf import (
    MIN_METRICS_TOKEN_LENGTH,
    W_CROSS_SLOT,
    W_EVICTION,
    W_NO_PASSWORD,
    W_NO_TLS,
    W_UNREACHABLE,
    W_WEAK_METRICS_TOKEN,
)
from .connection import CONNECTION_ERRORS, build_client, mask_url
from .naming import derived_name, key_slot, prefixed
from .wire import reply_text

#: Policies that never evict keys; anything else may silently delete streams and groups.
SAFE_EVICTION_POLICIES = frozenset(
    {"noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)


@register(Tags.compatibility, "redis_broker")
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report every mistake in ``REDIS_BROKER``, each naming its key."""
    _config, errors = conf.validate(conf.raw_setting())
    return [
        Error(
            f"REDIS_BROKER{e.key} {e.detail}" if e.key else f"REDIS_BROKER {e.detail}",
            hint=e.hint,
            id=e.check_id,
        )
        for e in errors
    ]


@register(Tags.compatibility, "redis_broker")
def check_cluster_slots(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """On a Redis Cluster, warn about each consumer whose keys would span hash slots.

    A warning, not an error: one such consumer must not stop ``migrate`` or the web
    processes; ``runconsumers`` refuses to start it (``refuse_cluster_problems``).
    """
    config, errors = conf.validate(conf.raw_setting())
    if errors or not config.cluster:
        return []
    from .consumers.registry import autodiscover

    return cluster_problems(config, autodiscover())


def cluster_problems(config: conf.BrokerConfig, specs: Sequence[Any]) -> list[CheckMessage]:
    """Return a warning for each consumer a cluster cannot run as declared. Pure.

    A consumer with ``output=`` acknowledges its input and appends the output in one
    script, and a script's keys must share a slot. Its derived keys always do (see
    ``naming.derived_name``); an output is named by the user, so it must share its
    input's hash tag. Pattern subscriptions do not exist for sharded Pub/Sub.
    """
    if not config.cluster:
        return []
    messages: list[CheckMessage] = []
    for spec in specs:
        if spec.kind == "channel":
            if spec.is_pattern:
                messages.append(
                    Warning(
                        f"{spec.path} subscribes to the pattern {spec.subscription!r}; a "
                        "Redis Cluster delivers channels over sharded Pub/Sub, which has "
                        "no patterns.",
                        hint="Name the channels one by one (one consumer each), or consume "
                        "a stream instead.",
                        id=W_CROSS_SLOT,
                    )
                )
            continue
        if spec.output is None:
            continue
        source = prefixed(config.key_prefix, spec.source)
        output = prefixed(config.key_prefix, spec.output)
        if key_slot(source) != key_slot(output):
            hinted = derived_name(spec.source, "." + spec.output)  # the input's slot
            messages.append(
                Warning(
                    f"{spec.path} reads {source!r} (slot {key_slot(source)}) and appends "
                    f"to its output {output!r} (slot {key_slot(output)}) in one atomic "
                    "step, which a Redis Cluster refuses across slots.",
                    hint=f"Give the output the input's hash tag, for example output='{hinted}'.",
                    id=W_CROSS_SLOT,
                )
            )
    return messages


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security, "redis_broker", deploy=True)
def check_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn about a Redis reachable without a password or TLS, or one that may evict keys."""
    config, errors = conf.validate(conf.raw_setting())
    if errors:
        return []  # the static check reports them
    return [*url_warnings(config), *metrics_token_warnings(config), *_check_server(config)]


def url_warnings(config: conf.BrokerConfig) -> list[CheckMessage]:
    """Warn when the URL reaches a non-loopback host without a password or without TLS.

    Pure: it reads the configuration only, so it is cheap to call and to test.
    """
    messages: list[CheckMessage] = []
    parts = urlsplit(config.url)
    remote = parts.scheme != "unix" and not _is_loopback(parts.hostname)
    has_password = bool(parts.password or config.options.get("password"))
    if remote and not has_password:
        messages.append(
            Warning(
                f"REDIS_BROKER['URL'] points at {parts.hostname}, which is not a loopback "
                "address, and gives no password.",
                hint='Use an ACL user: "rediss://user:password@host:6379/0".',
                id=W_NO_PASSWORD,
            )
        )
    if remote and parts.scheme != "rediss":
        messages.append(
            Warning(
                f"REDIS_BROKER['URL'] reaches {parts.hostname} without TLS.",
                hint='Use the "rediss://" scheme so events and credentials are encrypted.',
                id=W_NO_TLS,
            )
        )
    return messages


def metrics_token_warnings(config: conf.BrokerConfig) -> list[CheckMessage]:
    """Warn when ``METRICS_TOKEN`` is short enough to guess.

    A deploy check, as Django's own ``SECRET_KEY`` strength check is: a short token on a
    developer's machine is harmless. Pure, like ``url_warnings``.
    """
    token = config.metrics_token
    if token is None or len(token) >= MIN_METRICS_TOKEN_LENGTH:
        return []
    return [
        Warning(
            f"REDIS_BROKER['METRICS_TOKEN'] has {len(token)} characters; anyone who guesses "
            "it reads the broker's metrics (stream, group and consumer names).",
            hint=f"Use at least {MIN_METRICS_TOKEN_LENGTH} random characters: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
            id=W_WEAK_METRICS_TOKEN,
        )
    ]


def _check_server(config: conf.BrokerConfig) -> list[CheckMessage]:
    client = build_client(config)
    try:
        policy_reply = client.config_get("maxmemory-policy")
    except CONNECTION_ERRORS as exc:
        return [
            Warning(
                f"Redis at {mask_url(config.url)} did not answer: {exc}.",
                hint="Start Redis or correct REDIS_BROKER['URL'].",
                id=W_UNREACHABLE,
            )
        ]
    except redis.RedisError:
        return []  # managed Redis services often refuse CONFIG; nothing to say then
    finally:
        client.close()
    reply: dict[Any, Any] = dict(policy_reply)
    policy = reply_text(reply.get(b"maxmemory-policy", reply.get("maxmemory-policy")))
    if policy and policy not in SAFE_EVICTION_POLICIES:
        return [
            Warning(
                f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis deletes "
                "keys, and with them streams, consumer groups and pending entries.",
                hint='Set "maxmemory-policy noeviction" (or a volatile-* policy) on this Redis.',
                id=W_EVICTION,
            )
        ]
    return []
