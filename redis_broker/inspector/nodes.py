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

The overview pages through streams instead of capping them (``scan_page``): the masters
one after the other, each from cursor 0 to its end, a page stopping at about the number
of keys it wants. Its cursor is the master's number and that master's SCAN cursor
(``format_cursor``); its span, the SCAN calls that read it, lets the live console read
the same stretch of the keyspace again in one round trip (``rescan_page``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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


def key_patterns(prefix: str, suffix: str = "", *, contains: str = "") -> list[str]:
    """Return the globs of every key under ``prefix`` whose name ends with ``suffix``
    (and holds ``contains`` somewhere after the prefix).

    One glob on a single Redis (``app:*``); on a cluster with a prefix also the form a
    leading hash tag takes (``{app:*``), since ``naming.prefixed`` moves the prefix
    inside it. ``suffix`` is a literal end (``naming.LIST_CONSUMERS``): a derived key of
    any name under the prefix ends with it in both forms. ``contains`` is literal text
    too (the overview's name filter), so Redis drops the other keys before replying.
    """
    escaped = glob_escape(prefix)
    tail = "*" + (glob_escape(contains) + "*" if contains else "") + glob_escape(suffix)
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
    """Return the cluster's master nodes sorted by address, or ``[None]`` (the one server)
    on a single Redis.

    Sorted, so that every web process numbers them alike: a page cursor names its master
    by that number (``scan_page``).
    """
    if is_cluster(client):
        return sorted(client.get_primaries(), key=lambda node: node.name)  # type: ignore[attr-defined]
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
    match, wanted = _scan_filter(patterns)
    nodes = masters(client)
    cursors: dict[int, int] = dict.fromkeys(range(len(nodes)), 0)
    found: dict[bytes, None] = {}  # SCAN may return a key twice
    calls = 0
    while cursors:
        for index in list(cursors):
            if max_calls is not None and calls >= max_calls:
                return sorted(found), True
            cursor, batch = _scan(client, nodes[index], cursors[index], match, SCAN_COUNT, type_)
            calls += 1
            for reply in batch:
                key = _as_key(reply)
                if key in found or (wanted is not None and not wanted.fullmatch(key)):
                    continue
                if limit is not None and len(found) >= limit:
                    return sorted(found), True
                found[key] = None
            if cursor == 0:
                del cursors[index]
            else:
                cursors[index] = cursor
    return sorted(found), False


# --- Paged walks ----------------------------------------------------------------------------

#: Most SCAN calls one page makes (at most ``SCAN_COUNT`` keys looked at each): in a
#: keyspace of few matches a page stops there, short, and its "next" link continues.
PAGE_CALLS = 50
#: Fewest keys one SCAN call of a page asks for.
MIN_PAGE_COUNT = 10
#: The share of the estimated COUNT a page's next call asks for, and how many times
#: the last call's COUNT it may ask for at most (``_next_count``).
_AIM = 0.8
_GROWTH = 3
_CURSOR = re.compile(r"(\d{1,4})-(\d{1,20})(?:-([0-9a-f]{8}))?")
_STEP = re.compile(r"(\d{1,4})-(\d{1,20})-(\d{1,5})")


class BadCursor(ValueError):
    """A page cursor this Redis did not hand out: malformed, or made when the cluster had
    other masters. The message says which, for the page to show."""


@dataclass(frozen=True, slots=True)
class ScanStep:
    """One SCAN call of a page: which master (its number in ``masters``), the cursor it
    started from and the COUNT it asked for."""

    node: int
    cursor: int
    count: int


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a SCAN walk over every master, and where the walk goes on."""

    keys: list[bytes]  # sorted, each once
    steps: tuple[ScanStep, ...]  # the calls that found them: ``rescan_page`` repeats them
    next: tuple[int, int] | None  # (master, cursor) of the next page; None: the walk ended

    @property
    def looked_at(self) -> int:
        """Return about how many keys the page's SCAN calls looked at (their COUNTs)."""
        return sum(step.count for step in self.steps)


def _scan_filter(patterns: Sequence[str]) -> tuple[str, re.Pattern[bytes] | None]:
    """Return the ``MATCH`` glob for ``patterns`` and the regex that must then filter the
    replies (None when the one glob says it all)."""
    if len(patterns) == 1:
        return patterns[0], None
    return "*", _glob_regex(patterns)


def _as_key(reply: bytes | str) -> bytes:
    return reply if isinstance(reply, bytes) else reply.encode()


def _next_count(missing: int, found: int, asked: int, last: int) -> int:
    """Return the COUNT of a page's next SCAN call: the keys still ``missing`` divided by
    the share of keys looked at so far that matched (``found`` of ``asked``), at most
    ``_GROWTH`` times the ``last`` call's COUNT.

    Where every key matches, a page of 100 asks for about 100 keys and ends close to 100
    streams, not at the end of a 1,000-key batch; where few match, the COUNT grows to
    ``SCAN_COUNT``. A page holds what its calls returned, so it can end a few keys past
    ``missing`` (SCAN returns whole hash buckets); the calls cannot be resumed halfway.
    So the estimate aims a little short (``_AIM``) and grows step by step: a share
    measured on one small call is rough (11 streams where 20 were likely), and aiming
    high overshoots the page where aiming low costs one more small call. Measured with
    50,000 streams among 200,000 other keys (as in ``bench/admin.py``), walking pages of
    100: up to 222 streams a page without the growth cap, 118 with it, 4.4 calls a page.
    """
    if asked == 0:
        return max(MIN_PAGE_COUNT, min(SCAN_COUNT, missing))
    estimate = SCAN_COUNT if found == 0 else int(missing * asked / found * _AIM) + 1
    return max(MIN_PAGE_COUNT, min(SCAN_COUNT, _GROWTH * last, estimate))


def scan_page(
    client: redis.Redis,
    *,
    patterns: Sequence[str],
    type_: str,
    want: int,
    start: tuple[int, int] = (0, 0),
    max_calls: int = PAGE_CALLS,
) -> ScanPage:
    """Return about ``want`` keys of type ``type_`` matching ``patterns``, read with SCAN
    from ``start`` (a master's number in ``masters`` and its cursor), and where to go on.

    The masters of a cluster are walked one after the other, each to its end. A page
    stops once it has ``want`` keys, after ``max_calls`` calls, or at the end of the
    last master. Walking pages from ``(0, 0)`` gives what one SCAN walk gives: a key
    present throughout shows on some page, maybe twice if Redis resized its table
    meanwhile; one added or deleted meanwhile may show or not.
    """
    match, wanted = _scan_filter(patterns)
    nodes = masters(client)
    node, cursor = start
    found: dict[bytes, None] = {}  # SCAN may return a key twice
    steps: list[ScanStep] = []
    # The share of matches, from the calls that did not end a master's walk: one that
    # did may have found few because few keys were left, not because few matched.
    asked = hits = 0
    while node < len(nodes) and len(found) < want and len(steps) < max_calls:
        count = _next_count(want - len(found), hits, asked, steps[-1].count if steps else 0)
        steps.append(ScanStep(node, cursor, count))
        before = len(found)
        cursor, batch = _scan(client, nodes[node], cursor, match, count, type_)
        for reply in batch:
            key = _as_key(reply)
            if wanted is None or wanted.fullmatch(key):
                found[key] = None
        if cursor == 0:
            node, cursor = node + 1, 0
        else:
            asked, hits = asked + count, hits + len(found) - before
    more = (node, cursor) if node < len(nodes) else None
    return ScanPage(keys=sorted(found), steps=tuple(steps), next=more)


def rescan_page(
    client: redis.Redis, *, patterns: Sequence[str], type_: str, steps: Sequence[ScanStep]
) -> list[bytes]:
    """Return the keys that the SCAN calls ``steps`` (a page's) find now, sorted, each once.

    The calls do not depend on each other, so they go in one pipelined round trip per
    master: the live overview refreshes a page at the cost of one round trip. While no
    key is added or deleted they find exactly the page's keys; otherwise a call may stop
    a few buckets short of where it stopped before, or run a few past.
    """
    match, wanted = _scan_filter(patterns)
    nodes = masters(client)
    found: dict[bytes, None] = {}
    for index, node in enumerate(nodes):
        mine = [step for step in steps if step.node == index]
        if not mine:
            continue
        target: Any = client if node is None else client.get_redis_connection(node)  # type: ignore[attr-defined]
        pipe = target.pipeline(transaction=False)
        for step in mine:
            pipe.scan(step.cursor, match=match, count=step.count, _type=type_)
        for _, batch in pipe.execute():
            for reply in batch:
                key = _as_key(reply)
                if wanted is None or wanted.fullmatch(key):
                    found[key] = None
    return sorted(found)


def _scan(
    client: redis.Redis, node: Any, cursor: int, match: str, count: int, type_: str
) -> tuple[int, list[Any]]:
    """Run one SCAN on ``node`` (the one server when None); return the next cursor and keys."""
    reply_cursor, batch = client.scan(cursor, match=match, count=count, _type=type_, **_on(node))
    # A cluster client answers {node name: cursor}: one node was asked.
    if isinstance(reply_cursor, dict):
        reply_cursor = next(iter(reply_cursor.values()))
    return int(reply_cursor), list(batch)


def topology(client: redis.Redis) -> str:
    """Return a fingerprint of the cluster's masters (8 hex digits), "" on a single Redis.

    A cursor carries it: after a failover, or a master added or removed, master 1 may be
    another server, whose cursor positions mean nothing for the first one's.
    """
    nodes = masters(client)
    if nodes == [None]:
        return ""
    names = ",".join(str(node.name) for node in nodes)
    return f"{zlib.crc32(names.encode()):08x}"


def format_cursor(client: redis.Redis, position: tuple[int, int]) -> str:
    """Return the opaque text of a page cursor: ``<master>-<cursor>``, then the cluster's
    ``topology`` on a cluster (``1-5632-9b1e04c2``)."""
    node, cursor = position
    fingerprint = topology(client)
    return f"{node}-{cursor}" + (f"-{fingerprint}" if fingerprint else "")


def parse_cursor(client: redis.Redis, text: str) -> tuple[int, int]:
    """Return the (master, cursor) of a cursor ``format_cursor`` wrote; raise ``BadCursor``
    for any other text, and for one written when the cluster had other masters."""
    found = _CURSOR.fullmatch(text)
    if found is None:
        raise BadCursor("The page cursor is not one this page wrote.")
    node, cursor = int(found[1]), int(found[2])
    _check_topology(client, found[3] or "")
    _check_position(client, node, cursor)
    return node, cursor


def format_span(client: redis.Redis, steps: Sequence[ScanStep]) -> str:
    """Return the opaque text of a page's SCAN calls (``rescan_page`` repeats them):
    ``<master>-<cursor>-<count>`` each, joined by ``_``, the ``topology`` last on a cluster."""
    parts = [f"{step.node}-{step.cursor}-{step.count}" for step in steps]
    fingerprint = topology(client)
    return "_".join([*parts, fingerprint] if fingerprint else parts)


def parse_span(client: redis.Redis, text: str) -> list[ScanStep]:
    """Return the SCAN calls of a span ``format_span`` wrote; raise ``BadCursor`` for any
    other text: more calls than a page makes, or a COUNT above ``SCAN_COUNT``, which
    would make Redis look at more keys in one call than the inspector ever asks."""
    parts = text.split("_")
    fingerprint = parts.pop() if parts and _STEP.fullmatch(parts[-1]) is None else ""
    if not parts or len(parts) > PAGE_CALLS:
        raise BadCursor("The page's span is not one this page wrote.")
    steps = []
    for part in parts:
        found = _STEP.fullmatch(part)
        if found is None or not 0 < int(found[3]) <= SCAN_COUNT:
            raise BadCursor("The page's span is not one this page wrote.")
        steps.append(ScanStep(int(found[1]), int(found[2]), int(found[3])))
    _check_topology(client, fingerprint)
    for step in steps:
        _check_position(client, step.node, step.cursor)
    return steps


def _check_topology(client: redis.Redis, fingerprint: str) -> None:
    current = topology(client)
    if fingerprint == current:
        return
    if not current or not fingerprint:  # a single Redis's cursor on a cluster, or the reverse
        raise BadCursor("The page cursor is not one this page wrote.")
    raise BadCursor(
        "The cluster's masters changed since this page was linked (a failover, or a "
        "master added or removed), so its cursor no longer points anywhere."
    )


def _check_position(client: redis.Redis, node: int, cursor: int) -> None:
    if node >= len(masters(client)) or cursor >= 2**64:
        raise BadCursor("The page cursor is not one this page wrote.")


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
