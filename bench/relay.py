"""Benchmark the browser relay against plain Channels groups over channels_redis.

    .venv/bin/python bench/relay.py            # 50 and 500 sockets, 10 s phases
    .venv/bin/python bench/relay.py --quick    # shorter phases, for a smoke run

For each server and socket count it starts ``daphne`` and opens the sockets from a
separate client process, all subscribed to one channel, then:

1. steady: a publisher broadcasts at a fixed rate; each message carries its send time,
   so the clients measure latency (p50, p99) and count what never arrived;
2. flat out: the publisher sends as fast as it can; the clients count deliveries per
   second and what was dropped.

Servers: the relay (the demo's ``asgi.py``: hub, one Pub/Sub connection per process)
and a plain Channels consumer joined to a group, over ``channels_redis``'s
``RedisChannelLayer`` and ``RedisPubSubChannelLayer`` (the app is :data:`peer_app`
below). The server's Redis connections are counted too.

The client is a minimal asyncio WebSocket reader (no client library is installed, and
autobahn's asyncio flavour cannot share a process with daphne's Twisted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNEL = "chat.bench"
GROUP = "bench"
SERVERS = ("relay", "channels_redis core", "channels_redis pubsub")


# ----------------------------------------------------------------------------- peer app
# A plain Channels group consumer, as a project without the relay would write it. daphne
# imports this module in its own process: ``bench.relay:peer_app``.

_peer: Any = None


def _build_peer() -> Any:
    import django
    from django.conf import settings

    backend = {
        "core": "channels_redis.core.RedisChannelLayer",
        "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    }[os.environ["BENCH_LAYER"]]
    settings.configure(
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {"BACKEND": backend, "CONFIG": {"hosts": [os.environ["REDIS_URL"]]}}
        },
        SECRET_KEY="bench",
        DATABASES={},
    )
    django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter

    class GroupConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
        groups = [GROUP]

        async def connect(self) -> None:
            await self.accept()
            await self.send(text_data=json.dumps({"type": "subscribed", "channel": CHANNEL}))

        async def bench_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

    return ProtocolTypeRouter({"websocket": GroupConsumer.as_asgi()})


async def peer_app(scope: Any, receive: Any, send: Any) -> None:
    """ASGI entry point of the plain Channels group consumer (built on first use)."""
    global _peer
    if _peer is None:
        _peer = _build_peer()
    await _peer(scope, receive, send)


# ----------------------------------------------------------------------------- clients


class Reader:
    """One WebSocket that counts message frames and records latencies."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.measure = True
        self.closed_code: int | None = None
        self.refused = False
        self.error = ""
        self.subscribed = asyncio.Event()

    async def run(self, port: int, cookie: str, subscribe: bool) -> None:
        try:
            await self._run(port, cookie, subscribe)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if not self.subscribed.is_set():  # the server refused or failed the handshake
                self.refused = True
                self.subscribed.set()
                self.error = str(exc)[:100]

    async def _run(self, port: int, cookie: str, subscribe: bool) -> None:
        url = f"ws://127.0.0.1:{port}{'/ws/broker/' if subscribe else '/ws/'}"
        async with connect(
            url,
            origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
            additional_headers={"Cookie": cookie},
            open_timeout=60,
            max_queue=None,  # read as fast as frames come; the bench measures the server
        ) as socket:
            if subscribe:
                await socket.send(json.dumps({"action": "subscribe", "channel": CHANNEL}))
            try:
                async for message in socket:
                    if not self.subscribed.is_set():
                        self.subscribed.set()
                        continue
                    self.count += 1
                    if self.measure:
                        sent = json.loads(message)["data"]["t"]
                        self.latencies.append(time.time() - sent)
            except ConnectionClosed:
                pass
            self.closed_code = socket.close_code or 1006


