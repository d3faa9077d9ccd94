"""Benchmark: our list, channel and output consumers against raw redis-py and FastStream.

One private Redis, three measurements, each contender best of ``--repeat`` runs:

1. **Lists.** The same N items (one JSON text each, the element ``push()`` writes) are
   pushed before every run, and each contender consumes until the list is empty:

   * ours: ``@list_consumer`` with a trivial async handler, ``ConsumerRunner`` in burst mode;
   * raw redis-py asyncio, a careful hand-written reliable queue: ``BLMOVE`` into a
     processing list, ``json.loads``, await the handler, ``LREM`` from the processing list;
   * FastStream's list subscriber per message (``BLPOP``: the item is gone before the
     handler runs, so it does less) and with ``ListSub(batch=True, max_records=100)``.

2. **Channels.** A separate publisher process (this script again, ``--publish``) sends M
   messages in our Pub/Sub format as fast as it can, pipelined 100 at a time, once the
   consumer's subscription is live (``PUBSUB NUMSUB``). The rate is messages received per
   second from the publisher's first send to the consumer's receipt of the last message
   (marked ``"last": true``), or of whatever it got before an idle timeout; messages
   Pub/Sub dropped are reported as lost. Contenders: ours (``@channel_consumer`` on a
   plain channel), a raw redis-py asyncio ``SUBSCRIBE``/``get_message`` loop that
   ``json.loads`` each message and awaits the handler, and FastStream's channel subscriber.

3. **Outputs.** One stream of N entries consumed by ``@stream_consumer`` whose handler
   returns a small dict, once with ``output=`` (every result appended to a stream in the
   same step as the ack) and once without, each run in a new group, burst mode.

The "per CPU second" column counts this process's CPU only (all threads), not Redis's:
it shrugs off other load on the machine, which wall-clock rates do not.

    python bench/subscribers.py            # 50,000 items, messages and entries
    python bench/subscribers.py --quick    # 10,000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from bench.common import configure_consumers, fill_stream  # noqa: E402

LIST = "bench.jobs"
PROCESSING = "bench.jobs:raw-processing"  # the raw loop's own processing list
CHANNEL = "bench.prices"
STREAM = "bench.orders"
OUTPUT = "bench.out"
PAYLOAD = {"order_id": 123456, "customer": "c" * 120, "total": "99.90", "items": [1, 2, 3]}
#: Seconds without a message, once the publisher has exited, after which a run ends.
IDLE_TIMEOUT = 3.0


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Return the wall-clock and the CPU seconds (this process, all threads) ``fn`` takes."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def ratio_line(label: str, ours: float | None, theirs: float | None, target: float | None) -> str:
    """Return ``label  ours/theirs  [>= target] ok|MISSED``; n/a when a contender failed."""
    if not ours or not theirs:
        return f"    {label:<26}    n/a" + (f" [>= {target}] MISSED" if target else "")
    ratio = ours / theirs
    mark = "" if target is None else f"[>= {target}] " + ("ok" if ratio >= target else "MISSED")
    return f"    {label:<26} {ratio:6.2f}x {mark}"


def attempt(name: str, run: Callable[[], Any]) -> tuple[float, float] | None:
    """Return ``timed(run)``, or print the traceback and return None when ``run`` fails.

    One contender failing (ours not written yet, say) leaves the others' figures.
    """
    try:
        return timed(run)
    except Exception:
        print(f"  !! {name} failed:")
        traceback.print_exc(file=sys.stdout)
        return None


# --- 1. lists ----------------------------------------------------------------------------


def fill_list(url: str, count: int) -> int:
    """Empty the database, push ``count`` items in ``push()``'s format; return one's size."""
    from redis_broker import wire

    client = redis.Redis.from_url(url)
    client.flushdb()
    size = 0
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 1000)):
            element = wire.encode_message({**PAYLOAD, "order_id": n}, type="order.created")
            size = len(element.encode())
            pipe.rpush(LIST, element)
        pipe.execute()
    client.close()
    return size


def check_push_format(url: str) -> str:
    """Compare the element ``push()`` writes with ours; return a note for the header."""
    try:
        from redis_broker import push
    except ImportError:
        return "push() not available yet: items made with wire.encode_message"
    client = redis.Redis.from_url(url)
    push("bench.format", PAYLOAD, type="order.created")
    theirs = json.loads(client.lpop("bench.format") or b"null")
    client.close()
    keys = sorted(theirs) if isinstance(theirs, dict) else theirs
    if keys != sorted(["type", "data", "event_id", "published_at"]):
        return f"push() writes {keys!r}, not the four envelope keys: items made here differ"
    return "items in push()'s format"


def leftovers(client: redis.Redis) -> dict[str, int]:
    """Return the lists still holding items (the queue, processing lists) and their lengths."""
    return {
        key.decode(): length
        for key in client.scan_iter(_type="list")
        if (length := client.llen(key))
    }


def list_ours(count: int) -> int:
    """Consume the list with our runner in burst mode; return how many items it handled."""
    from redis_broker.consumers.registry import ListConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    seen = 0

    async def handler(message: Any) -> None:
        nonlocal seen
        seen += 1

    spec = ListConsumerSpec(func=handler, list=LIST, name="bench-list")
    ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None).run()
    return seen


async def list_raw(url: str, handler: Callable[[Any], Awaitable[None]]) -> int:
    """The hand-written reliable queue: BLMOVE, decode, await the handler, LREM."""
    client = redis.asyncio.Redis.from_url(url)
    seen = 0
    while True:
        item = await client.blmove(LIST, PROCESSING, 0.1, "LEFT", "RIGHT")
        if item is None:
            break
        await handler(json.loads(item))
        await client.lrem(PROCESSING, 1, item)
        seen += 1
    await client.aclose()
    return seen


async def list_faststream(url: str, count: int, *, batch: bool) -> int:
    """Consume with FastStream's list subscriber (BLPOP, or LPOP 100 in batch mode)."""
    from faststream.redis import ListSub, RedisBroker

    broker = RedisBroker(url, logger=None)
    seen = 0
    finished = asyncio.Event()

    if batch:

        @broker.subscriber(list=ListSub(LIST, batch=True, max_records=100))
        async def handle_batch(body: list[Any]) -> None:
            nonlocal seen
            seen += len(body)
            if seen >= count:
                finished.set()

    else:

        @broker.subscriber(list=LIST)
        async def handle(body: Any) -> None:
            nonlocal seen
            seen += 1
            if seen >= count:
                finished.set()

    async with broker:
        await broker.start()
        await finished.wait()
    return seen


