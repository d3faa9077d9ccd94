"""Benchmark: what OpenTelemetry tracing costs publish() and a stream consumer.

Four set-ups, each in its own process (a process sets its tracer provider once):

* ``absent``: ``opentelemetry`` cannot be imported: tracing is off, the baseline;
* ``api``: the API is installed and no SDK is configured (the no-op provider);
* ``dropped``: the SDK with a sampler that drops everything (``ALWAYS_OFF``);
* ``sampled``: the SDK sampling everything (``ALWAYS_ON``), a ``BatchSpanProcessor``
  exporting to an exporter that discards the spans.

For each: the wall time of one ``publish()`` inside a current span (a traced view; the
producer span and the ``traceparent`` header are the work measured), over many calls,
best of several runs; and the throughput of ``ConsumerRunner`` (burst, async no-op
handler) over a stream whose entries carry a ``traceparent``, best of several runs.
Prints the added cost per publish in ms and each consumer throughput as a ratio of
the baseline.

    python bench/tracing.py            # 20,000 publishes, 50,000 entries per run, 2 rounds
    python bench/tracing.py --quick    # 5,000 publishes, 20,000 entries
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import configure_consumers, fill_stream  # noqa: E402

STREAM = "bench.tracing"
PAYLOAD = {"order_id": 123456, "customer": "c" * 120, "total": "99.90", "items": [1, 2, 3]}
# A sampled parent, as a traced publisher would have written it.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MODES = ("absent", "api", "dropped", "sampled")


def configure(url: str, mode: str) -> None:
    """Set up tracing for ``mode``, then Django minimally (no database)."""
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    elif mode in ("dropped", "sampled"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

        class Discard(SpanExporter):
            """Export nowhere: the cost measured is ours and the SDK's, not a network's."""

            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider(sampler=ALWAYS_ON if mode == "sampled" else ALWAYS_OFF)
        provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=100_000))
        trace.set_tracer_provider(provider)

    configure_consumers(url)


@contextmanager
def current_span(mode: str) -> Iterator[None]:
    """Run the body inside a span, as a traced view would (nothing to enter when absent)."""
    if mode == "absent":
        with nullcontext():
            yield
        return
    from opentelemetry import trace

    with trace.get_tracer("bench").start_as_current_span("view"):
        yield


def publish_seconds(mode: str, calls: int, runs: int) -> float:
    """Return the best wall time of one ``publish()`` inside a current span."""
    from redis_broker import publish

    best = float("inf")
    with current_span(mode):
        for _ in range(runs):
            started = time.perf_counter()
            for _ in range(calls):
                publish("bench.tracing.publish", PAYLOAD, type="order.created")
            best = min(best, (time.perf_counter() - started) / calls)
    return best


def cpu_costs(mode: str, calls: int = 20_000) -> dict[str, float]:
    """Return the CPU seconds tracing adds to one publish and to one handler call.

    Without Redis: the encoding of a publish with and without its producer span, and a
    handler call with and without its process span, so the figures do not move with
    the machine's load the way round trips do.
    """
    import timeit

    from redis_broker import tracing, wire
    from redis_broker.consumers.message import StreamMessage

    def plain() -> None:
        wire.encode_entry(PAYLOAD, type="order.created")

    def traced() -> None:
        with tracing.producing("publish", STREAM) as span:
            fields = wire.encode_entry(PAYLOAD, type="order.created", headers=span.headers(None))
            span.message_id(fields[wire.EVENT_ID])

    def handler(message: Any) -> None:
        return None

    wrapped = tracing.traced_handler(handler, is_async=False, destination=STREAM, group="g")
    message = StreamMessage.build(
        *("1-0", STREAM, "g", PAYLOAD, "order.created", "e"),
        *({wire.TRACEPARENT: TRACEPARENT}, "", 1, {}),
    )

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=calls, repeat=5)) / calls

    with current_span(mode):
        publish_cpu = best(traced) - best(plain)
    return {
        "publish_cpu_s": publish_cpu,
        "handler_cpu_s": best(lambda: wrapped(message)) - best(lambda: handler(message)),
    }


def consume_rate(mode: str, entries: int, runs: int) -> float:
    """Return the best rate (entries/s) of a burst runner over the pre-filled stream."""
    import redis

    from redis_broker.connection import get_redis
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    async def handle(message: Any) -> None:
        return None

    client: redis.Redis = get_redis()
    best = 0.0
    for run in range(runs):
        group = f"{mode}-{os.getpid()}-{run}"
        client.xgroup_create(STREAM, group, id="0")
        spec = StreamConsumerSpec(func=handle, stream=STREAM, group=group, name=group)
        runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda _: None)
        started = time.perf_counter()
        runner.run()
        best = max(best, entries / (time.perf_counter() - started))
    return best


def child(url: str, mode: str, calls: int, entries: int, runs: int) -> None:
    """Measure one mode in this process; print the figures as JSON."""
    configure(url, mode)
    from redis_broker import tracing

    figures = {
        "enabled": tracing.ENABLED,
        **cpu_costs(mode),
        "publish_s": publish_seconds(mode, calls, runs),
        "consume_rate": consume_rate(mode, entries, runs),
    }
    print(json.dumps(figures))


def prefill(url: str, count: int) -> None:
    """Append ``count`` entries in our wire format, each carrying a sampled ``traceparent``."""
    import redis

    from redis_broker import wire

    client = redis.Redis.from_url(url)
    try:
        fill_stream(
            client, STREAM, count, PAYLOAD, type="order.created",
            headers={wire.TRACEPARENT: TRACEPARENT},
        )  # fmt: skip
    finally:
        client.close()


def main() -> None:
    """Run every mode in its own process and print the costs against the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer publishes and entries")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument(
        "--rounds", type=int, default=2, help="processes per set-up, interleaved; the best counts"
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, mode, calls, entries, runs = args.child
        child(url, mode, int(calls), int(entries), int(runs))
        return

    calls = 5_000 if args.quick else 20_000
    entries = 20_000 if args.quick else 50_000

    from redis_broker.testing import RedisServer

    server = RedisServer()
    url = server.start()
    try:
        prefill(url, entries)
        print(
            f"Python {sys.version.split()[0]}; {calls:,} publishes and {entries:,} entries "
            f"per run, best of {args.runs} runs x {args.rounds} rounds"
        )
        # The set-ups take turns, round after round, so a busy moment of the machine
        # does not land on one of them only; each keeps its best figures.
        results: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for mode in MODES:
                command = [sys.executable, __file__, "--child", url, mode]
                command += [str(calls), str(entries), str(args.runs)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                figures = json.loads(out.strip().splitlines()[-1])
                best = results.setdefault(mode, figures)
                best["publish_s"] = min(best["publish_s"], figures["publish_s"])
                best["consume_rate"] = max(best["consume_rate"], figures["consume_rate"])
                for key in ("publish_cpu_s", "handler_cpu_s"):
                    best[key] = min(best[key], figures[key])
    finally:
        server.stop()

    base = results["absent"]
    print(
        f"{'set-up':<10} {'publish ms':>11} {'added ms':>9} {'CPU added ms':>13} "
        f"{'consume /s':>11} {'ratio':>6} {'CPU per call us':>16}"
    )
    for mode in MODES:
        figures = results[mode]
        added = (figures["publish_s"] - base["publish_s"]) * 1000
        ratio = figures["consume_rate"] / base["consume_rate"]
        print(
            f"{mode:<10} {figures['publish_s'] * 1000:>11.4f} {added:>+9.4f} "
            f"{figures['publish_cpu_s'] * 1000:>+13.4f} {figures['consume_rate']:>11,.0f} "
            f"{ratio:>6.2f} {figures['handler_cpu_s'] * 1e6:>+16.2f}"
        )
    print(
        "added ms: wall time per publish() over the baseline (round trips included, so it "
        "moves with the load); CPU added ms: the same without Redis; CPU per call us: what "
        "the process span adds to one handler call"
    )


if __name__ == "__main__":
    main()
