"""Benchmark: what typed handlers cost, against the same consumer untyped.

Pre-fills one stream with entries whose ``data`` is a 10-field object (our wire format),
then consumes the same entries once per contender, each in a consumer group of its own,
with ``ConsumerRunner`` in burst mode and a trivial async handler, as bench/consume.py
measures ours:

* untyped: ``message.data`` is the decoded JSON (a dict), nothing checked;
* typed: ``message: StreamMessage[Order]``, ``Order`` a 10-field dataclass: every entry
  is checked and converted by msgspec before the handler runs;
* for information, no target: the same fields as a ``TypedDict`` (``schema=``), and as a
  pydantic model when pydantic is installed.

Rounds are interleaved (untyped, typed, ... then again), so drift on a busy machine hits
all alike; the best of each counts. The target: validation costs at most 15 % of the
throughput, that is typed/untyped >= 0.85, in entries per second and per CPU second (the
consumer's own CPU, all threads; Redis's work is not in it).

    python bench/typed.py            # 100,000 entries, best of 3
    python bench/typed.py --quick    # 20,000 entries
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.common import configure_consumers, fill_stream  # noqa: E402
from redis_broker.consumers.message import StreamMessage  # noqa: E402

STREAM = "bench.typed"
TARGET = 0.85


@dataclass
class Order:
    """The typed contender's payload: ten fields of the usual JSON kinds."""

    order_id: int
    customer: str
    email: str
    total: float
    currency: str
    paid: bool
    items: list[int]
    note: str | None
    placed_at: str
    channel: str


class OrderDict(TypedDict):
    """The same fields as a TypedDict."""

    order_id: int
    customer: str
    email: str
    total: float
    currency: str
    paid: bool
    items: list[int]
    note: str | None
    placed_at: str
    channel: str


PAYLOAD = {
    "order_id": 123456,
    "customer": "c" * 40,
    "email": "someone@example.com",
    "total": 99.9,
    "currency": "EUR",
    "paid": True,
    "items": [1, 2, 3],
    "note": None,
    "placed_at": "2024-05-01T12:00:00Z",
    "channel": "web",
}


async def untyped(message: StreamMessage) -> None:
    """The untyped contender's handler."""


async def typed(message: StreamMessage[Order]) -> None:
    """The typed contender's handler: ``message.data`` is an ``Order``."""


def prefill(url: str, count: int) -> int:
    """Append ``count`` entries in our wire format; return the size of one ``data`` field."""
    client = redis.Redis.from_url(url)
    try:
        return fill_stream(client, STREAM, count, PAYLOAD, type="order")
    finally:
        client.close()


def run_ours(handler: Callable[..., Any], group: str, schema: Any = None) -> None:
    """Consume the whole stream in a new group ``group`` with our runner in burst mode."""
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    spec = StreamConsumerSpec(func=handler, stream=STREAM, group=group, name=group, schema=schema)
    ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None).run()


def measure(url: str, group: str, count: int, run: Callable[[str], None]) -> tuple[float, float]:
    """Run ``run`` once in a new group; return its wall-clock and CPU rates (entries/s)."""
    client = redis.Redis.from_url(url)
    client.xgroup_create(STREAM, group, id="0")
    client.close()
    started, cpu = time.perf_counter(), time.process_time()
    run(group)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return count / wall, count / cpu


def contenders() -> list[tuple[str, Callable[[str], None], bool]]:
    """Return ``(name, run, measured against the target)`` for each contender."""
    found: list[tuple[str, Callable[[str], None], bool]] = [
        ("untyped", lambda g: run_ours(untyped, g), True),
        ("typed dataclass", lambda g: run_ours(typed, g), True),
        ("typed TypedDict", lambda g: run_ours(untyped, g, OrderDict), False),
    ]
    try:
        import pydantic
    except ImportError:
        return found

    model = pydantic.create_model(
        "OrderModel",
        **{name: (kind, ...) for name, kind in OrderDict.__annotations__.items()},
    )
    found.append(("typed pydantic", lambda g: run_ours(untyped, g, model), False))
    return found


def main() -> None:
    """Parse arguments, run the interleaved rounds, print the rates and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries")
    parser.add_argument("--entries", type=int, help="entries to pre-fill (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each counts")
    args = parser.parse_args()
    entries = args.entries or (20_000 if args.quick else 100_000)

    from redis_broker.testing import RedisServer

    server = RedisServer()
    url = server.start()
    try:
        configure_consumers(url)
        size = prefill(url, entries)
        client = redis.Redis.from_url(url)
        print(
            f"Redis {client.info()['redis_version']}, Python {sys.version.split()[0]}; "
            f"{entries:,} entries, data {size} bytes (10 fields), async handler, burst mode"
        )
        client.close()
        rates: dict[str, tuple[float, float]] = {}
        runs = contenders()
        for round_ in range(args.repeat):
            for name, run, _ in runs:
                rate, cpu = measure(url, f"{name.replace(' ', '-')}-{round_}", entries, run)
                best = rates.get(name, (0.0, 0.0))
                rates[name] = (max(best[0], rate), max(best[1], cpu))
        print(f"Throughput, best of {args.repeat} interleaved rounds:")
        for name, _, _ in runs:
            rate, cpu = rates[name]
            print(f"  {name:<16} {rate:>10,.0f} entries/s   {cpu:>10,.0f} per CPU second")
        base_rate, base_cpu = rates["untyped"]
        print(f"Ratios typed/untyped (target >= {TARGET}: validation costs <= 15 %):")
        for name, _, targeted in runs[1:]:
            rate, cpu = rates[name]
            per_entry_us = (1 / cpu - 1 / base_cpu) * 1e6
            verdict = ""
            if targeted:
                verdict = "ok" if min(rate / base_rate, cpu / base_cpu) >= TARGET else "MISSED"
            print(
                f"  {name:<16} {rate / base_rate:5.2f}x, CPU {cpu / base_cpu:5.2f}x "
                f"({per_entry_us:+.2f} us CPU per entry) {verdict}"
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
