"""Read-only Redis (and outbox) reads for the admin inspector, returned as plain dataclasses.

Nothing here writes. Every read is bounded: streams are found with ``SCAN ... TYPE
stream`` (never ``KEYS``), entries are read a page at a time with ``XREVRANGE`` /
``XRANGE`` and exclusive cursors, pending entries with the extended ``XPENDING`` form.
So a page costs the same on a stream of ten entries and on one of ten million.

On a Redis Cluster the reads without a key (``SCAN``, ``INFO``, ``PUBSUB``) ask every
master (``nodes``); the rest go where their key's slot lives, pipelines included
(redis-py's cluster pipeline splits them per node). Derived keys (dead letters,
processing lists, a list's consumers) share their source's slot (``naming``), so the
one script here (``actions``' processing-list requeue) touches a single slot.

Replies are bytes (the clients use ``decode_responses=False``); they are decoded for
display with ``errors="replace"``, so a foreign producer's binary field shows as
replacement characters instead of breaking the page. Payloads are parsed with the wire
format's reader (``wire.loads``): one that it refuses (too deeply nested, a number too
long, a lone surrogate, not JSON) is shown as its raw text, with the reason. List items
are read with ``wire.decode_element``, as list consumers read them.

Lists consumed by ``@list_consumer`` are found in two places: the live workers'
heartbeats (``read_workers``, which reads the heartbeat index without pruning it, unlike
``heartbeat.live_workers``), and the ``<list>:consumers`` sets a bounded ``SCAN`` finds,
which still name the lists whose workers are all dead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis
from django.db.models import Count
from django.utils import timezone

from .. import wire
from ..connection import is_cluster
from ..consumers.policy import is_missing
from ..consumers.registry import ChannelConsumerSpec
from ..exceptions import ConsumerDefinitionError, MalformedEntry
from ..heartbeat import WorkerInfo
from ..heartbeat import decode_info as decode_worker_info
from ..models import OutboxEvent
from ..naming import (
    LIST_CONSUMERS,
    dead_letter_name,
    dead_letter_source,
    derived_source,
    list_consumers_name,
    prefixed,
    processing_list_name,
    unprefixed,
    worker_key,
    workers_key,
)
from ..outbox import OutboxBacklog, backlog
from .nodes import (
    ScanPage,
    every_node,
    format_cursor,
    format_span,
    glob_escape,
    key_patterns,
    parse_cursor,
    parse_span,
    rescan_page,
    scan_keys,
    scan_page,
    server_infos,
    shard_channels,
    shard_numsub,
)

#: Most streams ``list_streams`` and ``scan_streams`` return (the overview pages instead).
MAX_STREAMS = 500
#: Most Pub/Sub channels listed.
MAX_CHANNELS = 500
#: Most lists shown on the lists page.
MAX_LISTS = 200
#: Most processing lists (consumer names) shown per list.
MAX_PROCESSING_LISTS = 100
#: SCAN calls (``COUNT 1000`` each, so about 1,000 keys per call) spent looking for the
#: ``<list>:consumers`` sets of lists no live worker reports.
MAX_LIST_SCAN_CALLS = 100
#: Payloads longer than this (pretty-printed) are shown truncated, with the rest expandable.
PREVIEW_CHARS = 600
#: Payloads are never rendered beyond this many characters, so one huge entry cannot
#: make a page megabytes long.
MAX_PAYLOAD_CHARS = 100_000


class KeyMissing(LookupError):
    """The stream (or consumer group) is not there: deleted or expired since it was listed.

    ``name`` is the stream's name when the stream itself is missing: the "not found" page
    then asks Redis what the key holds, since a key of another type is reported as such.
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


#: Longest one-line payload preview shown before its ``<details>`` is opened.
LINE_CHARS = 160


def format_duration(ms: int | float | None) -> str:
    """Return a short human duration ("850 ms", "42 s", "3 min", "5 h", "2 d")."""
    if ms is None:
        return "–"
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms // 1000
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"


def format_timestamp(value: datetime | int | float | None) -> str:
    """Return the inspector's one timestamp format, with the time zone: "2026-11-30 09:41:07 UTC".

    ``value`` is an aware (or, with ``USE_TZ = False``, a naive local) datetime or
    milliseconds since the epoch, as entry ids and idle times give. It is shown in the
    current time zone (``TIME_ZONE`` unless activated otherwise). None gives "–".
    """
    if value is None:
        return "–"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value / 1000, tz=UTC)
    elif timezone.is_naive(value):
        value = timezone.make_aware(value)
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def parse_timestamp(text: str) -> datetime | None:
    """Return the aware datetime of an ISO 8601 text (a ``published_at``), or None."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """Return ``text`` with its runs of whitespace collapsed, cut to ``limit`` characters."""
    line = " ".join(text[: limit * 4].split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def now_ms() -> int:
    """Return the current wall-clock time in milliseconds (entry ids use the same clock)."""
    return int(time.time() * 1000)


# --- Server ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The facts an operator checks first about a Redis server."""

    version: str
    mode: str
    role: str
    used_memory_human: str
    maxmemory_human: str
    connected_clients: int
    uptime_seconds: int

    @property
    def uptime_display(self) -> str:
        """Return the uptime as a short human duration."""
        return format_duration(self.uptime_seconds * 1000)


def server_info(client: redis.Redis) -> ServerInfo:
    """Return version, memory, clients and uptime from one ``INFO`` call (one per master
    on a cluster: memory and clients are then the masters' sums, the uptime the
    shortest, and the mode says how many masters there are)."""
    infos = server_infos(client)
    info: Mapping[str, Any] = infos[0]
    if len(infos) > 1 or is_cluster(client):
        return ServerInfo(
            version=wire.reply_text(info.get("redis_version", "?"), "replace"),
            mode=f"cluster, {len(infos)} master{'s' if len(infos) != 1 else ''}",
            role="master",
            used_memory_human=human_bytes(sum(int(i.get("used_memory", 0)) for i in infos)),
            maxmemory_human=(
                human_bytes(sum(int(i.get("maxmemory", 0)) for i in infos))
                if all(int(i.get("maxmemory", 0)) for i in infos)
                else "0B"  # a master without a limit: the cluster has none
            ),
            connected_clients=sum(int(i.get("connected_clients", 0)) for i in infos),
            uptime_seconds=min(int(i.get("uptime_in_seconds", 0)) for i in infos),
        )
    return ServerInfo(
        version=wire.reply_text(info.get("redis_version", "?"), "replace"),
        mode=wire.reply_text(info.get("redis_mode", "standalone"), "replace"),
        role=wire.reply_text(info.get("role", "?"), "replace"),
        used_memory_human=wire.reply_text(info.get("used_memory_human", "?"), "replace"),
        maxmemory_human=wire.reply_text(info.get("maxmemory_human", "0B"), "replace"),
        connected_clients=int(info.get("connected_clients", 0)),
        uptime_seconds=int(info.get("uptime_in_seconds", 0)),
    )


def human_bytes(size: int) -> str:
    """Return ``size`` bytes as Redis's ``*_human`` fields write it ("1.05M", "512B")."""
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{size}B"  # not reached


