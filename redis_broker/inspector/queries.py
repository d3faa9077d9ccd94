"""Read-only Redis (and outbox) reads for the admin inspector, returned as plain dataclasses.

Nothing here writes. Every read is bounded: streams are found with ``SCAN ... TYPE
stream`` (never ``KEYS``), entries are read a page at a time with ``XREVRANGE`` /
``XRANGE`` and exclusive cursors, pending entries with the extended ``XPENDING`` form.
So a page costs the same on a stream of ten entries and on one of ten million.

Replies are bytes (the clients use ``decode_responses=False``); they are decoded for
display with ``errors="replace"``, so a foreign producer's binary field shows as
replacement characters instead of breaking the page. Payloads are parsed with the wire
format's reader (``wire.loads``): one that it refuses (too deeply nested, a number too
long, a lone surrogate, not JSON) is shown as its raw text, with the reason.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from django.db.models import Count

from .. import wire
from ..consumers.policy import is_missing
from ..exceptions import MalformedEntry
from ..models import OutboxEvent
from ..naming import dead_letter_name, dead_letter_source, prefixed, unprefixed
from ..outbox import OutboxBacklog, backlog

#: Most streams listed on the overview; SCAN stops once it has found this many.
MAX_STREAMS = 500
#: Most Pub/Sub channels listed.
MAX_CHANNELS = 500
#: Payloads longer than this (pretty-printed) are shown truncated, with the rest expandable.
PREVIEW_CHARS = 600
#: Payloads are never rendered beyond this many characters, so one huge entry cannot
#: make a page megabytes long.
MAX_PAYLOAD_CHARS = 100_000


class KeyMissing(LookupError):
    """The stream (or consumer group) is not there: deleted or expired since it was listed."""


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


def now_ms() -> int:
    """Return the current wall-clock time in milliseconds (entry ids use the same clock)."""
    return int(time.time() * 1000)


def glob_escape(value: str) -> str:
    """Escape Redis glob characters so ``value`` matches itself in ``MATCH`` / ``PUBSUB``."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", value)


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
    """Return version, memory, clients and uptime from one ``INFO`` call."""
    info: Mapping[str, Any] = client.info()
    return ServerInfo(
        version=wire.reply_text(info.get("redis_version", "?"), "replace"),
        mode=wire.reply_text(info.get("redis_mode", "standalone"), "replace"),
        role=wire.reply_text(info.get("role", "?"), "replace"),
        used_memory_human=wire.reply_text(info.get("used_memory_human", "?"), "replace"),
        maxmemory_human=wire.reply_text(info.get("maxmemory_human", "0B"), "replace"),
        connected_clients=int(info.get("connected_clients", 0)),
        uptime_seconds=int(info.get("uptime_in_seconds", 0)),
    )


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

    @property
    def first_age(self) -> str:
        """Return the age of the oldest entry, for display."""
        return format_duration(self.first_age_ms)

    @property
    def last_age(self) -> str:
        """Return the age of the newest entry, for display."""
        return format_duration(self.last_age_ms)


@dataclass(frozen=True, slots=True)
class StreamListing:
    """The streams under KEY_PREFIX, sorted by name."""

    streams: list[StreamSummary]
    truncated: bool  # SCAN found more than MAX_STREAMS


def list_streams(
    client: redis.Redis, *, prefix: str, dead_letter_suffix: str, limit: int = MAX_STREAMS
) -> StreamListing:
    """Return the streams under ``prefix`` with their length, groups and entry ages.

    Keys come from ``SCAN MATCH <prefix>* TYPE stream``; their ``XINFO STREAM`` replies
    are fetched in one pipelined round trip. A key deleted in between is skipped.
    """
    keys: list[bytes] = []
    truncated = False
    for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000, _type="stream"):
        if len(keys) >= limit:
            truncated = True
            break
        keys.append(key)
    keys.sort()
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xinfo_stream(key)
    replies = pipe.execute(raise_on_error=False)
    infos: dict[str, dict[str, Any]] = {}
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, dict):
            infos[unprefixed(prefix, wire.reply_text(key, "replace"))] = reply
    now = now_ms()
    streams = []
    for name, info in infos.items():
        dlq = infos.get(dead_letter_name(name, dead_letter_suffix))
        dead_letters = int(dlq.get("length", 0)) if dlq else 0
        streams.append(_summary(name, info, dead_letters, dead_letter_suffix, now=now))
    return StreamListing(streams=streams, truncated=truncated)


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
        raise KeyMissing(f"There is no stream {name!r}.")
    dead_letters = int(dlq_length) if dlq_type == b"stream" else 0
    return _summary(name, info, dead_letters, dead_letter_suffix, now=now_ms())


