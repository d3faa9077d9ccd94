"""Scrape-time figures of the broker, read from Redis and the outbox table, for Prometheus.

``metrics_view`` is a plain Django view. Each scrape asks Redis afresh, so any web
process can answer and none keeps state: nothing here counts anything between scrapes
(the worker's own counters are ``metrics.process``'s). The reads are
``read_figures``'s, usable on their own (the admin console refreshes from them):

1. ``SCAN ... TYPE stream`` under ``KEY_PREFIX`` (``inspector.queries.scan_streams``,
   the overview's; on a Redis Cluster each master's, ``inspector.nodes.scan_keys``), at
   most ``MAX_STREAMS`` streams and ``MAX_SCAN_CALLS`` calls in all, plus
   the streams ``MODEL_EVENTS`` declares (consumers are not imported by web processes,
   so their streams are known from Redis alone). Names under ``naming.INTERNAL`` (reply
   inboxes, one per process) are left out; a dead-letter stream is reported as the
   ``dead_letters`` of the stream it belongs to, not as a stream of its own.
2. One pipeline: ``TIME``, and for each stream ``XLEN``, ``XINFO GROUPS`` and the
   ``XLEN`` of its dead-letter stream. On a cluster the pipeline is redis-py's cluster
   pipeline, which sends each master its share (a dead-letter stream shares its
   stream's slot, so its master), and ``TIME`` is asked apart: a cluster pipeline
   refuses keyless commands.
3. One pipeline for the groups: ``XPENDING <stream> <group> - + 1`` (the oldest pending
   entry) when entries are pending, ``XINFO CONSUMERS`` when the group has at most
   ``MAX_CONSUMERS`` consumers, and, when Redis reports no lag (Redis 6.2 has no ``lag``
   field; Redis 7 answers nil once entries after the group's last-delivered id were
   deleted), ``XRANGE <stream> (<last-delivered-id> + COUNT LAG_COUNT_LIMIT``, whose
   length is the lag, exact below the limit and "at least the limit" at it.

So a scrape costs two round trips after the SCAN however many streams there are (on a
cluster: two per master, and ``TIME``). ``bench/metrics.py`` times 200 streams: about
20 ms for the whole view on one Redis, about 35 ms on a three-master cluster
(``--cluster``; redis-py's cluster pipeline works out each command's slot in Python),
against a 100 ms target. Ages are measured against Redis's clock (``TIME``), not the
web server's.

Access: a logged-in staff user with ``redis_broker.view_broker`` (or ``change_broker``;
superusers always), or ``Authorization: Bearer <METRICS_TOKEN>``. Anything else is
answered 401 (no credentials, a wrong or unexpected bearer token) or 403 (logged in
without the permission), never a redirect to a login page, which a scraper cannot
follow. When Redis cannot be reached the view still answers 200, with
``redis_broker_redis_up 0`` and the outbox's figures, so the alert says "Redis is down"
rather than "the scrape failed".
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import wire
from ..conf import get_config
from ..connection import REDIS_ERRORS, get_redis, is_cluster
from ..inspector.queries import scan_streams
from ..naming import INTERNAL, dead_letter_name, dead_letter_source, prefixed, unprefixed
from ..outbox import OutboxBacklog, backlog

logger = logging.getLogger("redis_broker.metrics")

__all__ = [
    "BrokerCollector",
    "ConsumerFigures",
    "GroupFigures",
    "RedisFigures",
    "StreamFigures",
    "metrics_view",
    "read_figures",
]

#: Most streams SCAN may find per scrape (declared ones come on top).
MAX_STREAMS = 500
#: Most SCAN calls per scrape (``COUNT 1000``: about 1,000 keys looked at per call), so a
#: database of millions of other keys does not make every scrape walk all of them.
MAX_SCAN_CALLS = 100
#: Groups with more consumers than this get no per-consumer figures (``XINFO CONSUMERS``
#: has no COUNT; stale consumer names pile up when workers get new names at each start).
MAX_CONSUMERS = 100
#: Most entries counted when Redis does not report a group's lag.
LAG_COUNT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class ConsumerFigures:
    """One consumer of a group: its pending entries and how long since it last acted."""

    name: str
    pending: int
    idle_seconds: float  # since its last read, claim or ack attempt (XINFO CONSUMERS idle)


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """One consumer group: its backlog as Redis reports it."""

    name: str
    pending: int  # delivered, not acknowledged
    lag: int | None  # not yet delivered; None when Redis cannot tell and no count was made
    lag_exact: bool  # False: counted with XRANGE and capped at LAG_COUNT_LIMIT
    entries_read: int | None  # Redis 7+: entries delivered to the group since it was created
    consumers: int
    # Age of the oldest pending entry by its id, i.e. since it was *added* to the stream
    # (not since it was delivered): how long the oldest unfinished event has waited.
    # 0 when nothing is pending.
    oldest_pending_age_seconds: float
    consumer_figures: tuple[ConsumerFigures, ...]  # empty above MAX_CONSUMERS consumers


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """One stream: its length, its dead letters and its groups."""

    name: str  # without KEY_PREFIX
    length: int  # 0 when the stream does not exist (a declared stream nobody wrote yet)
    dead_letters: int  # length of name + DEAD_LETTER_SUFFIX; 0 when there is none
    groups: tuple[GroupFigures, ...]


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """What one scrape read from Redis."""

    streams: tuple[StreamFigures, ...]  # sorted by name
    truncated: bool  # SCAN stopped at MAX_STREAMS streams or MAX_SCAN_CALLS calls
    server_time_ms: int  # Redis's clock when the figures were read


def stream_names(
    keys: Iterable[bytes], *, prefix: str, dead_letter_suffix: str, declared: Iterable[str] = ()
) -> list[str]:
    """Return the streams to report, sorted: ``declared`` plus those behind scanned ``keys``.

    Internal streams (``naming.INTERNAL``) are left out and a dead-letter stream stands
    for the stream it belongs to, whose ``dead_letters`` report it.
    """
    names = set(declared)
    for key in keys:
        name = unprefixed(prefix, wire.reply_text(key, "replace"))
        if name.startswith(INTERNAL):
            continue
        names.add(dead_letter_source(name, dead_letter_suffix) or name)
    return sorted(names)


def read_figures(
    client: redis.Redis,
    *,
    prefix: str,
    dead_letter_suffix: str,
    declared: Sequence[str] = (),
    max_streams: int = MAX_STREAMS,
    max_scan_calls: int = MAX_SCAN_CALLS,
    max_consumers: int = MAX_CONSUMERS,
    lag_count_limit: int = LAG_COUNT_LIMIT,
) -> RedisFigures:
    """Read every stream's figures: a bounded SCAN, then two pipelined round trips.

    ``declared`` names streams to report even when SCAN does not find them (length 0
    when they do not exist). A reply that is an error (a key of another type, a group
    deleted between the two round trips) counts as empty; a lost connection raises.
    """
    keys, truncated = scan_streams(
        client, prefix=prefix, limit=max_streams, max_calls=max_scan_calls
    )
    names = stream_names(
        keys, prefix=prefix, dead_letter_suffix=dead_letter_suffix, declared=declared
    )

    cluster = is_cluster(client)
    pipe = client.pipeline(transaction=False)
    if not cluster:
        pipe.time()
    for name in names:
        key = prefixed(prefix, name)
        pipe.xlen(key)
        pipe.xinfo_groups(key)
        pipe.xlen(prefixed(prefix, dead_letter_name(name, dead_letter_suffix)))
    # A cluster pipeline refuses keyless commands such as TIME: ask one node apart.
    replies: list[Any] = [client.time()] if cluster else []
    replies += pipe.execute(raise_on_error=False)
    seconds, microseconds = replies[0]
    now_ms = int(seconds) * 1000 + int(microseconds) // 1000

    # Second round trip: what needs the group names. ``plans`` remembers, per group, which
    # replies belong to it, in the order they were queued.
    pipe = client.pipeline(transaction=False)
    plans: list[tuple[str, int, int, list[tuple[Mapping[str, Any], tuple[str, ...]]]]] = []
    for index, name in enumerate(names):
        length, groups, dead_letters = replies[1 + 3 * index : 4 + 3 * index]
        key = prefixed(prefix, name)
        planned = []
        for group in groups if isinstance(groups, list) else []:
            steps: list[str] = []
            if _int(group.get("pending")):
                pipe.xpending_range(key, group["name"], min="-", max="+", count=1)
                steps.append("oldest")
            if 0 < _int(group.get("consumers")) <= max_consumers:
                pipe.xinfo_consumers(key, group["name"])
                steps.append("consumers")
            if group.get("lag") is None:
                last = wire.reply_text(group.get("last-delivered-id") or "0-0", "replace")
                pipe.xrange(key, min=f"({last}", max="+", count=lag_count_limit)
                steps.append("lag")
            planned.append((group, tuple(steps)))
        plans.append((name, _int(length), _int(dead_letters), planned))
    more = iter(pipe.execute(raise_on_error=False))

    streams = []
    for name, length, dead_letters, planned in plans:
        groups_figures = [
            _group_figures(group, {step: next(more) for step in steps}, now_ms, lag_count_limit)
            for group, steps in planned
        ]
        streams.append(
            StreamFigures(
                name=name, length=length, dead_letters=dead_letters, groups=tuple(groups_figures)
            )
        )
    return RedisFigures(streams=tuple(streams), truncated=truncated, server_time_ms=now_ms)


def _group_figures(
    group: Mapping[str, Any], extra: Mapping[str, Any], now_ms: int, lag_count_limit: int
) -> GroupFigures:
    """Return one group's figures from its ``XINFO GROUPS`` row and the second round trip."""
    oldest_age = 0.0
    oldest = extra.get("oldest")
    if isinstance(oldest, list) and oldest:
        entry_id = wire.reply_text(oldest[0]["message_id"], "replace")
        oldest_age = max(0.0, (now_ms - wire.entry_id_ms(entry_id)) / 1000)
    lag = _int_or_none(group.get("lag"))
    exact = lag is not None
    counted = extra.get("lag")
    if lag is None and isinstance(counted, list):
        lag = len(counted)
        exact = lag < lag_count_limit
    consumers = extra.get("consumers")
    return GroupFigures(
        name=wire.reply_text(group.get("name"), "replace"),
        pending=_int(group.get("pending")),
        lag=lag,
        lag_exact=exact,
        entries_read=_int_or_none(group.get("entries-read")),
        consumers=_int(group.get("consumers")),
        oldest_pending_age_seconds=oldest_age,
        consumer_figures=tuple(
            ConsumerFigures(
                name=wire.reply_text(c.get("name"), "replace"),
                pending=_int(c.get("pending")),
                idle_seconds=_int(c.get("idle")) / 1000,
            )
            for c in (consumers if isinstance(consumers, list) else [])
        ),
    )