# --- Streams --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """One stream as listed on the overview."""

    name: str  # without KEY_PREFIX
    length: int
    groups: int
    first_id: str | None
    last_id: str | None
    first_age_ms: int | None
    last_age_ms: int | None
    dead_letters: int  # entries in name + DEAD_LETTER_SUFFIX (0 when it does not exist)
    dead_letter_of: str | None  # for a dead-letter stream: the stream it belongs to
    # Entries ever added (``XINFO STREAM`` ``entries-added``, Redis 7.0+; None before):
    # unlike the length, trimming does not lower it, so its change over time is throughput.
    entries_added: int | None = None

    @property
    def first_age(self) -> str:
        """Return the age of the oldest entry, for display."""
        return format_duration(self.first_age_ms)

    @property
    def first_time(self) -> str:
        """Return when the oldest entry was added (from its id), for display."""
        return format_timestamp(wire.entry_id_ms(self.first_id) if self.first_id else None)

    @property
    def last_time(self) -> str:
        """Return when the newest entry was added (from its id), for display."""
        return format_timestamp(wire.entry_id_ms(self.last_id) if self.last_id else None)

    @property
    def last_age(self) -> str:
        """Return the age of the newest entry, for display."""
        return format_duration(self.last_age_ms)


@dataclass(frozen=True, slots=True)
class StreamListing:
    """The streams under KEY_PREFIX, sorted by name."""

    streams: list[StreamSummary]
    truncated: bool  # SCAN found more than MAX_STREAMS


def scan_streams(
    client: redis.Redis, *, prefix: str, limit: int = MAX_STREAMS, max_calls: int | None = None
) -> tuple[list[bytes], bool]:
    """Return the keys (bytes, sorted) of up to ``limit`` streams under ``prefix``, and
    whether there may be more.

    ``SCAN MATCH <prefix>* TYPE stream COUNT 1000``, never ``KEYS``, on every master of
    a cluster (``nodes.scan_keys``). It stops at ``limit`` streams or after
    ``max_calls`` SCAN calls (about 1,000 keys looked at per call), so its cost has a
    bound even in a database of millions of other keys. The second value is True when
    it stopped early. Keys are bytes so that a name which is not UTF-8 still addresses
    its key. The overview and ``metrics_view`` both find streams here.
    """
    return scan_keys(
        client, patterns=key_patterns(prefix), type_="stream", limit=limit, max_calls=max_calls
    )


def list_streams(
    client: redis.Redis, *, prefix: str, dead_letter_suffix: str, limit: int = MAX_STREAMS
) -> StreamListing:
    """Return up to ``limit`` streams under ``prefix`` with their length, groups and entry
    ages, sorted by name: the whole listing at once, for a keyspace known to be small.

    Keys come from ``scan_streams``. The overview pages instead (``stream_page``).
    """
    keys, truncated = scan_streams(client, prefix=prefix, limit=limit)
    streams = read_summaries(
        client, prefix=prefix, keys=keys, dead_letter_suffix=dead_letter_suffix
    )
    return StreamListing(streams=streams, truncated=truncated)


#: Streams per overview page, unless the page asks for another of ``STREAM_PAGE_SIZES``.
STREAM_PAGE = 100
STREAM_PAGE_SIZES = (50, 100, 200)


@dataclass(frozen=True, slots=True)
class StreamPage:
    """One page of the overview's streams, sorted by name within the page.

    Pages follow Redis's SCAN order, not names: ``next_cursor`` continues the walk
    (None on the last page), ``span`` lets ``stream_page`` read the same stretch again.
    """

    streams: list[StreamSummary]
    next_cursor: str | None
    span: str
    looked_at: int  # about how many keys the page's SCAN calls looked at
    calls: int  # SCAN calls made
    full: bool  # False when the page stopped at its SCAN budget with fewer streams

    @property
    def truncated(self) -> bool:
        """Return True when more streams may follow on later pages."""
        return self.next_cursor is not None


def stream_page(
    client: redis.Redis,
    *,
    prefix: str,
    dead_letter_suffix: str,
    cursor: str | None = None,
    span: str | None = None,
    count: int = STREAM_PAGE,
    contains: str = "",
) -> StreamPage:
    """Return one page of about ``count`` streams under ``prefix`` whose name holds
    ``contains``, from page cursor ``cursor`` (the first page when None).

    ``SCAN MATCH <prefix>*<contains>* TYPE stream`` from the cursor until the page is
    full (``nodes.scan_page``: each call's COUNT sized to what is missing, at most
    ``PAGE_CALLS`` calls), then one pipelined round trip for the streams' ``XINFO
    STREAM`` and their dead-letter streams' ``XLEN``. With ``span`` (a page's, from an
    earlier call) the page's SCAN calls are repeated instead, in one pipelined round
    trip: what the live overview polls. A cursor or span this Redis did not hand out
    raises ``nodes.BadCursor``.

    Sorted pages would need every stream's name before the first page: a SCAN of the
    whole keyspace per render (``bench/admin.py`` times it), where a page reads about
    ``count`` keys whatever the keyspace holds.
    """
    patterns = key_patterns(prefix, contains=contains)
    if span:
        steps = parse_span(client, span)
        keys = rescan_page(client, patterns=patterns, type_="stream", steps=steps)
        page = ScanPage(keys=keys, steps=tuple(steps), next=None)
        full = True
        next_cursor = None
    else:
        start = parse_cursor(client, cursor) if cursor else (0, 0)
        page = scan_page(client, patterns=patterns, type_="stream", want=count, start=start)
        full = len(page.keys) >= count or page.next is None
        next_cursor = format_cursor(client, page.next) if page.next else None
    return StreamPage(
        streams=read_summaries(
            client, prefix=prefix, keys=page.keys, dead_letter_suffix=dead_letter_suffix
        ),
        next_cursor=next_cursor,
        span=format_span(client, page.steps),
        looked_at=page.looked_at,
        calls=len(page.steps),
        full=full,
    )


def read_summaries(
    client: redis.Redis, *, prefix: str, keys: Sequence[bytes], dead_letter_suffix: str
) -> list[StreamSummary]:
    """Return the summaries of the streams ``keys`` (in their order), in one round trip.

    One pipelined ``XINFO STREAM`` per key and ``XLEN`` of its dead-letter stream (0
    when missing or not a stream; none for a dead-letter stream itself), so a stream's
    dead letters are counted whichever page lists them. A key deleted in between is
    skipped.
    """
    names = [unprefixed(prefix, wire.reply_text(key, "replace")) for key in keys]
    pipe = client.pipeline(transaction=False)
    for key, name in zip(keys, names, strict=True):
        pipe.xinfo_stream(key)
        if dead_letter_source(name, dead_letter_suffix) is None:
            pipe.xlen(prefixed(prefix, dead_letter_name(name, dead_letter_suffix)))
    replies = iter(pipe.execute(raise_on_error=False))
    now = now_ms()
    streams = []
    for name in names:
        info = next(replies)
        dlq = next(replies) if dead_letter_source(name, dead_letter_suffix) is None else 0
        if isinstance(info, dict):
            dead_letters = dlq if isinstance(dlq, int) else 0
            streams.append(_summary(name, info, dead_letters, dead_letter_suffix, now=now))
    return streams


def _summary(
    name: str, info: Mapping[str, Any], dead_letters: int, dead_letter_suffix: str, *, now: int
) -> StreamSummary:
    """Return the summary of stream ``name`` from its ``XINFO STREAM`` reply."""
    first_id = _entry_id(info.get("first-entry"))
    last_id = _entry_id(info.get("last-entry"))
    return StreamSummary(
        name=name,
        length=int(info.get("length", 0)),
        groups=int(info.get("groups", 0)),
        first_id=first_id,
        last_id=last_id,
        first_age_ms=now - wire.entry_id_ms(first_id) if first_id else None,
        last_age_ms=now - wire.entry_id_ms(last_id) if last_id else None,
        dead_letters=dead_letters,
        dead_letter_of=dead_letter_source(name, dead_letter_suffix),
        entries_added=_int_or_none(info.get("entries-added")),
    )