def is_stream(client: redis.Redis, *, prefix: str, name: str) -> bool:
    """Return True when ``name`` (under ``prefix``) currently holds a stream."""
    return bool(client.type(prefixed(prefix, name)) == b"stream")


# --- Entries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry decoded for display; the payload pretty-printed when it is JSON."""

    id: str
    age_ms: int
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

    @property
    def age(self) -> str:
        """Return the entry's age, for display."""
        return format_duration(self.age_ms)

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
}


def _pretty(raw: str, what: str) -> tuple[str, str]:
    """Return ``raw`` as indented JSON and ``""``, or unchanged and why it is not shown so.

    Parsed by ``wire.loads``, so no payload can break the page: what it refuses is shown
    as stored.
    """
    try:
        value = wire.loads(raw, what=what)
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False), ""
    except MalformedEntry as exc:
        return raw, str(exc)
    except RecursionError:  # within MAX_DEPTH, but on an already deep stack
        return raw, f"the {what} nests too deeply to indent here"


def decode_for_display(entry_id: str, raw: Mapping[Any, Any], *, now: int) -> Entry:
    """Return an ``Entry`` for one raw ``(id, fields)`` reply, whatever produced it."""
    try:
        fields = wire.fields_as_text(raw)
    except MalformedEntry:
        fields = {
            wire.reply_text(k, "replace"): wire.reply_text(v, "replace") for k, v in raw.items()
        }
    payload, problem = _pretty(fields.get(wire.DATA, ""), "payload")
    clipped = len(payload) > MAX_PAYLOAD_CHARS
    headers = _pretty(fields[wire.HEADERS], "headers")[0] if wire.HEADERS in fields else ""
    return Entry(
        id=entry_id,
        age_ms=now - wire.entry_id_ms(entry_id),
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
    )


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
        raise KeyMissing(f"There is no stream {name!r}.")
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
            raise KeyMissing(f"There is no stream {name!r}.") from exc
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

    @property
    def idle(self) -> str:
        """Return the time since the last delivery, for display."""
        return format_duration(self.idle_ms)


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
    entries = [_pending_entry(row) for row in rows[:count]]
    return PendingPage(entries=entries, next_after=entries[-1].id if more else None)


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
    return found


def _pending_entry(row: Mapping[str, Any]) -> PendingEntry:
    """Return a ``PendingEntry`` for one row of redis-py's extended ``XPENDING`` reply."""
    return PendingEntry(
        id=wire.reply_text(row["message_id"], "replace"),
        consumer=wire.reply_text(row["consumer"], "replace"),
        idle_ms=int(row["time_since_delivered"]),
        deliveries=int(row["times_delivered"]),
    )


# --- Pub/Sub ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A Pub/Sub channel with at least one subscriber."""

    name: str  # without KEY_PREFIX
    subscribers: int


@dataclass(frozen=True, slots=True)
class PubSubInfo:
    """The active channels under KEY_PREFIX and the server's pattern subscriptions."""

    channels: list[ChannelInfo]
    patterns: int
    truncated: bool


def pubsub_info(client: redis.Redis, *, prefix: str, limit: int = MAX_CHANNELS) -> PubSubInfo:
    """Return active channels (``PUBSUB CHANNELS``) with counts (``PUBSUB NUMSUB``)."""
    names = sorted(client.pubsub_channels(glob_escape(prefix) + "*"))
    truncated = len(names) > limit
    names = names[:limit]
    counts: list[tuple[Any, Any]] = client.pubsub_numsub(*names) if names else []
    return PubSubInfo(
        channels=[
            ChannelInfo(
                name=unprefixed(prefix, wire.reply_text(channel, "replace")),
                subscribers=int(number),
            )
            for channel, number in counts
        ],
        patterns=int(client.pubsub_numpat()),
        truncated=truncated,
    )


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
    per_stream = (
        OutboxEvent.objects.values_list("stream")
        .annotate(n=Count("id"))
        .order_by("-n", "stream")[:50]
    )
    return OutboxInfo(
        backlog=backlog(),
        oldest=[
            OutboxRow(
                id=row.id,
                stream=row.stream,
                type=str((row.fields or {}).get(wire.TYPE, "")),
                event_id=str((row.fields or {}).get(wire.EVENT_ID, "")),
                created_at=row.created_at,
                attempts=row.attempts,
                last_error=row.last_error,
            )
            for row in rows
        ],
        per_stream=[(stream, n) for stream, n in per_stream],
    )