def _int(value: Any) -> int:
    """Return ``value`` as an int; 0 for None or an error reply."""
    number = _int_or_none(value)
    return 0 if number is None else number


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, Exception):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- Prometheus -------------------------------------------------------------------------


class BrokerCollector(Collector):
    """Yield the scrape-time figures as Prometheus metric families, read at ``collect()``.

    Stateless: register it in any ``CollectorRegistry`` (``metrics_view`` uses a fresh
    one per request). Every ``collect()`` reads Redis and the outbox table once.
    """

    def collect(self) -> Iterable[Metric]:
        """Read Redis and the outbox table and return every family (none on the way)."""
        started = time.perf_counter()
        config = get_config()
        try:
            figures: RedisFigures | None = read_figures(
                get_redis(),
                prefix=config.key_prefix,
                dead_letter_suffix=config.consumers.dead_letter_suffix,
                declared=sorted({spec.stream for spec in config.model_events.values()}),
            )
        except REDIS_ERRORS as exc:  # a cluster no node of which answers included
            logger.warning("Metrics scrape could not read Redis: %s", exc)
            figures = None
        try:
            outbox: OutboxBacklog | None = backlog()
        except DatabaseError as exc:
            logger.warning("Metrics scrape could not read the outbox table: %s", exc)
            outbox = None
        families = [*_redis_families(figures), *_outbox_families(outbox)]
        duration = GaugeMetricFamily(
            "redis_broker_scrape_duration_seconds",
            "Time this scrape spent reading Redis and the outbox table.",
            value=time.perf_counter() - started,
        )
        return [*families, duration]