def _entry_id(entry: Any) -> str | None:
    if not entry:
        return None
    return wire.reply_text(entry[0], "replace")


def stream_summary(
    client: redis.Redis, *, prefix: str, name: str, dead_letter_suffix: str
) -> StreamSummary:
    """Return one stream's summary; raise ``KeyMissing`` when it is not a stream."""
    dlq_key = prefixed(prefix, dead_letter_name(name, dead_letter_suffix))
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_stream(prefixed(prefix, name))
    pipe.type(dlq_key)
    pipe.xlen(dlq_key)
    info, dlq_type, dlq_length = pipe.execute(raise_on_error=False)
    if not isinstance(info, dict):
        raise KeyMissing(f"There is no stream {name!r}.", name=name)
    dead_letters = int(dlq_length) if dlq_type == b"stream" else 0
    return _summary(name, info, dead_letters, dead_letter_suffix, now=now_ms())


def is_stream(client: redis.Redis, *, prefix: str, name: str) -> bool:
    """Return True when ``name`` (under ``prefix``) currently holds a stream."""
    return key_type(client, prefix=prefix, name=name) == "stream"


def key_type(client: redis.Redis, *, prefix: str, name: str) -> str:
    """Return the type of key ``name`` under ``prefix``: "stream", "list", "none"…"""
    return wire.reply_text(client.type(prefixed(prefix, name)), "replace")


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What a key holds, for the page that reports a key which is not a stream."""

    name: str  # without KEY_PREFIX
    key: str  # with it
    type: str  # "string", "list", "hash", "set", "zset", "stream", or "none"
    size: int | None  # items, fields, members or bytes (per ``size_unit``)
    size_unit: str
    ttl_ms: int | None  # None: no expiry

    @property
    def size_text(self) -> str:
        """Return the size with its unit ("3 items", "1 member"), or "" when unknown."""
        if self.size is None:
            return ""
        unit = self.size_unit[:-1] if self.size == 1 else self.size_unit
        return f"{self.size} {unit}"

    @property
    def ttl(self) -> str:
        """Return the time left before the key expires, for display."""
        return "no expiry" if self.ttl_ms is None else format_duration(self.ttl_ms)


#: What the size of each key type counts (read with its O(1) length command).
_SIZE_UNITS = {
    "string": "bytes",
    "list": "items",
    "hash": "fields",
    "set": "members",
    "zset": "members",
    "stream": "entries",
}


def key_facts(client: redis.Redis, *, prefix: str, name: str) -> KeyFacts:
    """Return the type, size and time to live of key ``name``: two small round trips.

    The size comes from the type's O(1) length command (``LLEN``, ``HLEN``…); a type
    without one (a module's) has no size.
    """
    key = prefixed(prefix, name)
    pipe = client.pipeline(transaction=False)
    pipe.type(key)
    pipe.pttl(key)
    kind_reply, ttl = pipe.execute()
    kind = wire.reply_text(kind_reply, "replace")
    lengths = {
        "string": client.strlen,
        "list": client.llen,
        "hash": client.hlen,
        "set": client.scard,
        "zset": client.zcard,
        "stream": client.xlen,
    }
    size = int(lengths[kind](key)) if kind in lengths else None
    return KeyFacts(
        name=name,
        key=key,
        type=kind,
        size=size,
        size_unit=_SIZE_UNITS.get(kind, ""),
        ttl_ms=ttl if isinstance(ttl, int) and ttl >= 0 else None,
    )


def key_types(client: redis.Redis, *, prefix: str, names: Sequence[str]) -> dict[str, str]:
    """Return the type of each key in ``names`` (one pipelined ``TYPE`` each)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.type(prefixed(prefix, name))
    return {
        name: wire.reply_text(kind, "replace")
        for name, kind in zip(names, pipe.execute(), strict=True)
    }


# --- Entries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry decoded for display; the payload pretty-printed when it is JSON."""

    id: str  # "" for a list item
    age_ms: int | None  # None for a list item whose published_at is not a timestamp
    type: str
    event_id: str
    published_at: str
    payload: str  # indented JSON, or the raw text of a ``data`` field wire.loads refuses
    payload_is_json: bool
    headers: str  # indented JSON, or ""
    extra: list[tuple[str, str]]  # fields outside the wire format, in entry order
    # Dead-letter fields (empty on ordinary entries).
    original_stream: str = ""
    original_id: str = ""
    error: str = ""
    delivery_count: str = ""
    payload_clipped: bool = False  # longer than MAX_PAYLOAD_CHARS; the rest is not shown
    payload_problem: str = ""  # why the payload is shown raw (empty when it is JSON)
    traceback: str = ""  # a dead letter's formatted exception (``wire.TRACEBACK``)
    line: str = ""  # the payload on one line, cut to LINE_CHARS: the collapsed preview
    # Every field as stored (values cut at MAX_FIELD_CHARS), kept only for an entry the
    # wire format cannot read: the dead-letters page shows such an entry as it is.
    raw_fields: list[tuple[str, str]] = field(default_factory=list)

    @property
    def age(self) -> str:
        """Return the entry's age, for display."""
        return format_duration(self.age_ms)

    @property
    def time(self) -> str:
        """Return when the entry was added (its id's milliseconds; a list item's
        ``published_at``), in the inspector's timestamp format."""
        if self.id:
            return format_timestamp(wire.entry_id_ms(self.id))
        return format_timestamp(parse_timestamp(self.published_at))

    @property
    def published(self) -> str:
        """Return ``published_at`` in the inspector's format (as stored when unreadable)."""
        parsed = parse_timestamp(self.published_at)
        return format_timestamp(parsed) if parsed else self.published_at

    @property
    def is_one_line(self) -> bool:
        """Return True when the one-line preview already shows the whole payload."""
        return self.line == self.payload

    @property
    def is_long(self) -> bool:
        """Return True when the payload is long enough to be shown folded."""
        return len(self.payload) > PREVIEW_CHARS

    @property
    def preview(self) -> str:
        """Return the start of the payload, shown while the rest is folded."""
        return self.payload[:PREVIEW_CHARS]


_KNOWN_FIELDS = {
    wire.TYPE,
    wire.DATA,
    wire.EVENT_ID,
    wire.PUBLISHED_AT,
    wire.HEADERS,
    wire.ORIGINAL_STREAM,
    wire.ORIGINAL_ID,
    wire.ERROR,
    wire.DELIVERY_COUNT,
    wire.TRACEBACK,
}
#: Longest field value kept in ``Entry.raw_fields``.
MAX_FIELD_CHARS = 2000


def _pretty(raw: str, what: str) -> tuple[str, str]:
    """Return ``raw`` as indented JSON and ``""``, or unchanged and why it is not shown so.

    Parsed by ``wire.loads``, so no payload can break the page: what it refuses is shown
    as stored.
    """
    try:
        return _indented(wire.loads(raw, what=what), raw, what)
    except MalformedEntry as exc:
        return raw, str(exc)


def _indented(value: Any, raw: str, what: str) -> tuple[str, str]:
    """Return ``value`` as indented JSON and ``""``; ``raw`` and why, if it nests too deeply."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False), ""
    except RecursionError:  # within MAX_DEPTH, but on an already deep stack
        return raw, f"the {what} nests too deeply to indent here"


def decode_for_display(entry_id: str, raw: Mapping[Any, Any], *, now: int) -> Entry:
    """Return an ``Entry`` for one raw ``(id, fields)`` reply, whatever produced it.

    ``entry_id`` is ``""`` for a list item (``decode_item_for_display``): its age is then
    read from its ``published_at``.
    """
    undecodable = ""
    try:
        fields = wire.fields_as_text(raw)
    except MalformedEntry as exc:
        undecodable = str(exc)
        fields = {
            wire.reply_text(k, "replace"): wire.reply_text(v, "replace") for k, v in raw.items()
        }
    if wire.DATA in fields:
        payload, problem = _pretty(fields[wire.DATA], "payload")
    else:
        payload, problem = "", "the entry has no data field"
    problem = undecodable or problem
    clipped = len(payload) > MAX_PAYLOAD_CHARS
    headers = _pretty(fields[wire.HEADERS], "headers")[0] if wire.HEADERS in fields else ""
    return Entry(
        id=entry_id,
        age_ms=now - wire.entry_id_ms(entry_id) if entry_id else _published_age(fields, now),
        type=fields.get(wire.TYPE, ""),
        event_id=fields.get(wire.EVENT_ID, ""),
        published_at=fields.get(wire.PUBLISHED_AT, ""),
        payload=payload[:MAX_PAYLOAD_CHARS],
        payload_is_json=not problem,
        headers=headers,
        extra=[(k, v) for k, v in fields.items() if k not in _KNOWN_FIELDS],
        original_stream=fields.get(wire.ORIGINAL_STREAM, ""),
        original_id=fields.get(wire.ORIGINAL_ID, ""),
        error=fields.get(wire.ERROR, ""),
        delivery_count=fields.get(wire.DELIVERY_COUNT, ""),
        payload_clipped=clipped,
        payload_problem=problem,
        traceback=fields.get(wire.TRACEBACK, ""),
        line=one_line(fields.get(wire.DATA, "")),
        raw_fields=[(k, v[:MAX_FIELD_CHARS]) for k, v in fields.items()] if problem else [],
    )


def _published_age(fields: Mapping[str, str], now: int) -> int | None:
    """Return the milliseconds since ``published_at``, or None when it is no timestamp."""
    try:
        published = datetime.fromisoformat(fields.get(wire.PUBLISHED_AT, ""))
    except ValueError:
        return None
    if published.tzinfo is None:
        return None
    return now - int(published.timestamp() * 1000)


def decode_item_for_display(raw: bytes, *, now: int) -> Entry:
    """Return an ``Entry`` (without id) for one list item, read as list consumers read it.

    ``wire.decode_element`` gives what a handler would get; an item it refuses is shown
    as its text, as its dead letter would hold it.
    """
    try:
        fields = wire.decode_element(raw).fields()
    except (MalformedEntry, TypeError):
        fields = {wire.DATA: wire.reply_text(raw, "replace")}
    return decode_for_display("", fields, now=now)


@dataclass(frozen=True, slots=True)
class EntryPage:
    """One page of entries, newest first, with the cursors of its neighbours."""

    entries: list[Entry]
    older: str | None  # pass as ``before`` for the next (older) page
    newer: str | None  # pass as ``after`` for the previous (newer) page


def read_entries(
    client: redis.Redis,
    *,
    prefix: str,
    name: str,
    count: int = 25,
    before: str | None = None,
    after: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> EntryPage:
    """Return one page of entries, newest first, reading at most ``count + 1`` of them.

    ``before`` / ``after`` are exclusive cursors (ids of the last / first entry of the
    neighbouring page); ``start`` / ``end`` bound the page inclusively (the id filter).
    Raises ``KeyMissing`` when the key holds no stream.
    """
    key = prefixed(prefix, name)
    low = start or "-"
    high = end or "+"
    pipe = client.pipeline(transaction=False)
    pipe.type(key)
    if after is not None:
        # Newer page: read upwards from the cursor, then show it newest first.
        pipe.xrange(key, min=f"({after}", max=high, count=count + 1)
    else:
        pipe.xrevrange(key, max=f"({before}" if before else high, min=low, count=count + 1)
    key_type, rows = pipe.execute()
    if key_type != b"stream":
        raise KeyMissing(f"There is no stream {name!r}.", name=name)
    more = len(rows) > count
    rows = rows[:count]
    if after is not None:
        rows.reverse()
    now = now_ms()
    entries = [
        decode_for_display(wire.reply_text(entry_id, "replace"), fields, now=now)
        for entry_id, fields in rows
    ]
    if after is not None:
        older = entries[-1].id if entries else None
        newer = entries[0].id if more and entries else None
    else:
        older = entries[-1].id if more and entries else None
        newer = entries[0].id if before and entries else None
    return EntryPage(entries=entries, older=older, newer=newer)


def read_entries_by_id(
    client: redis.Redis, *, prefix: str, name: str, ids: Sequence[str]
) -> list[Entry]:
    """Return the entries with these ids that still exist (one ``XRANGE id id`` each)."""
    key = prefixed(prefix, name)
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(key, min=entry_id, max=entry_id, count=1)
    now = now_ms()
    found = []
    for rows in pipe.execute():
        for entry_id, fields in rows:
            found.append(decode_for_display(wire.reply_text(entry_id, "replace"), fields, now=now))
    return found


# --- Groups and consumers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of a group."""

    name: str
    pending: int
    idle_ms: int  # since its last attempted interaction
    inactive_ms: int | None  # since its last successful read (Redis 7.2+), else None

    @property
    def idle(self) -> str:
        """Return the idle time, for display."""
        return format_duration(self.idle_ms)

    @property
    def seen_at(self) -> str:
        """Return when the consumer last tried to read, claim or ack (now minus idle)."""
        return format_timestamp(now_ms() - self.idle_ms)

    @property
    def inactive(self) -> str:
        """Return the inactive time, for display."""
        return format_duration(self.inactive_ms)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One consumer group of a stream, with its consumers."""

    name: str
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    consumers: list[ConsumerInfo] = field(default_factory=list)


def list_groups(client: redis.Redis, *, prefix: str, name: str) -> list[GroupInfo]:
    """Return the stream's groups and their consumers; ``KeyMissing`` if it is gone."""
    key = prefixed(prefix, name)
    try:
        groups = client.xinfo_groups(key)
    except redis.ResponseError as exc:
        if is_missing(exc):
            raise KeyMissing(f"There is no stream {name!r}.", name=name) from exc
        raise
    pipe = client.pipeline(transaction=False)
    for group in groups:
        pipe.xinfo_consumers(key, group["name"])
    replies = pipe.execute(raise_on_error=False)
    result = []
    for group, consumers in zip(groups, replies, strict=True):
        result.append(
            GroupInfo(
                name=wire.reply_text(group["name"], "replace"),
                pending=int(group.get("pending", 0)),
                last_delivered_id=wire.reply_text(group.get("last-delivered-id"), "replace"),
                entries_read=_int_or_none(group.get("entries-read")),
                lag=_int_or_none(group.get("lag")),
                consumers=[
                    ConsumerInfo(
                        name=wire.reply_text(c["name"], "replace"),
                        pending=int(c.get("pending", 0)),
                        idle_ms=int(c.get("idle", 0)),
                        inactive_ms=_int_or_none(c.get("inactive")),
                    )
                    for c in (consumers if isinstance(consumers, list) else [])
                ],
            )
        )
    return result


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class GroupLag:
    """One group's backlog, as the live overview charts it."""

    group: str
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    pending: int  # delivered, not acknowledged


#: Most groups per stream the live overview reports (and charts).
MAX_CHART_GROUPS = 8


def group_lags(
    client: redis.Redis, *, prefix: str, names: Sequence[str]
) -> dict[str, list[GroupLag]]:
    """Return the groups of each stream in ``names`` with lag and pending counts.

    One pipelined ``XINFO GROUPS`` per stream, one round trip for all of them; a stream
    that vanished meanwhile has no groups. At most ``MAX_CHART_GROUPS`` per stream.
    """
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xinfo_groups(prefixed(prefix, name))
    result: dict[str, list[GroupLag]] = {}
    for name, reply in zip(names, pipe.execute(raise_on_error=False), strict=True):
        groups = reply if isinstance(reply, list) else []
        result[name] = [
            GroupLag(
                group=wire.reply_text(g["name"], "replace"),
                lag=_int_or_none(g.get("lag")),
                pending=int(g.get("pending", 0)),
            )
            for g in groups[:MAX_CHART_GROUPS]
        ]
    return result


def get_group(client: redis.Redis, *, prefix: str, name: str, group: str) -> GroupInfo:
    """Return one group of the stream; ``KeyMissing`` when the stream or group is gone."""
    for info in list_groups(client, prefix=prefix, name=name):
        if info.name == group:
            return info
    raise KeyMissing(f"The stream {name!r} has no consumer group {group!r}.")


# --- Pending entries --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry delivered to a consumer and not acknowledged yet."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int
    delivered_ms: int = 0  # when it was last delivered: read time minus idle
    # The entry itself, for its type and payload; None when it was deleted or trimmed
    # away (still pending: only an ack or a claim removes it from the pending list).
    entry: Entry | None = None
    read: bool = False  # whether ``entry`` was looked up (False: not asked for)

    @property
    def idle(self) -> str:
        """Return the time since the last delivery, for display."""
        return format_duration(self.idle_ms)

    @property
    def delivered_at(self) -> str:
        """Return when the entry was last delivered, in the inspector's timestamp format."""
        return format_timestamp(self.delivered_ms)

    @property
    def time(self) -> str:
        """Return when the entry was added (its id), in the inspector's timestamp format."""
        return format_timestamp(wire.entry_id_ms(self.id))


@dataclass(frozen=True, slots=True)
class PendingPage:
    """One page of a group's pending entries, oldest first."""

    entries: list[PendingEntry]
    next_after: str | None  # pass as ``after`` for the next page


def read_pending(
    client: redis.Redis,
    *,
    prefix: str,
    name: str,
    group: str,
    count: int = 50,
    after: str | None = None,
    consumer: str | None = None,
) -> PendingPage:
    """Return one page of pending entries (``XPENDING`` extended form, exclusive cursor)."""
    key = prefixed(prefix, name)
    try:
        rows = client.xpending_range(
            key,
            group,
            min=f"({after}" if after else "-",
            max="+",
            count=count + 1,
            consumername=consumer or None,
        )
    except redis.ResponseError as exc:
        if is_missing(exc):
            raise KeyMissing(f"The stream {name!r} has no consumer group {group!r}.") from exc
        raise
    more = len(rows) > count
    entries = with_entries(client, key, [_pending_entry(row) for row in rows[:count]])
    return PendingPage(entries=entries, next_after=entries[-1].id if more else None)


def with_entries(
    client: redis.Redis, key: str, pending: Sequence[PendingEntry]
) -> list[PendingEntry]:
    """Return ``pending`` with their entries (type, payload) read in one pipelined round trip.

    One ``XRANGE id id COUNT 1`` per pending entry, so the cost follows the page (at most
    100 on the pending page), never the stream.
    """
    pipe = client.pipeline(transaction=False)
    for p in pending:
        pipe.xrange(key, min=p.id, max=p.id, count=1)
    now = now_ms()
    result = []
    for p, rows in zip(pending, pipe.execute(raise_on_error=False), strict=True):
        entry = None
        if isinstance(rows, list) and rows:
            entry = decode_for_display(p.id, rows[0][1], now=now)
        result.append(replace(p, entry=entry, read=True))
    return result


def read_pending_by_id(
    client: redis.Redis, *, prefix: str, name: str, group: str, ids: Sequence[str]
) -> list[PendingEntry]:
    """Return the entries with these ids still pending in ``group`` (one ``XPENDING`` each).

    An id whose reply is an error (the group vanished meanwhile) is left out, like one no
    longer pending.
    """
    key = prefixed(prefix, name)
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
    found: list[PendingEntry] = []
    for rows in pipe.execute(raise_on_error=False):
        if isinstance(rows, list):
            found.extend(_pending_entry(row) for row in rows)
    return with_entries(client, key, found)


def _pending_entry(row: Mapping[str, Any]) -> PendingEntry:
    """Return a ``PendingEntry`` for one row of redis-py's extended ``XPENDING`` reply."""
    idle_ms = int(row["time_since_delivered"])
    return PendingEntry(
        id=wire.reply_text(row["message_id"], "replace"),
        consumer=wire.reply_text(row["consumer"], "replace"),
        idle_ms=idle_ms,
        deliveries=int(row["times_delivered"]),
        delivered_ms=now_ms() - idle_ms,
    )


# --- Workers and lists ------------------------------------------------------------------


def read_workers(client: redis.Redis, *, prefix: str) -> list[WorkerInfo]:
    """Return the live ``runconsumers`` workers, by name, from their heartbeats.

    The sync, read-only twin of ``heartbeat.live_workers``: the names whose claim has not
    expired yet (``ZRANGEBYSCORE`` on the index), then their info, in one pipelined round
    trip. A claim that expired between the two reads is left out.
    """
    return [info for info, _ in _heartbeats(client, prefix=prefix)]


def _heartbeats(
    client: redis.Redis, *, prefix: str, limit: int | None = None
) -> list[tuple[WorkerInfo, float]]:
    """Return each live worker's heartbeat info and when its claim expires, by name.

    Two round trips: the index (names with their expiry as score, at most ``limit``),
    then every info in one pipeline. Read-only: unlike ``heartbeat.live_workers`` it
    never prunes the index, since GET never writes.
    """
    start = None if limit is None else 0
    ranked: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        workers_key(prefix), time.time(), "+inf", start=start, num=limit, withscores=True
    )
    if not ranked:
        return []
    pipe = client.pipeline(transaction=False)
    for name, _ in ranked:
        pipe.hget(worker_key(prefix, wire.reply_text(name, "replace")), "info")
    found = [
        (info, float(expires))
        for (_, expires), raw in zip(ranked, pipe.execute(), strict=True)
        if raw is not None and (info := decode_worker_info(raw)) is not None
    ]
    return sorted(found, key=lambda pair: pair[0].name)