def bench_lists(url: str, count: int, repeat: int) -> None:
    """Measure every list contender; print their best rates and the ratios."""

    async def trivial(data: Any) -> None:
        pass

    contenders: list[tuple[str, Callable[[], int]]] = [
        ("ours", lambda: list_ours(count)),
        ("raw", lambda: asyncio.run(list_raw(url, trivial))),
        ("faststream", lambda: asyncio.run(list_faststream(url, count, batch=False))),
        ("faststream batch", lambda: asyncio.run(list_faststream(url, count, batch=True))),
    ]
    print(f"1. List consumers, {count:,} items, best of {repeat}:")
    rates: dict[str, float] = {}
    cpu_rates: dict[str, float] = {}
    client = redis.Redis.from_url(url)
    for name, run in contenders:
        for _ in range(repeat):
            fill_list(url, count)
            handled: list[int] = []
            result = attempt(name, lambda run=run, handled=handled: handled.append(run()))
            if result is None:
                break
            wall, cpu = result
            left = leftovers(client)
            if handled != [count] or left:
                print(f"  !! {name}: handled {handled[0]:,} of {count:,}; left in lists: {left}")
            rates[name] = max(rates.get(name, 0.0), count / wall)
            cpu_rates[name] = max(cpu_rates.get(name, 0.0), count / cpu)
        if name in rates:
            print(
                f"  {name:<18} {rates[name]:>10,.0f} items/s   "
                f"{cpu_rates[name]:>10,.0f} per CPU second"
            )
    client.close()
    print("  Ratios of items/s (targets in brackets):")
    ours = rates.get("ours")
    print(ratio_line("ours / raw", ours, rates.get("raw"), 0.8))
    print(ratio_line("ours / raw, CPU", cpu_rates.get("ours"), cpu_rates.get("raw"), None))
    print(ratio_line("ours / FastStream", ours, rates.get("faststream"), 1.0))
    print(ratio_line("ours / FastStream batch", ours, rates.get("faststream batch"), None))


# --- 2. channels -------------------------------------------------------------------------


def publish(url: str, channel: str, count: int) -> None:
    """Publish ``count`` messages, 100 per pipeline; print the first and last send times."""
    from redis_broker import wire

    messages = [
        wire.encode_message({**PAYLOAD, "order_id": n}, type="price.changed")
        for n in range(count - 1)
    ]
    messages.append(wire.encode_message({**PAYLOAD, "last": True}, type="price.changed"))
    client = redis.Redis.from_url(url)
    client.ping()  # connect before the clock starts
    started = time.time()
    for start in range(0, count, 100):
        pipe = client.pipeline(transaction=False)
        for message in messages[start : start + 100]:
            pipe.publish(channel, message)
        pipe.execute()
    print(json.dumps({"started": started, "finished": time.time()}))
    client.close()