def _redis_families(figures: RedisFigures | None) -> list[Metric]:
    up = GaugeMetricFamily(
        "redis_broker_redis_up",
        "1 when this scrape read its figures from Redis, 0 when Redis could not be reached.",
        value=0 if figures is None else 1,
    )
    if figures is None:
        return [up]
    truncated = GaugeMetricFamily(
        "redis_broker_scrape_truncated",
        f"1 when SCAN stopped early ({MAX_STREAMS} streams or {MAX_SCAN_CALLS} calls) and "
        "some streams are missing from this scrape.",
        value=int(figures.truncated),
    )
    length = GaugeMetricFamily(
        "redis_broker_stream_length", "Entries in the stream (XLEN).", labels=["stream"]
    )
    dead = GaugeMetricFamily(
        "redis_broker_dead_letters",
        "Entries in the stream's dead-letter stream (XLEN of <stream>+DEAD_LETTER_SUFFIX).",
        labels=["stream"],
    )
    group_labels = ["stream", "group"]
    lag = GaugeMetricFamily(
        "redis_broker_group_lag",
        "Entries not yet delivered to the group (XINFO GROUPS lag; where Redis gives none, "
        f"entries after its last-delivered id counted up to {LAG_COUNT_LIMIT}).",
        labels=group_labels,
    )
    pending = GaugeMetricFamily(
        "redis_broker_group_pending",
        "Entries delivered to the group and not acknowledged (XINFO GROUPS pending).",
        labels=group_labels,
    )
    consumers = GaugeMetricFamily(
        "redis_broker_group_consumers",
        "Consumer names the group knows, live or not (XINFO GROUPS consumers).",
        labels=group_labels,
    )
    entries_read = CounterMetricFamily(
        "redis_broker_group_entries_read",
        "Entries delivered to the group since it was created (XINFO GROUPS entries-read, "
        "Redis 7+).",
        labels=group_labels,
    )
    oldest = GaugeMetricFamily(
        "redis_broker_oldest_pending_age_seconds",
        "Age of the group's oldest unacknowledged entry, from its id (when it was added to "
        "the stream) to Redis's TIME; 0 when nothing is pending.",
        labels=group_labels,
    )
    idle = GaugeMetricFamily(
        "redis_broker_consumer_idle_seconds",
        "Seconds since the consumer last read, claimed or acknowledged (XINFO CONSUMERS idle; "
        f"groups with more than {MAX_CONSUMERS} consumers are left out).",
        labels=["stream", "group", "consumer"],
    )
    for stream in figures.streams:
        length.add_metric([stream.name], stream.length)
        dead.add_metric([stream.name], stream.dead_letters)
        for group in stream.groups:
            labels = [stream.name, group.name]
            if group.lag is not None:
                lag.add_metric(labels, group.lag)
            pending.add_metric(labels, group.pending)
            consumers.add_metric(labels, group.consumers)
            if group.entries_read is not None:
                entries_read.add_metric(labels, group.entries_read)
            oldest.add_metric(labels, group.oldest_pending_age_seconds)
            for consumer in group.consumer_figures:
                idle.add_metric([*labels, consumer.name], consumer.idle_seconds)
    return [up, truncated, length, dead, lag, pending, consumers, entries_read, oldest, idle]