#: Most workers the workers page lists (the heartbeat index is read with this LIMIT).
MAX_WORKERS = 500
#: What a heartbeat says of each consumer that the workers page shows in its own columns;
#: any other key (a newer worker's) is shown as "key: value" beside them.
_SERVED_KEYS = {
    "kind",
    "name",
    "stream",
    "group",
    "list",
    "pattern",
    "subscription",
    "is_pattern",
    "in_flight",
    "oldest_call_s",
}


@dataclass(frozen=True, slots=True)
class ServedConsumer:
    """One consumer a live worker runs, as its heartbeat describes it."""

    kind: str  # "stream", "list", "channel", or what a newer worker says
    name: str  # the handler's name
    source: str  # the stream, the list, or the channel pattern it reads
    group: str  # a stream consumer's group, else ""
    in_flight: int | None  # its handler calls running now, when the heartbeat says
    oldest_call_s: float | None  # the age of its longest-running call, when it says
    extra: list[tuple[str, str]]  # the heartbeat's other keys, for display

    @property
    def oldest_call(self) -> str:
        """Return the age of the longest-running call, for display."""
        return format_duration(None if self.oldest_call_s is None else self.oldest_call_s * 1000)


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A live ``runconsumers`` process, from its last heartbeat, for the workers page."""

    info: WorkerInfo
    beat_age_ms: int  # since its last heartbeat
    expires_in_ms: int  # until its claim expires if it stops beating (3 intervals)
    consumers: list[ServedConsumer]

    @property
    def started(self) -> str:
        """Return when the process started, in the inspector's timestamp format."""
        return format_timestamp(self.info.started_at * 1000)

    @property
    def uptime(self) -> str:
        """Return how long ago the process started, for display."""
        return format_duration(max(0.0, self.info.beat_at - self.info.started_at) * 1000)

    @property
    def beat_age(self) -> str:
        """Return the time since the last heartbeat, for display."""
        return format_duration(self.beat_age_ms)

    @property
    def expires_in(self) -> str:
        """Return the time left before the heartbeat expires, for display."""
        return format_duration(self.expires_in_ms)

    @property
    def oldest_call(self) -> str:
        """Return the age of the process's longest-running handler call, for display."""
        age = self.info.oldest_call_s
        return format_duration(None if age is None else age * 1000)