class Tally:
    """What a channel handler saw; the driver thread reads it while the consumer writes."""

    def __init__(self) -> None:
        self.received = 0
        self.last_at = 0.0  # time.time() of the latest message
        self.done = threading.Event()  # the marked last message arrived

    def saw(self, data: Any) -> None:
        self.received += 1
        self.last_at = time.time()
        if isinstance(data, dict) and data.get("last"):
            self.done.set()


def drive(
    url: str,
    count: int,
    tally: Tally,
    stop: Callable[[], None],
    out: dict[str, Any],
    abort: threading.Event,
) -> None:
    """Wait for the subscription, run the publisher, wait for the last message, then stop.

    Runs in a thread beside the consumer. Ends the run when the last message arrived, or
    when the publisher has exited and nothing came for ``IDLE_TIMEOUT`` seconds, or at
    once when ``abort`` is set (the consumer died).
    """
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while not (client.pubsub_numsub(CHANNEL)[0][1] or client.pubsub_numpat()):
            if abort.is_set():
                return
            if time.monotonic() > deadline:
                out["error"] = "the subscription did not appear within 10 s"
                return
            time.sleep(0.01)
        publisher = subprocess.Popen(
            [sys.executable, __file__, "--publish", url, CHANNEL, str(count)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        exited_at = None
        while not tally.done.wait(0.05) and not abort.is_set():
            if exited_at is None and publisher.poll() is not None:
                exited_at = time.time()
            if exited_at is not None and time.time() - max(exited_at, tally.last_at) > IDLE_TIMEOUT:
                break
        stdout, _ = publisher.communicate()
        out.update(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        client.close()
        with contextlib.suppress(RuntimeError):  # the consumer's loop is gone already
            stop()


@contextlib.contextmanager
def driven(
    url: str, count: int, tally: Tally, stop: Callable[[], None], out: dict[str, Any]
) -> Iterator[None]:
    """Run :func:`drive` in a thread while the body consumes; wait for it on the way out."""
    abort = threading.Event()
    driver = threading.Thread(target=drive, args=(url, count, tally, stop, out, abort))
    driver.start()
    try:
        yield
    finally:
        abort.set()
        driver.join()


def channel_ours(url: str, count: int, tally: Tally, out: dict[str, Any]) -> None:
    """Run our runner on a plain channel in this thread until the driver stops it."""
    from redis_broker.consumers.registry import ChannelConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    async def handler(message: Any) -> None:
        tally.saw(message.data)

    spec = ChannelConsumerSpec(func=handler, pattern=CHANNEL, name="bench-channel")
    runner = ConsumerRunner(specs=[spec], relay_outbox=False, echo=lambda line: None)
    with driven(url, count, tally, runner.stop, out):
        runner.run()


def channel_raw(url: str, count: int, tally: Tally, out: dict[str, Any]) -> None:
    """The hand-written loop: SUBSCRIBE, get_message, json.loads, await the handler."""
    stopped = threading.Event()

    async def handler(data: Any) -> None:
        tally.saw(data["data"])

    async def consume() -> None:
        client = redis.asyncio.Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        while not stopped.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                await handler(json.loads(message["data"]))
        await pubsub.aclose()
        await client.aclose()

    with driven(url, count, tally, stopped.set, out):
        asyncio.run(consume())


def channel_faststream(url: str, count: int, tally: Tally, out: dict[str, Any]) -> None:
    """FastStream's channel subscriber (its body is our whole message, parsed)."""
    from faststream.redis import RedisBroker

    stopped = threading.Event()

    async def consume() -> None:
        broker = RedisBroker(url, logger=None)

        @broker.subscriber(CHANNEL)
        async def handle(body: Any) -> None:
            tally.saw(body["data"])

        async with broker:
            await broker.start()
            await asyncio.to_thread(stopped.wait)

    with driven(url, count, tally, stopped.set, out):
        asyncio.run(consume())


def bench_channels(url: str, count: int, repeat: int) -> None:
    """Measure every channel contender; print their best rates, losses and the ratios."""
    contenders: list[tuple[str, Callable[[str, int, Tally, dict[str, Any]], None]]] = [
        ("ours", channel_ours),
        ("raw", channel_raw),
        ("faststream", channel_faststream),
    ]
    print(
        f"2. Channel consumers, {count:,} messages from another process, best of {repeat} "
        "(messages lost in each run):"
    )
    rates: dict[str, float] = {}
    for name, run in contenders:
        losses: list[int] = []
        publisher_rate = 0.0
        for _ in range(repeat):
            tally, out = Tally(), dict[str, Any]()
            ran = attempt(name, lambda run=run, tally=tally, out=out: run(url, count, tally, out))
            if ran is None:
                break
            if "error" in out:
                print(f"  !! {name}: {out['error']}")
                break
            elapsed = tally.last_at - out["started"]
            if tally.received and elapsed > 0:
                rates[name] = max(rates.get(name, 0.0), tally.received / elapsed)
            losses.append(count - tally.received)
            publisher_rate = max(publisher_rate, count / (out["finished"] - out["started"]))
        if name in rates:
            print(
                f"  {name:<18} {rates[name]:>10,.0f} received/s   "
                f"lost {', '.join(f'{n:,}' for n in losses):<24} "
                f"publisher sent {publisher_rate:>7,.0f}/s"
            )
    print("  Ratios of received/s (targets in brackets):")
    print(ratio_line("ours / raw", rates.get("ours"), rates.get("raw"), 0.8))
    print(ratio_line("ours / FastStream", rates.get("ours"), rates.get("faststream"), 2.0))


# --- 3. outputs --------------------------------------------------------------------------


def prefill(url: str, count: int) -> None:
    """Append ``count`` entries in our wire format to the input stream."""
    client = redis.Redis.from_url(url)
    try:
        fill_stream(client, STREAM, count, PAYLOAD, type="order.created")
    finally:
        client.close()


def stream_ours(url: str, group: str, output: str | None) -> None:
    """Consume the whole stream in a new group, returning a small dict per entry."""
    from redis_broker.consumers.registry import StreamConsumerSpec
    from redis_broker.consumers.runner import ConsumerRunner

    async def handler(message: Any) -> dict[str, Any]:
        return {"order_id": message.data["order_id"], "status": "accepted"}

    client = redis.Redis.from_url(url)
    client.xgroup_create(STREAM, group, id="0", mkstream=True)
    client.close()
    spec = StreamConsumerSpec(func=handler, stream=STREAM, group=group, name=group, output=output)
    ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None).run()


def bench_outputs(url: str, count: int, repeat: int) -> None:
    """Measure a stream consumer with and without ``output=``; print the ratio."""
    prefill(url, count)
    client = redis.Redis.from_url(url)
    print(f"3. Stream consumer outputs, {count:,} entries, best of {repeat}:")
    rates: dict[str, float] = {}
    cpu_rates: dict[str, float] = {}
    failed: set[str] = set()
    # Alternate the two so drift on a busy machine hits both alike.
    for n in range(repeat):
        for name, output in [("without output=", None), ("with output=", OUTPUT)]:
            if name in failed:
                continue
            client.delete(OUTPUT)
            group = f"{'out' if output else 'plain'}-{n}"
            result = attempt(name, lambda g=group, o=output: stream_ours(url, g, o))
            if result is None:
                failed.add(name)
                continue
            wall, cpu = result
            rates[name] = max(rates.get(name, 0.0), count / wall)
            cpu_rates[name] = max(cpu_rates.get(name, 0.0), count / cpu)
            pending = client.xpending(STREAM, group)["pending"]
            written = client.xlen(OUTPUT)
            if pending or written != (count if output else 0):
                print(f"  !! {name}: {pending:,} left pending, {written:,} outputs")
    client.close()
    for name in rates:
        print(
            f"  {name:<18} {rates[name]:>10,.0f} entries/s  "
            f"{cpu_rates[name]:>10,.0f} per CPU second"
        )
    print("  Ratio of entries/s (output= costs <= 25 %):")
    with_, without = "with output=", "without output="
    print(ratio_line("with / without", rates.get(with_), rates.get(without), 0.75))
    print(ratio_line("with / without, CPU", cpu_rates.get(with_), cpu_rates.get(without), None))


# --- main --------------------------------------------------------------------------------


def main() -> None:
    """Parse arguments, run every measurement, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 of each instead of 50,000")
    parser.add_argument("--count", type=int, help="items, messages and entries (default 50,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; best counts")
    parser.add_argument(
        "--only", choices=["lists", "channels", "outputs"], action="append", help="run only these"
    )
    parser.add_argument("--publish", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        url, channel, count = args.publish
        publish(url, channel, int(count))
        return

    count = args.count or (10_000 if args.quick else 50_000)
    parts = args.only or ["lists", "channels", "outputs"]

    from redis_broker.testing import RedisServer

    server = RedisServer()
    url = server.start()
    try:
        configure_consumers(url)
        client = redis.Redis.from_url(url)
        size = fill_list(url, 1)
        print(
            f"Redis {client.info()['redis_version']}, Python {sys.version.split()[0]}, "
            f"redis-py {redis.__version__}; one item or message {size} bytes; "
            f"{check_push_format(url)}"
        )
        client.close()
        if "lists" in parts:
            bench_lists(url, count, args.repeat)
        if "channels" in parts:
            bench_channels(url, count, args.repeat)
        if "outputs" in parts:
            bench_outputs(url, count, args.repeat)
    finally:
        server.close()


if __name__ == "__main__":
    main()
