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


def prefixed(prefix: str, name: str) -> str:
    """Return the Redis key or channel for ``name`` under ``KEY_PREFIX``."""
    return f"{prefix}{name}" if prefix else name


def unprefixed(prefix: str, key: str) -> str:
    """Return the user-facing name of a Redis key or channel under ``KEY_PREFIX``."""
    return key[len(prefix) :] if prefix and key.startswith(prefix) else key


def derived_name(name: str, suffix: str) -> str:
    """Return the name of a key derived from stream, channel or list ``name``.

    The one rule every derived key follows (dead letters today; processing lists and
    outputs named by convention next), so that placing derived keys beside their source
    (a Redis Cluster hash slot) is a change here alone.
    """
    return name + suffix


def derived_source(derived: str, suffix: str) -> str | None:
    """Return the name ``derived`` was derived from with ``suffix``, or None when it was not."""
    if derived.endswith(suffix) and len(derived) > len(suffix):
        return derived[: -len(suffix)]
    return None


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