def _served(consumer: Mapping[str, Any]) -> ServedConsumer:
    """Return a heartbeat's description of one consumer, whatever version wrote it."""
    source = consumer.get("stream") or consumer.get("list") or consumer.get("pattern") or ""
    oldest = consumer.get("oldest_call_s")
    return ServedConsumer(
        kind=str(consumer.get("kind", "")),
        name=str(consumer.get("name", "")),
        source=str(source),
        group=str(consumer.get("group") or ""),
        in_flight=_int_or_none(consumer.get("in_flight")),
        oldest_call_s=float(oldest) if isinstance(oldest, (int, float)) else None,
        extra=[
            _served_extra(str(k), v)
            for k, v in consumer.items()
            if k not in _SERVED_KEYS and v not in (None, "", [], {})
        ],
    )


def _served_extra(key: str, value: Any) -> tuple[str, str]:
    """Return another key of a consumer's heartbeat for display: "progress age", "152 ms".

    A number under a key ending in ``_s`` is a duration in seconds; the rest is shown as
    its JSON text, on one line.
    """
    if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return key[:-2].replace("_", " "), format_duration(value * 1000)
    text = value if isinstance(value, str) else json.dumps(value)
    return key.replace("_", " "), one_line(text, 80)


def read_worker_rows(
    client: redis.Redis, *, prefix: str, limit: int = MAX_WORKERS
) -> list[WorkerRow]:
    """Return the live workers for the workers page: each heartbeat's info and expiry.

    Like ``read_workers`` (read-only, no pruning), with the index's scores: when each
    claim expires. A worker killed with ``kill -9`` drops out of this list once its
    claim expires, three heartbeat intervals after its last beat.
    """
    now = time.time()
    return [
        WorkerRow(
            info=info,
            beat_age_ms=max(0, int((now - info.beat_at) * 1000)),
            expires_in_ms=max(0, int((expires - now) * 1000)),
            consumers=[_served(c) for c in info.consumers if isinstance(c, Mapping)],
        )
        for info, expires in _heartbeats(client, prefix=prefix, limit=limit)
    ]


