"""Reads that must ask every master of a Redis Cluster, not the node of one key.

A command on a key goes where its slot lives, and redis-py's cluster client (and its
pipeline, which splits the commands per node) routes it there. Three kinds of read
have no key: ``SCAN`` (each master walks only its own keys, with its own cursor),
``INFO`` (each master reports its own memory and clients) and sharded Pub/Sub
(``PUBSUB SHARDCHANNELS`` / ``SHARDNUMSUB`` count only the subscribers of the node
that owns a channel's slot). This module asks each master in turn, and does exactly
what it did before on a single Redis, so the inspector and ``metrics_view`` call it
without asking which one they talk to.

On a cluster a ``KEY_PREFIX`` sits in two places: in front of a plain name
(``app:orders``) and inside the leading hash tag of a derived key or a tagged name
(``{app:orders}:dlq``, see ``naming.prefixed``). ``key_patterns`` gives the globs of
both, and one ``SCAN`` walk per master matches them (SCAN costs the keys it looks at,
not the keys it returns, so one walk with a wider ``MATCH`` filtered here costs what a
walk per pattern would cost once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import redis
import redis.exceptions

from ..connection import is_cluster
from ..naming import cluster_mode

#: Keys looked at per SCAN call (about; Redis's COUNT is a hint).
SCAN_COUNT = 1000


def glob_escape(value: str) -> str:
    """Escape Redis glob characters so ``value`` matches itself in ``MATCH`` / ``PUBSUB``."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", value)


def key_patterns(prefix: str, suffix: str = "") -> list[str]:
    """Return the globs of every key under ``prefix`` whose name ends with ``suffix``.

    One glob on a single Redis (``app:*``); on a cluster with a prefix also the form a
    leading hash tag takes (``{app:*``), since ``naming.prefixed`` moves the prefix
    inside it. ``suffix`` is a literal end (``naming.LIST_CONSUMERS``): a derived key of
    any name under the prefix ends with it in both forms.
    """
    escaped = glob_escape(prefix)
    tail = "*" + glob_escape(suffix)
    if prefix and cluster_mode():
        return [escaped + tail, "{" + escaped + tail]
    return [escaped + tail]


def _glob_regex(patterns: Sequence[str]) -> re.Pattern[bytes]:
    """Return a regex matching what any of ``patterns`` (``key_patterns`` globs: ``*``,
    ``?`` and backslash escapes only) matches."""
    parts = []
    for pattern in patterns:
        out = []
        chars = iter(pattern)
        for char in chars:
            if char == "\\":
                out.append(re.escape(next(chars, "\\")))
            elif char == "*":
                out.append(".*")
            elif char == "?":
                out.append(".")
            else:
                out.append(re.escape(char))
        parts.append("".join(out))
    return re.compile("|".join(f"(?:{p})" for p in parts).encode(), re.DOTALL)


def masters(client: redis.Redis) -> list[Any]:
    """Return the cluster's master nodes, or ``[None]`` (the one server) on a single Redis."""
    if is_cluster(client):
        return list(client.get_primaries())  # type: ignore[attr-defined]
    return [None]


def every_node(client: redis.Redis) -> dict[str, Any]:
    """Return the keyword that sends a keyless command to every node of a cluster (none
    on a single Redis).

    For classic Pub/Sub: a cluster client asks ``PUBSUB CHANNELS`` / ``NUMSUB`` /
    ``NUMPAT`` of one node otherwise, which knows only the subscribers connected to it
    (replicas included); asked of every node, redis-py merges the channels and sums the
    counts.
    """
    return {"target_nodes": client.ALL_NODES} if is_cluster(client) else {}  # type: ignore[attr-defined]


def _on(node: Any) -> dict[str, Any]:
    """Return the keyword that sends a command to ``node`` (none on a single Redis)."""
    return {} if node is None else {"target_nodes": node}


