"""Names of streams and channels: prefixing, validation and wildcard patterns.

Patterns use ``*`` (any run of characters) and ``?`` (one character) and never match
across nothing else: a browser can only ever name a concrete channel, and patterns
come from settings alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

#: A concrete stream or channel name, as accepted from browsers and settings.
CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
#: A pattern in settings: a name that may also hold the wildcards * and ?.
PATTERN_RE = re.compile(r"[A-Za-z0-9_.:\-*?]{1,200}")


#: A stream or list name in code: a channel name that may also hold a hash tag, ``{...}``,
#: to place keys in one Redis Cluster slot (``{shop}orders`` beside ``{shop}invoices``).
KEY_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]*(?:\{[A-Za-z0-9_.:\-]+\})?[A-Za-z0-9_.:\-]*")


def is_valid_key_name(name: object) -> bool:
    """Return True when ``name`` is a stream or list name (a channel name, or one with a
    single hash tag)."""
    return (
        isinstance(name, str) and 0 < len(name) <= 200 and KEY_NAME_RE.fullmatch(name) is not None
    )


def is_valid_channel(name: object) -> bool:
    """Return True when ``name`` is a concrete channel name (no wildcards, no spaces)."""
    return isinstance(name, str) and CHANNEL_NAME_RE.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    parts = [re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns]
    return re.compile("|".join(f"(?:{part})" for part in parts))


def matches_any(patterns: Iterable[str], name: str) -> bool:
    """Return True when ``name`` matches one of the wildcard ``patterns``."""
    compiled = _compile(tuple(patterns))
    return compiled is not None and compiled.fullmatch(name) is not None


def cluster_mode() -> bool:
    """Return True when ``REDIS_BROKER["CLUSTER"]`` is on (names then keep hash slots)."""
    from django.conf import settings

    if not settings.configured:
        return False
    # Read here rather than through conf.get_config(): conf validates names with this
    # module's patterns, so importing it back would make a loop. conf checks the same
    # key is a bool (E003); anything but True is a single Redis, as there.
    raw = getattr(settings, "REDIS_BROKER", None)
    return isinstance(raw, dict) and raw.get("CLUSTER") is True


def hash_tag(key: str) -> str | None:
    """Return what Redis Cluster hashes in ``key`` when it has a hash tag, else None.

    Redis's rule: the text between the first ``{`` and the first ``}`` after it, when
    that text is not empty.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def key_slot(key: str | bytes) -> int:
    """Return the Redis Cluster hash slot of ``key`` (CRC16 of its hash tag or whole)."""
    from redis.crc import key_slot as crc_slot

    return int(crc_slot(key.encode() if isinstance(key, str) else key))


def _leading_tag(name: str) -> bool:
    return name.startswith("{") and hash_tag(name) is not None and name.index("}") > 1


def prefixed(prefix: str, name: str) -> str:
    """Return the Redis key or channel for ``name`` under ``KEY_PREFIX``.

    On a cluster, a name that starts with a hash tag takes the prefix inside the tag
    (``{orders}:dlq`` under ``app:`` is ``{app:orders}:dlq``), so a derived key hashes
    like its source key ``app:orders``.
    """
    if not prefix:
        return name
    if name[:1] == "{" and _leading_tag(name) and cluster_mode():
        return "{" + prefix + name[1:]
    return f"{prefix}{name}"


def unprefixed(prefix: str, key: str) -> str:
    """Return the user-facing name of a Redis key or channel under ``KEY_PREFIX``."""
    if not prefix:
        return key
    if key.startswith("{" + prefix) and _leading_tag(key) and cluster_mode():
        return "{" + key[1 + len(prefix) :]
    return key[len(prefix) :] if key.startswith(prefix) else key


def derived_name(name: str, suffix: str) -> str:
    """Return the name of a key derived from stream, channel or list ``name``.

    The one rule every derived key follows (dead letters, processing lists, a list's
    consumers and deliveries). On a Redis Cluster a derived key must share its source's
    hash slot, because one script or ``MULTI`` touches both: a name without a hash tag
    is wrapped in one (``orders`` → ``{orders}:dlq``), a name with one keeps it
    (``{shop}orders`` → ``{shop}orders:dlq``). A single Redis keeps the plain form,
    so existing deployments rename nothing until they move to a cluster.
    """
    if hash_tag(name) is None and cluster_mode():
        return "{" + name + "}" + suffix
    return name + suffix


def derived_source(derived: str, suffix: str) -> str | None:
    """Return the name ``derived`` was derived from with ``suffix``, or None when it was not.

    On a cluster ``{orders}:dlq`` comes from ``orders`` (a stream literally named
    ``{orders}`` would derive the same name: the README says to avoid that pair).
    """
    if not (derived.endswith(suffix) and len(derived) > len(suffix)):
        return None
    source = derived[: -len(suffix)]
    inner = source[1:-1]
    if (
        source[:1] == "{"
        and source[-1:] == "}"
        and inner
        and "{" not in inner
        and "}" not in inner
        and cluster_mode()
    ):
        return inner
    return source


def dead_letter_name(stream: str, suffix: str) -> str:
    """Return the dead-letter stream of ``stream`` (``CONSUMERS["DEAD_LETTER_SUFFIX"]``)."""
    return derived_name(stream, suffix)


def dead_letter_source(name: str, suffix: str) -> str | None:
    """Return the stream whose dead letters ``name`` holds, or None when it holds none."""
    return derived_source(name, suffix)


#: Suffixes of the keys a list consumer keeps beside its list (see ``consumers/lists.py``).
PROCESSING = ":processing:"
LIST_CONSUMERS = ":consumers"
DELIVERIES = ":deliveries"


def processing_list_name(list_name: str, consumer: str) -> str:
    """Return the list where ``consumer`` keeps the items of ``list_name`` it is handling."""
    return derived_name(list_name, PROCESSING + consumer)


def list_consumers_name(list_name: str) -> str:
    """Return the set of consumer names that may hold processing lists of ``list_name``."""
    return derived_name(list_name, LIST_CONSUMERS)


def deliveries_name(list_name: str) -> str:
    """Return the hash counting deliveries of the items of ``list_name`` being handled."""
    return derived_name(list_name, DELIVERIES)


#: The namespace of keys the app keeps for itself (heartbeats), beside users' streams.
INTERNAL = "redis-broker:"


def inbox_name(process: str) -> str:
    """Return the reply stream (inbox) of one process that sends requests."""
    return f"{INTERNAL}inbox:{process}"


def reply_record_name(correlation_id: str) -> str:
    """Return the short-lived record of the reply sent to one request (redeliveries)."""
    return f"{INTERNAL}reply:{correlation_id}"


def worker_key(prefix: str, consumer_name: str) -> str:
    """Return the key of one worker process's heartbeat (its consumer name's claim)."""
    return f"{prefix}{INTERNAL}worker:{consumer_name}"


def workers_key(prefix: str) -> str:
    """Return the sorted set of worker names scored by their heartbeat's expiry time."""
    return f"{prefix}{INTERNAL}workers"


def relay_key(prefix: str, process: str) -> str:
    """Return the key of one relay process's status (its hub's sockets and counters)."""
    return f"{prefix}{INTERNAL}relay:{process}"


def relays_key(prefix: str) -> str:
    """Return the sorted set of relay processes scored by their status's expiry time."""
    return f"{prefix}{INTERNAL}relays"