@dataclass(frozen=True, slots=True)
class ListReader:
    """A live worker's ``@list_consumer`` of a list, as its heartbeat describes it."""

    worker: str
    consumer: str  # the handler's name


@dataclass(frozen=True, slots=True)
class ProcessingList:
    """The items one consumer of a list has taken and not settled yet."""

    consumer: str  # the worker's consumer name (``--consumer-name``)
    length: int
    oldest: Entry | None  # its first item: taken longest ago
    alive: bool  # the worker's heartbeat has not expired
    beat_age_ms: int | None  # since its last heartbeat; None when dead or unreadable

    @property
    def beat_age(self) -> str:
        """Return the time since the worker's last heartbeat, for display."""
        return format_duration(self.beat_age_ms)


@dataclass(frozen=True, slots=True)
class ListSummary:
    """A Redis list consumed by list consumers, with its workers' processing lists."""

    name: str  # without KEY_PREFIX
    length: int
    head: Entry | None  # the oldest item: the next one taken
    dead_letters: int  # entries in name + DEAD_LETTER_SUFFIX (0 when it does not exist)
    readers: list[ListReader]
    processing: list[ProcessingList]  # one per name in <list>:consumers, by name
    more_processing: int  # names in <list>:consumers past MAX_PROCESSING_LISTS

    @property
    def orphaned(self) -> int:
        """Return how many items wait in processing lists of dead workers."""
        return sum(p.length for p in self.processing if not p.alive)


@dataclass(frozen=True, slots=True)
class ListListing:
    """The lists of list consumers under KEY_PREFIX, sorted by name."""

    lists: list[ListSummary]
    truncated: bool  # more than MAX_LISTS were found
    scan_complete: bool  # the SCAN for <list>:consumers sets walked the whole keyspace


def list_lists(
    client: redis.Redis,
    *,
    prefix: str,
    dead_letter_suffix: str,
    limit: int = MAX_LISTS,
    scan_calls: int = MAX_LIST_SCAN_CALLS,
) -> ListListing:
    """Return the lists that list consumers read, with their processing lists.

    A list is found when a live worker's heartbeat names it, or when its
    ``<list>:consumers`` set exists (``SCAN ... TYPE set``, at most ``scan_calls`` calls:
    a list whose workers are all dead is only known from its set). Each list costs a few
    commands in two pipelined round trips, whatever its length.
    """
    workers = read_workers(client, prefix=prefix)
    readers: dict[str, list[ListReader]] = {}
    for worker in workers:
        for consumer in worker.consumers:
            if consumer.get("kind") == "list" and isinstance(consumer.get("list"), str):
                reader = ListReader(worker=worker.name, consumer=str(consumer.get("name", "")))
                readers.setdefault(consumer["list"], []).append(reader)
    found, scan_complete = _lists_with_consumer_sets(client, prefix=prefix, calls=scan_calls)
    names = sorted(set(readers) | found)
    truncated = len(names) > limit
    names = names[:limit]
    pipe = client.pipeline(transaction=False)
    for name in names:
        key = prefixed(prefix, name)
        dlq_key = prefixed(prefix, dead_letter_name(name, dead_letter_suffix))
        pipe.llen(key)
        pipe.lindex(key, 0)
        pipe.smembers(prefixed(prefix, list_consumers_name(name)))
        pipe.type(dlq_key)
        pipe.xlen(dlq_key)
    replies = pipe.execute(raise_on_error=False)
    now = now_ms()
    consumers: dict[str, list[str]] = {}
    summaries: list[tuple[str, int, Entry | None, int]] = []
    for n, name in enumerate(names):
        length, head, members, dlq_type, dlq_length = replies[5 * n : 5 * n + 5]
        is_list = isinstance(length, int)  # an error reply: the key holds no list
        consumers[name] = sorted(
            wire.reply_text(m, "replace")
            for m in (members if isinstance(members, (set, list)) else ())
        )
        summaries.append(
            (
                name,
                length if is_list else 0,
                decode_item_for_display(head, now=now) if is_list and head is not None else None,
                int(dlq_length) if dlq_type == b"stream" else 0,
            )
        )
    processing = _processing_lists(client, prefix=prefix, consumers=consumers, now=now)
    return ListListing(
        lists=[
            ListSummary(
                name=name,
                length=length,
                head=head,
                dead_letters=dead_letters,
                readers=readers.get(name, []),
                processing=processing[name],
                more_processing=max(0, len(consumers[name]) - MAX_PROCESSING_LISTS),
            )
            for name, length, head, dead_letters in summaries
        ],
        truncated=truncated,
        scan_complete=scan_complete,
    )