def _outbox_families(outbox: OutboxBacklog | None) -> list[Metric]:
    if outbox is None:
        return []
    return [
        GaugeMetricFamily(
            "redis_broker_outbox_rows",
            "Model events waiting in the database outbox for Redis.",
            value=outbox.count,
        ),
        GaugeMetricFamily(
            "redis_broker_outbox_oldest_age_seconds",
            "Age of the oldest outbox row (from its created_at); 0 when the outbox is empty.",
            value=outbox.oldest_age_seconds or 0.0,
        ),
    ]


# --- The view ---------------------------------------------------------------------------

#: Permissions that let a staff session read the figures (the inspector's read permission,
#: or its change permission, which implies reading there too).
PERMISSIONS = ("redis_broker.view_broker", "redis_broker.change_broker")


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Answer a Prometheus scrape with the broker's figures in the text exposition format.

    Staff sessions with ``redis_broker.view_broker`` and bearer tokens equal to
    ``METRICS_TOKEN`` are let in; everyone else gets 401 or 403 (see the module).
    """
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """Return the 401/403 response for a request that may not scrape, or None."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        # A bearer token decides alone: a wrong one is refused even beside a session.
        token = get_config().metrics_token
        if token is not None and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return _unauthorized(
            "The bearer token is not REDIS_BROKER['METRICS_TOKEN']."
            if token is not None
            else "Bearer tokens are off: REDIS_BROKER['METRICS_TOKEN'] is not set.",
            error='error="invalid_token"',
        )
    user = getattr(request, "user", None)  # absent without AuthenticationMiddleware
    if user is None or not user.is_authenticated:
        return _unauthorized("Log in as staff, or send Authorization: Bearer <METRICS_TOKEN>.")
    if user.is_active and (
        user.is_superuser or (user.is_staff and any(user.has_perm(p) for p in PERMISSIONS))
    ):
        return None
    return HttpResponse(
        "Reading the broker's metrics needs a staff account with the "
        "redis_broker.view_broker permission.\n",
        status=403,
        content_type="text/plain; charset=utf-8",
    )


def _unauthorized(message: str, *, error: str = "") -> HttpResponse:
    response = HttpResponse(message + "\n", status=401, content_type="text/plain; charset=utf-8")
    response["WWW-Authenticate"] = 'Bearer realm="redis_broker"' + (f", {error}" if error else "")
    return response