def scan_keys(
    client: redis.Redis,
    *,
    patterns: Sequence[str],
    type_: str,
    limit: int | None = None,
    max_calls: int | None = None,
) -> tuple[list[bytes], bool]:
    """Return up to ``limit`` keys (bytes, sorted) of type ``type_`` matching ``patterns``,
    and whether there may be more.

    ``SCAN MATCH … TYPE … COUNT 1000``, never ``KEYS``. On a cluster each master is
    walked with its own cursor, one call per master in turn, so the bounds hold for the
    whole cluster: ``limit`` keys, ``max_calls`` SCAN calls in all (each master gets
    its share before any gets a second call). It stops at either and says so.
    """
    match = patterns[0] if len(patterns) == 1 else None
    wanted = None if match is not None else _glob_regex(patterns)
    nodes = masters(client)
    cursors: dict[int, int] = dict.fromkeys(range(len(nodes)), 0)
    found: dict[bytes, None] = {}  # SCAN may return a key twice
    calls = 0
    while cursors:
        for index in list(cursors):
            if max_calls is not None and calls >= max_calls:
                return sorted(found), True
            cursor, batch = client.scan(
                cursors[index],
                match=match or "*",
                count=SCAN_COUNT,
                _type=type_,
                **_on(nodes[index]),
            )
            calls += 1
            for reply in batch:
                key = reply if isinstance(reply, bytes) else reply.encode()
                if key in found or (wanted is not None and not wanted.fullmatch(key)):
                    continue
                if limit is not None and len(found) >= limit:
                    return sorted(found), True
                found[key] = None
            # A cluster client answers {node name: cursor}: one node was asked.
            cursor = next(iter(cursor.values())) if isinstance(cursor, dict) else cursor
            if int(cursor) == 0:
                del cursors[index]
            else:
                cursors[index] = int(cursor)
    return sorted(found), False


def server_infos(client: redis.Redis) -> list[dict[str, Any]]:
    """Return the ``INFO`` of each master (of the one server on a single Redis)."""
    if not is_cluster(client):
        return [dict(client.info())]
    cluster: Any = client
    replies: dict[str, Any] = cluster.info(target_nodes=cluster.PRIMARIES)
    return [dict(info) for _, info in sorted(replies.items())]


def shard_channels(client: redis.Redis, patterns: Sequence[str]) -> dict[bytes, int]:
    """Return the sharded Pub/Sub channels matching ``patterns``, with their subscribers.

    A cluster's sharded channels (``SSUBSCRIBE``) live on the master of their slot, so
    each master is asked ``PUBSUB SHARDCHANNELS`` per pattern and ``PUBSUB SHARDNUMSUB``
    for the channels it named. A single Redis has none worth listing apart: nothing of
    ours subscribes with ``SSUBSCRIBE`` there.
    """
    if not is_cluster(client):
        return {}
    run: Any = client.execute_command
    counts: dict[bytes, int] = {}
    for node in masters(client):
        names: dict[bytes, None] = {}
        for pattern in patterns:
            for name in run("PUBSUB SHARDCHANNELS", pattern, target_nodes=node):
                names[name if isinstance(name, bytes) else name.encode()] = None
        if names:
            reply = run("PUBSUB SHARDNUMSUB", *names, target_nodes=node)
            for name, number in reply:
                key = name if isinstance(name, bytes) else name.encode()
                counts[key] = counts.get(key, 0) + int(number)
    return counts


def shard_numsub(client: redis.Redis, channels: Sequence[str]) -> dict[str, int]:
    """Return the sharded subscribers of each of ``channels`` (0 on a single Redis).

    Asked of the master that owns each channel's slot, the only node that counts them.
    """
    if not is_cluster(client) or not channels:
        return {}
    cluster: Any = client
    by_node: dict[str, tuple[Any, list[str]]] = {}
    for channel in channels:
        node = cluster.get_node_from_key(channel)
        by_node.setdefault(node.name, (node, []))[1].append(channel)
    counts: dict[str, int] = {}
    for node, names in by_node.values():
        for name, number in cluster.execute_command(
            "PUBSUB SHARDNUMSUB", *names, target_nodes=node
        ):
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            counts[text] = int(number)
    return counts