def client_process(conn: Connection, port: int, cookie: str, n: int, relay: bool) -> None:
    """Open ``n`` sockets and answer the orchestrator's commands over ``conn``."""

    async def main() -> None:
        readers = [Reader() for _ in range(n)]
        tasks = []
        for i, r in enumerate(readers):
            tasks.append(asyncio.create_task(r.run(port, cookie, relay)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not flood daphne's accept backlog
        await asyncio.wait_for(asyncio.gather(*(r.subscribed.wait() for r in readers)), 120)
        refused = [r for r in readers if r.refused]
        readers = [r for r in readers if not r.refused]
        conn.send({"refused": len(refused), "error": refused[0].error if refused else ""})
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if command in ("latency", "count"):
                for r in readers:
                    r.count, r.latencies, r.measure = 0, [], command == "latency"
                conn.send("ok")
            elif command == "report":
                latencies = [x for r in readers for x in r.latencies]
                conn.send(
                    {
                        "received": sum(r.count for r in readers),
                        "latencies": latencies,
                        "closed": sum(1 for r in readers if r.closed_code is not None),
                        "too_slow": sum(1 for r in readers if r.closed_code == 4008),
                        "stamp": time.time(),
                    }
                )
        for t in tasks:
            t.cancel()

    asyncio.run(main())


# ----------------------------------------------------------------------------- orchestration


def start_redis() -> tuple[str, Any]:
    """Return a Redis URL: REDIS_URL, or a private server started here."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    from redis_broker.testing import RedisServer

    server = RedisServer()
    return server.start(), server


def wait_http(port: int, path: str, timeout: float = 30) -> None:
    """Wait until daphne answers on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means daphne is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daphne did not start on port {port}")


def wait_port(port: int, timeout: float = 30) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def prepare_database(env: dict[str, str]) -> str:
    """Migrate the bench database and return a session cookie of a logged-in user."""
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from django.test import Client\n"
        "u, _ = get_user_model().objects.get_or_create(username='bench')\n"
        "c = Client(); c.force_login(u); print(c.cookies['sessionid'].value)\n"
    )
    out = subprocess.run(
        [*manage, "shell", "-c", code], env=env, check=True, cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    return f"sessionid={out.stdout.strip().splitlines()[-1]}"


class Publisher:
    """Publishes on the channel (relay) or group (peers) at a rate or flat out."""

    def __init__(self, server: str, url: str) -> None:
        self.server = server
        self.url = url

    async def __aenter__(self) -> Publisher:
        if self.server == "relay":
            import redis.asyncio

            from redis_broker.wire import encode_message

            self.redis = redis.asyncio.Redis.from_url(self.url)
            self.encode = encode_message
        else:
            from channels_redis.core import RedisChannelLayer
            from channels_redis.pubsub import RedisPubSubChannelLayer

            cls = RedisChannelLayer if self.server.endswith("core") else RedisPubSubChannelLayer
            self.layer = cls(hosts=[self.url])
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.server == "relay":
            await self.redis.aclose()
        else:
            closer = getattr(self.layer, "close_pools", None) or self.layer.flush
            await closer()

    async def send(self, n: int) -> None:
        data = {"t": time.time(), "n": n, "text": "x" * 64}
        if self.server == "relay":
            await self.redis.publish(CHANNEL, self.encode(data))
        else:
            frame = json.dumps({"type": "message", "channel": CHANNEL, "data": data})
            await self.layer.group_send(GROUP, {"type": "bench.message", "text": frame})

    async def steady(self, rate: float, seconds: float) -> int:
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            await self.send(n)
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        return n

    async def flat_out(self, seconds: float) -> int:
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            await asyncio.gather(*(self.send(n + i) for i in range(10)))
            n += 10
        return n


def settle(conn: Connection, quiet: float = 1.0, limit: float = 30) -> dict[str, Any]:
    """Ask for reports until the received count stops growing for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    conn.send("report")
    last = conn.recv()
    changed = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        conn.send("report")
        report = conn.recv()
        if report["received"] != last["received"]:
            last, changed = report, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            break
    return last


def redis_clients(url: str) -> int:
    """Return how many clients the Redis server has connected."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("clients")["connected_clients"]) - 1
    finally:
        client.close()


def run_one(server: str, sockets: int, args: argparse.Namespace, base_env: dict[str, str],
            cookie: str, redis_url: str) -> dict[str, Any]:  # fmt: skip
    """Measure one server with ``sockets`` clients; return its figures."""
    from redis_broker.testing import free_port

    port = free_port()
    env = dict(base_env)
    if server == "relay":
        app = "demo_site.asgi:application"
        path = "/login/"
    else:
        app = "bench.relay:peer_app"
        env["BENCH_LAYER"] = server.rsplit(" ", 1)[-1]
        path = "/"
    before = redis_clients(redis_url)
    log = tempfile.TemporaryFile()  # daphne's output, read back for the hub's reconnects
    daphne = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    clients = None
    try:
        if server == "relay":
            wait_http(port, path)
        else:
            wait_port(port)  # the peer app answers no HTTP
        clients = ctx.Process(
            target=client_process, args=(child, port, cookie, sockets, server == "relay")
        )
        clients.start()
        if not parent.poll(180):
            raise RuntimeError("clients did not connect")
        ready = parent.recv()
        refused = ready["refused"]
        sockets_ok = sockets - refused
        connections = redis_clients(redis_url) - before

        async def publish(kind: str) -> int:
            async with Publisher(server, redis_url) as publisher:
                if kind == "steady":
                    return await publisher.steady(args.rate, args.seconds)
                return await publisher.flat_out(args.seconds)

        parent.send("latency")
        parent.recv()
        sent = asyncio.run(publish("steady"))
        steady = settle(parent)
        lat = sorted(steady["latencies"])
        parent.send("count")
        parent.recv()
        start = time.time()
        sent_fast = asyncio.run(publish("flat"))
        fast = settle(parent)
        elapsed = max(1e-9, fast["stamp"] - start)  # until the last delivery was seen
        result = {
            "server": server,
            "sockets": sockets,
            "redis_connections": connections,
            "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan"),
            "refused": refused,
            "refused_error": ready["error"],
            "steady_dropped": 1 - steady["received"] / max(1, sent * sockets_ok),
            "deliveries_per_s": fast["received"] / elapsed,
            "flat_dropped": 1 - fast["received"] / max(1, sent_fast * sockets_ok),
            "offered_per_s": sent_fast * sockets_ok / args.seconds,
            "closed_sockets": fast["closed"],
            "closed_4008": fast["too_slow"],
        }
        parent.send("stop")
        daphne.terminate()
        daphne.wait(10)
        log.seek(0)
        text = log.read().decode(errors="replace")
        # The relay logs each lost Pub/Sub connection (the demo logs redis_broker at INFO).
        reconnects = text.count("Relay hub reconnected")
        result["hub_reconnects"] = reconnects if server == "relay" else "-"
        return result
    finally:
        if clients is not None:
            clients.join(10)
            if clients.is_alive():
                clients.kill()
        daphne.terminate()
        try:
            daphne.wait(10)
        except subprocess.TimeoutExpired:
            daphne.kill()
        log.close()


def main() -> int:
    """Run every server at every socket count and print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s phases instead of 10 s")
    parser.add_argument("--sockets", type=int, nargs="*", default=[50, 500])
    parser.add_argument("--rate", type=float, default=10.0, help="steady messages per second")
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=SERVERS)
    args = parser.parse_args()
    args.seconds = 3.0 if args.quick else 10.0
    redis_url, redis_server = start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="demo_site.settings",
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        PYTHONPATH=str(ROOT),
        DEBUG="false",
    )
    results = []
    try:
        cookie = prepare_database(env)
        for sockets in args.sockets:
            for server in args.servers:
                print(f"... {server}, {sockets} sockets", flush=True)
                try:
                    result = run_one(server, sockets, args, env, cookie, redis_url)
                except Exception as exc:  # a peer that cannot cope is a result too
                    print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                results.append(result)
                print("    " + json.dumps(result), flush=True)
    finally:
        if redis_server is not None:
            redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"steady rate {args.rate:g} msg/s, phases of {args.seconds:g} s, {os.cpu_count()} CPUs")
    header = (
        f"{'server':24} {'sockets':>7} {'redis conns':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'lost@rate':>9} {'offered/s':>10} {'deliv/s':>9} {'undeliv.':>8} {'closed':>6} "
        f"{'refused':>7} {'hub reconn.':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['server']:24} {r['sockets']:>7} {r['redis_connections']:>11} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['steady_dropped']:>9.1%} "
            f"{r['offered_per_s']:>10.0f} {r['deliveries_per_s']:>9.0f} {r['flat_dropped']:>8.1%} "
            f"{r['closed_sockets']:>6} "
            f"{r['refused']:>7} {r.get('hub_reconnects', '-'):>11}"
        )
    print(
        "lost@rate: steady-phase messages that never arrived. offered/s: deliveries the flat-out\n"
        "publisher asked for (messages x sockets). deliv/s: deliveries until the last one seen.\n"
        "undeliv.: flat-out deliveries not made when the measurement stopped (1 s without any,\n"
        "or 30 s after the publisher stopped): shed by the server, or still queued in Redis.\n"
        "hub reconn.: times the relay's hub lost Redis (e.g. an output buffer limit) in the run."
    )
    print()
    for sockets in args.sockets:
        by = {r["server"]: r for r in results if r["sockets"] == sockets}
        relay = by.get("relay")
        if relay is None:
            continue
        for peer in SERVERS[1:]:
            if peer in by:
                p = by[peer]
                print(
                    f"{sockets} sockets: relay / {peer}: deliveries/s x"
                    f"{relay['deliveries_per_s'] / max(1, p['deliveries_per_s']):.1f}, "
                    f"p99 x{relay['p99_ms'] / p['p99_ms']:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
