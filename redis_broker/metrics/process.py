"""In-process instruments: what this process consumed, published and requested.

Every metric and label name of the worker's ``/metrics`` is written here and nowhere
else (the README's "Worker metrics" table lists them). The instruments live in
``prometheus_client``'s default registry, so any exposition of it shows them:
``runconsumers --metrics-port`` serves it, and so does a project's own
``prometheus_client.make_wsgi_app()`` in a web process (whose ``publish()`` and
``request()`` calls are counted too).

Cost: a consumer binds its labelled children once (:class:`ConsumerInstruments`), and
nothing on the per-entry path takes a lock. Counters are incremented once per batch;
the in-flight and oldest-call gauges are read at scrape time; handler durations are
appended to a list by the lanes and counted into buckets once per batch on the loop
(:class:`Durations`), then exposed by a collector as a ``prometheus_client``
``HistogramMetricFamily``. ``Histogram.observe`` per call (two locks) cost 1.5 us an
entry async and 2.7 us sync, 13-20 % of ``bench/consume.py``'s throughput; this way
costs a few percent (``bench/consume.py --metrics-cost`` prints both).
Publishing counts by kind only: a label per stream name would make one time series per
destination, unbounded for names built from ids (``user.42``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# --- names (the README's table) ------------------------------------------------------

CONSUMED = "redis_broker_consumed"  # exposed as redis_broker_consumed_total
PROCESS_DURATION = "redis_broker_process_duration_seconds"
IN_FLIGHT = "redis_broker_in_flight"
OLDEST_CALL = "redis_broker_oldest_call_seconds"
PUBLISHED = "redis_broker_published"  # exposed as redis_broker_published_total
REQUESTS = "redis_broker_requests"  # exposed as redis_broker_requests_total

#: Labels of the consumer metrics. ``stream`` is the stream, the list, or the channel
#: consumer's pattern as written in its decorator (no KEY_PREFIX); ``group`` is the
#: stream group, "" for lists and channels.
CONSUMER_LABELS = ("stream", "group")

#: ``outcome`` values of ``redis_broker_consumed_total``.
ACKED = "acked"  # the handler returned; the entry is (or is about to be) acked
RETRIED = "retried"  # the handler raised; delivered again after the back-off
DEAD_LETTERED = "dead_lettered"  # Reject, MAX_DELIVERIES reached, malformed, never settled
SKIPPED_EXPIRED = "skipped_expired"  # a request whose caller had given up: acked, not called
DROPPED = "dropped"  # a channel message whose handler raised (at most once), or malformed
OUTCOMES = (ACKED, RETRIED, DEAD_LETTERED, SKIPPED_EXPIRED, DROPPED)

#: ``kind`` values of ``redis_broker_published_total``.
PUBLISH_KINDS = ("stream", "channel", "list")

#: ``outcome`` values of ``redis_broker_requests_total``.
REPLIED = "replied"
REMOTE_ERROR = "remote_error"
TIMEOUT = "timeout"
NO_RESPONDERS = "no_responders"
REQUEST_OUTCOMES = (REPLIED, REMOTE_ERROR, TIMEOUT, NO_RESPONDERS)

#: Handler durations from 0.5 ms (a trivial handler) to a minute (SLOW_CALL_WARNING).
DURATION_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf")),
)

#: The buckets' ``le`` labels, as prometheus_client writes them ("+Inf" last).
BUCKET_NAMES: tuple[str, ...] = tuple(
    floatToGoString(bound)  # type: ignore[no-untyped-call]
    for bound in DURATION_BUCKETS
)

# --- the instruments (registered once, at import) ----------------------------------------

consumed = Counter(
    CONSUMED,
    "Entries, list items and channel messages settled by this process, by outcome.",
    [*CONSUMER_LABELS, "outcome"],
)
PROCESS_DURATION_HELP = "Duration of handler calls (returned or raised), in seconds."
in_flight = Gauge(
    IN_FLIGHT,
    "Entries handed to the handler's lanes (queued or running) without an outcome yet.",
    CONSUMER_LABELS,
)
oldest_call = Gauge(
    OLDEST_CALL,
    "Age of the longest-running handler call, in seconds (0 when none runs).",
    CONSUMER_LABELS,
)
published = Counter(
    PUBLISHED,
    "Entries, messages and list items published by this process (publish, broadcast, push).",
    ["kind"],
)
requests = Counter(
    REQUESTS,
    "request() and arequest() calls of this process, by outcome.",
    ["outcome"],
)

# Children made at import, so every series shows (at 0) from the first scrape on.
_published = {kind: published.labels(kind) for kind in PUBLISH_KINDS}
_requests = {outcome: requests.labels(outcome) for outcome in REQUEST_OUTCOMES}


class Durations:
    """One consumer's handler-duration histogram: bucket counts and their sum.

    Written only on the event loop (``observe_many``, once per batch), read by the
    collector at scrape time from the server's thread: a scrape may see a batch half
    counted, never a count lost.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(DURATION_BUCKETS)  # per bucket, not cumulative
        self.total = 0.0

    def observe_many(self, seconds: Iterable[float]) -> None:
        """Count each duration into its bucket (``le`` is inclusive, as Prometheus has it)."""
        counts, bounds, total = self.counts, DURATION_BUCKETS, 0.0
        for value in seconds:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.total += total


#: (stream, group) -> its histogram; kept for the process's life, like counter children.
_durations: dict[tuple[str, str], Durations] = {}


class _DurationCollector(Collector):
    """Expose every consumer's :class:`Durations` as ``redis_broker_process_duration_seconds``."""

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            PROCESS_DURATION, PROCESS_DURATION_HELP, labels=CONSUMER_LABELS
        )
        for labels, durations in list(_durations.items()):
            counts, running, buckets = list(durations.counts), 0, []
            for name, count in zip(BUCKET_NAMES, counts, strict=True):
                running += count
                buckets.append((name, float(running)))
            family.add_metric(labels, buckets, durations.total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(PROCESS_DURATION, PROCESS_DURATION_HELP, labels=CONSUMER_LABELS)


REGISTRY.register(_DurationCollector())


def count_published(kind: str, count: int = 1) -> None:
    """Count ``count`` publishes of ``kind`` (``stream``, ``channel`` or ``list``)."""
    _published[kind].inc(count)


def count_request(outcome: str) -> None:
    """Count one finished request by its outcome (one of ``REQUEST_OUTCOMES``)."""
    _requests[outcome].inc()


class ConsumerInstruments:
    """One consumer's labelled children, bound once so the hot path never looks them up.

    ``in_flight_of`` and ``oldest_call_of`` are read at scrape time (from the server's
    thread): nothing is written per entry for them.
    """

    __slots__ = ("acked", "dead_lettered", "dropped", "durations", "retried", "skipped_expired")

    def __init__(
        self,
        stream: str,
        group: str,
        *,
        in_flight_of: Callable[[], float],
        oldest_call_of: Callable[[], float | None],
    ) -> None:
        self.acked = consumed.labels(stream, group, ACKED)
        self.retried = consumed.labels(stream, group, RETRIED)
        self.dead_lettered = consumed.labels(stream, group, DEAD_LETTERED)
        self.skipped_expired = consumed.labels(stream, group, SKIPPED_EXPIRED)
        self.dropped = consumed.labels(stream, group, DROPPED)
        self.durations = _durations.setdefault((stream, group), Durations())
        in_flight.labels(stream, group).set_function(in_flight_of)

        def age() -> float:
            started = oldest_call_of()
            return 0.0 if started is None else time.monotonic() - started

        oldest_call.labels(stream, group).set_function(age)