def _lists_with_consumer_sets(
    client: redis.Redis, *, prefix: str, calls: int
) -> tuple[set[str], bool]:
    """Return the lists whose ``<list>:consumers`` set exists, and whether SCAN finished.

    On a cluster the set of ``jobs`` is ``{jobs}:consumers`` (``{app:jobs}:consumers``
    under ``app:``): ``key_patterns`` matches both forms, and ``derived_source`` names
    the list of each key found.
    """
    keys, truncated = scan_keys(
        client, patterns=key_patterns(prefix, LIST_CONSUMERS), type_="set", max_calls=calls
    )
    found: set[str] = set()
    for key in keys:
        name = derived_source(unprefixed(prefix, wire.reply_text(key, "replace")), LIST_CONSUMERS)
        if name is not None:
            found.add(name)
    return found, not truncated


def _processing_lists(
    client: redis.Redis, *, prefix: str, consumers: Mapping[str, list[str]], now: int
) -> dict[str, list[ProcessingList]]:
    """Return each list's processing lists (length, oldest item, owner's heartbeat)."""
    shown = [
        (name, consumer)
        for name, names in consumers.items()
        for consumer in names[:MAX_PROCESSING_LISTS]
    ]
    pipe = client.pipeline(transaction=False)
    for name, consumer in shown:
        key = prefixed(prefix, processing_list_name(name, consumer))
        pipe.llen(key)
        pipe.lindex(key, 0)
        pipe.hget(worker_key(prefix, consumer), "info")
    replies = pipe.execute(raise_on_error=False)
    result: dict[str, list[ProcessingList]] = {name: [] for name in consumers}
    for n, (name, consumer) in enumerate(shown):
        length, oldest, info = replies[3 * n : 3 * n + 3]
        is_list = isinstance(length, int)
        beat = decode_worker_info(info) if info is not None else None
        result[name].append(
            ProcessingList(
                consumer=consumer,
                length=length if is_list else 0,
                oldest=decode_item_for_display(oldest, now=now)
                if is_list and oldest is not None
                else None,
                alive=info is not None,
                beat_age_ms=now - int(beat.beat_at * 1000) if beat is not None else None,
            )
        )
    return result


def processing_list_length(client: redis.Redis, *, prefix: str, name: str, consumer: str) -> int:
    """Return how many items list ``name``'s processing list of ``consumer`` holds.

    Raises ``KeyMissing`` when ``consumer`` has neither a processing list of the list nor
    its name in the list's consumers.
    """
    pipe = client.pipeline(transaction=False)
    pipe.sismember(prefixed(prefix, list_consumers_name(name)), consumer)
    pipe.llen(prefixed(prefix, processing_list_name(name, consumer)))
    listed, length = pipe.execute(raise_on_error=False)
    if not isinstance(length, int) or not (length or listed == 1):
        raise KeyMissing(f"List {name!r} has no consumer {consumer!r}.")
    return length


def worker_alive(client: redis.Redis, *, prefix: str, consumer: str) -> bool:
    """Return True while the heartbeat of the worker named ``consumer`` has not expired.

    The test live list workers make before returning another worker's items.
    """
    return bool(client.exists(worker_key(prefix, consumer)))


# --- Pub/Sub ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A Pub/Sub channel with at least one subscriber."""

    name: str  # without KEY_PREFIX
    subscribers: int
    # A cluster's sharded channel (SSUBSCRIBE, counted by PUBSUB SHARDNUMSUB on the master
    # of its slot); the same name may also be listed unsharded, with its own subscribers.
    sharded: bool = False


@dataclass(frozen=True, slots=True)
class LayerChannel:
    """A channel of the Channels layer (channels_redis), not one the application uses."""

    name: str  # the whole Redis channel name
    subscribers: int
    group: str | None  # the Channels group it carries, or None for one consumer's channel
    sharded: bool = False  # a cluster's sharded channel (see ``ChannelInfo``)


@dataclass(frozen=True, slots=True)
class PubSubInfo:
    """The active channels under KEY_PREFIX and the server's pattern subscriptions.

    ``channels`` are the application's; ``internal`` the Channels layer's own (its
    groups, such as the relay's ``redis_broker.user.<pk>``, and each consumer's channel).
    """

    channels: list[ChannelInfo]
    patterns: int
    truncated: bool
    internal: list[LayerChannel] = field(default_factory=list)


#: What channels_redis's Pub/Sub layer puts after its ``prefix`` (``"asgi"`` unless
#: ``CHANNEL_LAYERS`` says otherwise): a group's channel, or one consumer's own channel.
LAYER_GROUP = "__group__"
LAYER_SPECIFIC = "specific."


def layer_group(name: str, layer_prefixes: Sequence[str]) -> str | None:
    """Return the Channels group carried by channel ``name`` ("" when it carries none),
    or None when ``name`` is not a Channels layer's channel.

    A layer channel starts with a layer's prefix then ``__group__`` or ``specific.``; a
    name with ``!`` is a core layer's process-specific channel.
    """
    for layer_prefix in layer_prefixes:
        if name.startswith(layer_prefix + LAYER_GROUP):
            return name[len(layer_prefix + LAYER_GROUP) :]
        if name.startswith(layer_prefix + LAYER_SPECIFIC):
            return ""
    return "" if "!" in name else None


def pubsub_info(
    client: redis.Redis,
    *,
    prefix: str,
    limit: int = MAX_CHANNELS,
    layer_prefixes: Sequence[str] = (),
) -> PubSubInfo:
    """Return active channels (``PUBSUB CHANNELS``) with counts (``PUBSUB NUMSUB``).

    Channels under KEY_PREFIX and under the Channels layers' ``layer_prefixes`` are
    read; the layers' own channels are returned apart, in ``internal`` (at most ``limit``
    of each kind). On a cluster the sharded channels of every master are listed too
    (``nodes.shard_channels``), marked ``sharded``: ``broadcast()`` and the relay use
    them there.
    """
    patterns = [glob_escape(pattern) + "*" for pattern in dict.fromkeys([prefix, *layer_prefixes])]
    if is_cluster(client):
        # Every node's subscribers (no pipeline: PUBSUB has no key to route it by).
        replies = [client.pubsub_channels(pattern, **every_node(client)) for pattern in patterns]
    else:
        pipe = client.pipeline(transaction=False)
        for pattern in patterns:
            pipe.pubsub_channels(pattern)
        replies = pipe.execute()
    found = {(wire.reply_text(raw, "replace"), False) for reply in replies for raw in reply}
    sharded = {
        wire.reply_text(raw, "replace"): number
        for raw, number in shard_channels(client, patterns).items()
    }
    found |= {(name, True) for name in sharded}
    ours: list[tuple[str, bool]] = []
    layers: dict[tuple[str, bool], str] = {}
    for name, is_sharded in sorted(found):
        group = layer_group(name, layer_prefixes)
        if group is not None:
            layers[name, is_sharded] = group
        elif name.startswith(prefix):
            ours.append((name, is_sharded))
    truncated = len(ours) > limit or len(layers) > limit
    ours, layer_names = ours[:limit], list(layers)[:limit]
    plain = [name for name, is_sharded in [*ours, *layer_names] if not is_sharded]
    counts: dict[str, int] = {}
    if plain:
        counts = {
            wire.reply_text(channel, "replace"): int(number)
            for channel, number in client.pubsub_numsub(*plain, **every_node(client))
        }

    def subscribers(name: str, is_sharded: bool) -> int:
        return sharded.get(name, 0) if is_sharded else counts.get(name, 0)

    return PubSubInfo(
        channels=[
            ChannelInfo(
                name=unprefixed(prefix, name),
                subscribers=subscribers(name, is_sharded),
                sharded=is_sharded,
            )
            for name, is_sharded in ours
        ],
        patterns=int(client.pubsub_numpat(**every_node(client))),
        truncated=truncated,
        internal=[
            LayerChannel(
                name=name,
                subscribers=subscribers(name, is_sharded),
                group=layers[name, is_sharded] or None,
                sharded=is_sharded,
            )
            for name, is_sharded in layer_names
        ],
    )


@dataclass(frozen=True, slots=True)
class ChannelSubscription:
    """A live worker's ``@channel_consumer``, and what Redis shows of its subscription."""

    worker: str
    consumer: str  # the handler's name
    pattern: str  # as written in @channel_consumer, e.g. "prices.{symbol}"
    subscription: str  # what the worker (P)SUBSCRIBEs, without KEY_PREFIX: "prices.*"
    is_pattern: bool
    subscribers: int  # PUBSUB NUMSUB of a channel; PUBSUB NUMPAT (all patterns) for a pattern
    # On a cluster a worker SSUBSCRIBEs a channel (sharded Pub/Sub): its subscribers are
    # then counted by PUBSUB SHARDNUMSUB on the master of the channel's slot.
    sharded: bool = False

    @property
    def seen(self) -> bool | None:
        """Return whether Redis shows a subscriber; None when it cannot tell (a pattern).

        Redis counts pattern subscriptions only in total (``PUBSUB NUMPAT``): none at all
        means this one is missing, some does not say whose they are.
        """
        if self.is_pattern and self.subscribers:
            return None
        return self.subscribers > 0


def _accepts_anything(message: Any, **parts: Any) -> None:
    """Stand in for a handler: only its pattern is needed (``channel_subscriptions``)."""


def channel_subscriptions(
    client: redis.Redis, *, prefix: str, workers: Sequence[WorkerInfo]
) -> list[ChannelSubscription]:
    """Return the channel consumers of ``workers`` with their ``PUBSUB NUMSUB``/``NUMPAT``.

    What a pattern subscribes to is worked out by ``ChannelConsumerSpec``, as the worker
    did; a heartbeat naming a pattern no spec accepts (another version) is left out.
    """
    found: list[tuple[str, str, ChannelConsumerSpec]] = []
    for worker in workers:
        for consumer in worker.consumers:
            pattern = consumer.get("pattern")
            if consumer.get("kind") != "channel" or not isinstance(pattern, str):
                continue
            name = str(consumer.get("name", ""))
            try:
                spec = ChannelConsumerSpec(
                    func=_accepts_anything, name=name or "?", pattern=pattern
                )
            except ConsumerDefinitionError:
                continue
            found.append((worker.name, name, spec))
    if not found:
        return []
    plain = sorted({prefixed(prefix, s.subscription) for _, _, s in found if not s.is_pattern})
    counts: dict[str, int] = {}
    if plain:
        counts = {
            wire.reply_text(channel, "replace"): int(number)
            for channel, number in client.pubsub_numsub(*plain, **every_node(client))
        }
        # On a cluster a worker may hold a sharded subscription (SSUBSCRIBE) instead.
        for channel, number in shard_numsub(client, plain).items():
            counts[channel] = counts.get(channel, 0) + number
    patterns = int(client.pubsub_numpat(**every_node(client)))
    cluster = is_cluster(client)
    return [
        ChannelSubscription(
            worker=worker,
            consumer=name,
            pattern=spec.pattern,
            subscription=spec.subscription,
            is_pattern=spec.is_pattern,
            subscribers=patterns
            if spec.is_pattern
            else counts.get(prefixed(prefix, spec.subscription), 0),
            sharded=cluster and not spec.is_pattern,
        )
        for worker, name, spec in found
    ]


# --- Outbox -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting in the database outbox."""

    id: int
    stream: str
    type: str
    event_id: str
    created_at: datetime
    attempts: int
    last_error: str
    entry: Entry | None = None  # its fields decoded like a stream entry's (payload, headers)

    @property
    def created(self) -> str:
        """Return when the row was written, in the inspector's timestamp format."""
        return format_timestamp(self.created_at)

    @property
    def wrong_type(self) -> bool:
        """Return True when Redis refused the row because its stream's key holds another type."""
        return "WRONGTYPE" in self.last_error


@dataclass(frozen=True, slots=True)
class OutboxInfo:
    """The outbox backlog, the oldest waiting rows and the count per stream."""

    backlog: OutboxBacklog
    oldest: list[OutboxRow]
    per_stream: list[tuple[str, int]]

    @property
    def oldest_age(self) -> str:
        """Return the age of the oldest waiting event, for display."""
        age = self.backlog.oldest_age_seconds
        return format_duration(None if age is None else age * 1000)


def outbox_info(limit: int = 50) -> OutboxInfo:
    """Return the outbox backlog and its ``limit`` oldest rows (database reads only)."""
    rows = OutboxEvent.objects.order_by("id")[:limit]
    now = now_ms()
    per_stream = (
        OutboxEvent.objects.values_list("stream")
        .annotate(n=Count("id"))
        .order_by("-n", "stream")[:50]
    )
    return OutboxInfo(
        backlog=backlog(),
        oldest=[_outbox_row(row, now) for row in rows],
        per_stream=[(stream, n) for stream, n in per_stream],
    )


def _outbox_row(row: OutboxEvent, now: int) -> OutboxRow:
    """Return an outbox row for display, its fields decoded like a stream entry's."""
    fields = row.fields if isinstance(row.fields, Mapping) else {}
    return OutboxRow(
        id=row.id,
        stream=row.stream,
        type=str(fields.get(wire.TYPE, "")),
        event_id=str(fields.get(wire.EVENT_ID, "")),
        created_at=row.created_at,
        attempts=row.attempts,
        last_error=row.last_error,
        entry=decode_for_display("", {str(k): str(v) for k, v in fields.items()}, now=now),
    )


def outbox_rows_by_id(ids: Sequence[int]) -> list[OutboxRow]:
    """Return the outbox rows with these ids that still wait, oldest first (confirm pages)."""
    now = now_ms()
    rows = OutboxEvent.objects.filter(id__in=list(ids)).order_by("id")
    return [_outbox_row(row, now) for row in rows]
