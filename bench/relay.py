"""Benchmark the browser relay under uvicorn and daphne against a bare websockets server.

    .venv/bin/python bench/relay.py            # 500 sockets, 10 s phases, then 5,000 sockets
    .venv/bin/python bench/relay.py --quick    # 4 s phases, fewer servers: a smoke run

Servers, each in its own process, all fed by one Redis Pub/Sub channel:

- ``relay uvicorn``: the demo's ``asgi.py`` (Channels, the relay's consumer and hub)
  under uvicorn, started as the README recommends (:data:`UVICORN_ARGS`);
- ``relay daphne``: the same application under daphne;
- ``bare websockets``: :func:`serve_bare`, no Django and no Channels: websockets' own
  asyncio server, one redis.asyncio Pub/Sub connection, and ``websockets.broadcast`` of
  each message's bytes as they came from Redis. It is the Python limit on this machine;
- ``channels_redis core`` and ``channels_redis pubsub``: a plain Channels consumer joined
  to a group, over channels_redis's two layers (:data:`peer_app`), as a project without
  the relay would write it.

For each server and socket count the sockets are opened from ``--client-procs`` client
processes, all subscribed to one channel, then:

1. steady: a publisher broadcasts at a fixed rate that every server sustains; each
   message carries its send time, so the clients measure latency (p50, p99) and count
   what never arrived;
2. saturated: the publisher keeps the server's Pub/Sub connection busy (it publishes
   while Redis holds less than :data:`BACKLOG_BYTES` for it, so Redis never cuts it
   off) and the clients count deliveries per second over the window. The server's and
   the clients' CPU are measured over the same window: a server near 100 % of a core
   with clients below it means the server is what is measured.

Then, for each of ``--rss-servers``, one server process holds up to 5,000 sockets
(``--rss-sockets``): its resident memory is printed before, at each step (with the memory
per socket), after the sockets closed, and after opening as many again (a leak would
grow the process a second time; reused memory does not).

The clients are raw asyncio protocols that parse WebSocket frame headers and nothing more
(JSON only for the latency phase), so one client core reads far more frames than any
server here sends: a websockets client would cost as much per frame as the bare server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNEL = "chat.bench"
GROUP = "bench"
RELAYS = ("relay uvicorn", "relay daphne")
BARE = "bare websockets"
PEERS = ("channels_redis core", "channels_redis pubsub")
SERVERS = (*RELAYS, BARE, *PEERS)
#: uvicorn as the README recommends for the relay (see "Which server"): uvloop and
#: httptools come with uvicorn[standard]; no per-message deflate, which would compress
#: every broadcast frame once per socket and keep a zlib context per socket.
UVICORN_ARGS = (
    "--ws", "websockets-sansio", "--ws-max-size", "1048576", "--ws-per-message-deflate",
    "false", "--lifespan", "off",
)  # fmt: skip
#: Redis output buffer the saturating publisher allows for the server's Pub/Sub
#: connection: enough to keep it busy, far below ``client-output-buffer-limit pubsub``.
BACKLOG_BYTES = 256 * 1024
SUBSCRIBE = json.dumps({"action": "subscribe", "channel": CHANNEL}).encode()


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


# ----------------------------------------------------------------------------- bare server


async def serve_bare(port: int, redis_url: str) -> None:
    """Serve the bench's protocol with websockets alone: the Python limit for the relay.

    A socket that sends the subscribe frame gets ``subscribed`` and from then on every
    message of :data:`CHANNEL`, forwarded as the bytes Redis delivered (the wire format's
    JSON, which the clients read like a relay frame). No Django, no Channels, no frame
    built per message: one ``websockets.broadcast`` per message.
    """
    import redis.asyncio
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    subscribers: set[ServerConnection] = set()
    subscribed = json.dumps({"type": "subscribed", "channel": CHANNEL})

    async def handler(socket: ServerConnection) -> None:
        try:
            async for text in socket:
                frame = json.loads(text)
                if frame.get("action") == "subscribe" and frame.get("channel") == CHANNEL:
                    subscribers.add(socket)
                    await socket.send(subscribed)
        finally:
            subscribers.discard(socket)

    client = redis.asyncio.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None, backlog=1024):
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None:
                broadcast(subscribers, message["data"], text=True)


# ----------------------------------------------------------------------------- clients


class Counters:
    """What one client process has seen since the last reset."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.measure = True
        self.closed: dict[int, int] = {}  # close code -> sockets


class BenchSocket(asyncio.Protocol):
    """One client WebSocket that parses frame headers only (and JSON when measuring).

    Client frames are masked with a zero key: legal on the wire, and the servers here do
    not care which key a client picked.
    """

    def __init__(
        self, port: int, path: str, cookie: str, subscribe: bool, counters: Counters, deflate: bool
    ) -> None:
        self.port, self.path, self.cookie = port, path, cookie
        self.subscribe, self.counters, self.offer_deflate = subscribe, counters, deflate
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.head: bytearray | None = bytearray()
        self.buffer = bytearray()
        self.inflater: Any = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        host = f"127.0.0.1:{self.port}"
        lines = [
            f"GET {self.path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
            f"Origin: http://{host}", f"Cookie: {self.cookie}",
        ]  # fmt: skip
        if self.offer_deflate:  # as browsers do
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send_text(self, payload: bytes) -> None:
        """Send one masked text frame (payloads under 126 bytes)."""
        self.transport.write(bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            response, data = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head = None
            if not response.startswith(b"HTTP/1.1 101"):
                self.done(response.split(b"\r\n", 1)[0].decode(errors="replace"))
                self.transport.close()
                return
            if b"permessage-deflate" in response.lower():
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            if self.subscribe:
                self.send_text(SUBSCRIBE)
        buffer = self.buffer
        buffer += data
        size, pos = len(buffer), 0
        while size - pos >= 2:
            length, head = buffer[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buffer, pos + 2)[0], 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buffer, pos + 2)[0], 10
            end = pos + head + length
            if end > size:
                break
            first = buffer[pos]
            opcode = first & 0x0F
            if opcode == 1:
                self.on_text(first & 0x40, buffer, pos + head, end)
            elif opcode == 8:
                code = struct.unpack_from("!H", buffer, pos + head)[0] if length >= 2 else 1005
                self.done(f"closed {code}", code)
                self.transport.close()
            elif opcode == 9:  # ping: answer with a pong carrying the same payload
                payload = bytes(buffer[pos + head : end])
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            pos = end
        del buffer[:pos]

    def on_text(self, compressed: int, buffer: bytearray, start: int, end: int) -> None:
        if compressed or not self.ready.done() or self.counters.measure:
            payload = bytes(buffer[start:end])
            if compressed:  # context takeover: every message must go through the inflater
                payload = self.inflater.decompress(payload + b"\0\0\xff\xff")
            if not self.ready.done():
                self.done("subscribed" if b'"subscribed"' in payload else payload.decode()[:100])
                return
            if self.counters.measure:
                self.counters.latencies.append(time.time() - json.loads(payload)["data"]["t"])
        self.counters.count += 1

    def done(self, outcome: str, code: int | None = None) -> None:
        if not self.ready.done():
            self.ready.set_result(outcome)
        if code is not None:
            self.counters.closed[code] = self.counters.closed.get(code, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(f"connection lost: {exc}")
        elif self.head is None and self.transport is not None and not self.transport.is_closing():
            self.counters.closed[1006] = self.counters.closed.get(1006, 0) + 1


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (5,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_loop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop when uvloop is installed (as uvicorn uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def client_process(conn: Connection, port: int, path: str, cookie: str, subscribe: bool,
                   deflate: bool) -> None:  # fmt: skip
    """Open sockets on command and answer the orchestrator's commands over ``conn``.

    Commands: ``("open", n)``, ``"latency"``/``"count"`` (reset, with or without latency),
    ``"report"``, ``"close"``, ``"stop"``.
    """
    raise_fd_limit()
    counters = Counters()
    sockets: list[BenchSocket] = []

    async def open_sockets(n: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        refused: list[str] = []
        for start in range(0, n, 100):  # in waves, so no accept backlog overflows
            wave = []
            for _ in range(min(100, n - start)):
                socket = BenchSocket(port, path, cookie, subscribe, counters, deflate)
                try:
                    await loop.create_connection(lambda s=socket: s, "127.0.0.1", port)
                except OSError as exc:
                    refused.append(str(exc)[:100])
                    continue
                wave.append(socket)
            for socket in wave:
                try:
                    outcome = await asyncio.wait_for(asyncio.shield(socket.ready), 60)
                except TimeoutError:
                    outcome = "no answer within 60 s"
                if outcome == "subscribed":
                    sockets.append(socket)
                else:
                    refused.append(outcome)
                    socket.transport.close()
        return {"refused": len(refused), "error": refused[0] if refused else ""}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if isinstance(command, tuple) and command[0] == "open":
                conn.send(await open_sockets(command[1]))
            elif command in ("latency", "count"):
                counters.count, counters.latencies = 0, []
                counters.measure = command == "latency"
                conn.send(time.process_time())
            elif command == "report":
                conn.send(
                    {
                        "received": counters.count,
                        "latencies": counters.latencies,
                        "closed": dict(counters.closed),
                        "stamp": time.time(),
                        "cpu": time.process_time(),
                    }
                )
            elif command == "close":
                for socket in sockets:
                    socket.transport.close()
                sockets.clear()
                conn.send("ok")
        for socket in sockets:
            socket.transport.close()

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


class Clients:
    """The client processes, driven as one: sockets are spread evenly over them."""

    def __init__(self, procs: int, port: int, path: str, cookie: str, subscribe: bool,
                 deflate: bool) -> None:  # fmt: skip
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=client_process, args=(child, port, path, cookie, subscribe, deflate)
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        self.sockets = 0

    def ask(self, command: Any, timeout: float = 60) -> list[Any]:
        """Send ``command`` to every client process and return their answers."""
        for pipe in self.pipes:
            pipe.send(command)
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"a client process did not answer {command!r}")
            answers.append(pipe.recv())
        return answers

    def open(self, n: int) -> dict[str, Any]:
        """Open ``n`` more sockets in all, spread over the processes; return refusals."""
        share = [n // len(self.pipes) + (i < n % len(self.pipes)) for i in range(len(self.pipes))]
        for pipe, k in zip(self.pipes, share, strict=True):
            pipe.send(("open", k))
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise RuntimeError("clients did not connect within 300 s")
            answers.append(pipe.recv())
        refused = sum(a["refused"] for a in answers)
        self.sockets += n - refused
        return {"refused": refused, "error": next((a["error"] for a in answers if a["error"]), "")}

    def report(self) -> dict[str, Any]:
        """Return the sum of every process's report."""
        reports = self.ask("report")
        closed: dict[int, int] = {}
        for r in reports:
            for code, n in r["closed"].items():
                closed[code] = closed.get(code, 0) + n
        return {
            "received": sum(r["received"] for r in reports),
            "latencies": [x for r in reports for x in r["latencies"]],
            "closed": closed,
            "stamp": max(r["stamp"] for r in reports),
            "cpu": sum(r["cpu"] for r in reports),
        }

    def stop(self) -> None:
        """Stop every client process."""
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# ----------------------------------------------------------------------------- servers


def start_redis() -> tuple[str, Any]:
    """Return a Redis URL: REDIS_URL, or a private server started here."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    from redis_broker.testing import RedisServer

    server = RedisServer()
    return server.start(), server


def wait_http(port: int, path: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until the server on ``port`` answers any HTTP request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not start on port {port}")


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
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


class Server:
    """One server process on a free port: its command, its log, its CPU and memory."""

    def __init__(self, kind: str, base_env: dict[str, str]) -> None:
        from redis_broker.testing import free_port

        self.kind = kind
        self.port = port = free_port()
        env = dict(base_env)
        python = sys.executable
        if kind == "relay uvicorn":
            argv = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                    *UVICORN_ARGS, "--log-level", "warning",
                    "demo_site.asgi:application"]  # fmt: skip
        elif kind == "relay daphne":
            argv = [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                    "demo_site.asgi:application"]  # fmt: skip
        elif kind == BARE:
            argv = [python, str(Path(__file__).resolve()), "--serve-bare", str(port)]
        else:
            env["BENCH_LAYER"] = kind.rsplit(" ", 1)[-1]
            argv = [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                    "bench.relay:peer_app"]  # fmt: skip
        self.path = "/ws/broker/" if kind in RELAYS or kind == BARE else "/ws/"
        self.log = tempfile.TemporaryFile()  # read back for the hub's reconnects
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT
        )
        if kind in RELAYS:
            wait_http(port, "/login/", self.process)
        else:
            wait_port(port, self.process)  # these answer no HTTP

    def cpu(self) -> float:
        """Return the CPU seconds the server process has used."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        """Return the server process's resident memory in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        """Return how many files the server process has open."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> str:
        """Stop the server and return what it printed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:
            self.log.seek(0)
            self.output = self.log.read().decode(errors="replace")
            self.log.close()
        return self.output


class Publisher:
    """Publishes on the channel (relay, bare) or group (peers) at a rate or saturating."""

    def __init__(self, server: str, url: str) -> None:
        self.server = server
        self.url = url
        self.direct = server not in PEERS

    async def __aenter__(self) -> Publisher:
        if self.direct:
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
        if self.direct:
            await self.redis.aclose()
        else:
            closer = getattr(self.layer, "close_pools", None) or self.layer.flush
            await closer()

    def message(self, n: int) -> str:
        return self.encode({"t": time.time(), "n": n, "text": "x" * 64})

    async def send(self, n: int) -> None:
        data = {"t": time.time(), "n": n, "text": "x" * 64}
        if self.direct:
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

    async def saturate(self, seconds: float) -> int:
        """Keep the server busy for ``seconds``; return how many messages were sent.

        Direct publishes go 20 to a round trip with a ``CLIENT LIST TYPE pubsub``, and
        pause while Redis holds more than BACKLOG_BYTES for a Pub/Sub client. The peers'
        layers are driven flat out (the core layer has no Pub/Sub connection to watch).
        """
        n, backlog, end = 0, 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.direct:
                await asyncio.gather(*(self.send(n + i) for i in range(10)))
                n += 10
                continue
            pipe = self.redis.pipeline(transaction=False)
            if backlog <= BACKLOG_BYTES:
                for i in range(20):
                    pipe.publish(CHANNEL, self.message(n + i))
                n += 20
            pipe.client_list(_type="pubsub")
            replies = await pipe.execute()
            backlog = max((int(c.get("omem", 0)) for c in replies[-1]), default=0)
            if backlog > BACKLOG_BYTES:
                await asyncio.sleep(0.005)
        return n


def settle(
    clients: Clients, expected: int, quiet: float = 1.0, limit: float = 30
) -> dict[str, Any]:
    """Return the clients' report once ``expected`` deliveries arrived or none came for
    ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last = clients.report()
    changed = time.monotonic()
    while time.monotonic() < deadline and last["received"] < expected:
        time.sleep(0.1)
        report = clients.report()
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


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def run_one(kind: str, sockets: int, args: argparse.Namespace, env: dict[str, str], cookie: str,
            redis_url: str) -> dict[str, Any]:  # fmt: skip
    """Measure one server with ``sockets`` clients; return its figures."""
    before = redis_clients(redis_url)
    server = Server(kind, env)
    clients = None
    try:
        subscribe = kind not in PEERS
        clients = Clients(args.client_procs, server.port, server.path, cookie, subscribe,
                          args.deflate)  # fmt: skip
        ready = clients.open(sockets)
        sockets_ok = clients.sockets
        connections = redis_clients(redis_url) - before

        async def steady() -> int:
            async with Publisher(kind, redis_url) as publisher:
                return await publisher.steady(args.rate, args.seconds)

        clients.ask("latency")
        sent = asyncio.run(steady())
        report = settle(clients, sent * sockets_ok)
        lat = report["latencies"]

        window: dict[str, Any] = {}

        async def saturate() -> int:
            async with Publisher(kind, redis_url) as publisher:
                task = asyncio.create_task(publisher.saturate(args.seconds + 1))
                await asyncio.sleep(1)  # warm-up: backlog built, every socket busy
                window["cpu0"], window["t0"] = server.cpu(), time.time()
                window["cli0"] = sum(await asyncio.to_thread(clients.ask, "count"))
                await asyncio.sleep(args.seconds)
                window["report"] = await asyncio.to_thread(clients.report)
                window["cpu1"], window["t1"] = server.cpu(), time.time()
                return await task

        asyncio.run(saturate())
        flat = window["report"]
        elapsed = window["t1"] - window["t0"]
        result = {
            "server": kind,
            "sockets": sockets,
            "redis_connections": connections,
            "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
            "p99_ms": percentile(lat, 0.99) * 1000,
            "refused": ready["refused"],
            "refused_error": ready["error"],
            "steady_lost": 1 - report["received"] / max(1, sent * sockets_ok),
            "deliveries_per_s": flat["received"] / elapsed,
            "server_cpu": (window["cpu1"] - window["cpu0"]) / elapsed,
            "client_cpu": (flat["cpu"] - window["cli0"]) / elapsed,
            "closed": sum(flat["closed"].values()),
            "closed_codes": flat["closed"],
        }
        clients.stop()
        clients = None
        text = server.stop()
        # The relay logs each lost Pub/Sub connection (the demo logs redis_broker at INFO).
        result["hub_reconnects"] = text.count("Relay hub reconnected") if kind in RELAYS else "-"
        return result
    finally:
        if clients is not None:
            clients.stop()
        server.stop()


def run_rss(kind: str, steps: list[int], args: argparse.Namespace, env: dict[str, str],
            cookie: str, redis_url: str) -> dict[str, Any]:  # fmt: skip
    """Open ``steps`` sockets on one server process and return its memory at each step."""
    server = Server(kind, env)
    clients = None
    warm = 10
    try:
        clients = Clients(args.client_procs, server.port, server.path, cookie, True, args.deflate)
        result: dict[str, Any] = {"server": kind, "start": server.rss(), "steps": {}}
        fds = server.fds()
        ready = clients.open(warm)  # imports, the hub and its connections: paid once
        result["warm"] = server.rss()
        refused = ready["refused"]
        for n in steps:
            ready = clients.open(n - clients.sockets - refused)
            refused += ready["refused"]
            time.sleep(0.5)
            result["steps"][n] = server.rss()
        result["refused"], result["refused_error"] = refused, ready["error"]

        async def fan_out() -> int:
            async with Publisher(kind, redis_url) as publisher:
                return await publisher.steady(1.0, 3)

        clients.ask("latency")
        sent = asyncio.run(fan_out())
        report = settle(clients, sent * clients.sockets, limit=60)
        result["delivered"] = report["received"] / max(1, sent * clients.sockets)
        result["p99_ms"] = percentile(report["latencies"], 0.99) * 1000
        result["full"] = server.rss()
        clients.ask("close")
        deadline = time.monotonic() + 60
        while server.fds() > fds + 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        result["after"] = server.rss()
        # CPython keeps freed memory for reuse: a second round of as many sockets must fit
        # in it. If it grows the process as much again, something leaked per socket.
        clients.sockets = 0
        ready = clients.open(max(steps))
        time.sleep(0.5)
        result["again"] = server.rss()
        result["refused"] += ready["refused"]
        result["refused_error"] = result["refused_error"] or ready["error"]
        return result
    finally:
        if clients is not None:
            clients.stop()
        server.stop()


# ----------------------------------------------------------------------------- report

MiB = 1024 * 1024


def print_results(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"steady rate {args.rate:g} msg/s, phases of {args.seconds:g} s, {os.cpu_count()} CPUs, "
        f"{args.client_procs} client processes"
    )
    header = (
        f"{'server':22} {'sockets':>7} {'redis conns':>11} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'lost@rate':>9} {'deliv/s':>9} {'srv cpu':>7} {'us/deliv':>8} {'cli cpu':>7} "
        f"{'closed':>6} {'refused':>7} {'hub reconn.':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['server']:22} {r['sockets']:>7} {r['redis_connections']:>11} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['steady_lost']:>9.1%} "
            f"{r['deliveries_per_s']:>9.0f} {r['server_cpu']:>7.0%} "
            f"{r['server_cpu'] / max(1, r['deliveries_per_s']) * 1e6:>8.1f} "
            f"{r['client_cpu']:>7.0%} {r['closed']:>6} {r['refused']:>7} {r['hub_reconnects']:>11}"
        )
    print(
        "lost@rate: steady-phase messages that never arrived. deliv/s: frames received per\n"
        "second while the publisher kept the server saturated. srv cpu / cli cpu: the server\n"
        "process's CPU and all client processes' CPU over that window (100 % = one core).\n"
        "us/deliv: server CPU per delivered frame (kernel time included), which other load on\n"
        "the machine changes least.\n"
        "hub reconn.: times the relay's hub lost Redis in the run."
    )
    print()
    for sockets in args.sockets:
        by = {r["server"]: r for r in results if r["sockets"] == sockets}
        for relay in RELAYS:
            if relay not in by:
                continue
            r = by[relay]
            for peer in (BARE, *PEERS):
                if peer in by:
                    p = by[peer]
                    cost = r["server_cpu"] / max(1, r["deliveries_per_s"])
                    peer_cost = p["server_cpu"] / max(1, p["deliveries_per_s"])
                    print(
                        f"{sockets} sockets: {relay} / {peer}: deliveries/s x"
                        f"{r['deliveries_per_s'] / max(1, p['deliveries_per_s']):.2f}, "
                        f"CPU per delivery x{cost / peer_cost:.2f}, "
                        f"p99 x{r['p99_ms'] / p['p99_ms']:.2f}"
                    )


def print_rss(results: list[dict[str, Any]]) -> None:
    print()
    print("Memory of one server process (RSS), 10 sockets first to pay one-time costs:")
    for r in results:
        steps = r["steps"]
        print(
            f"  {r['server']}: start {r['start'] / MiB:.1f} MiB, 10 sockets {r['warm'] / MiB:.1f} "
            f"MiB; refused {r['refused']} {r['refused_error']}; one message to all: "
            f"{r['delivered']:.1%} delivered, p99 {r['p99_ms']:.0f} ms"
        )
        previous_n, previous = 10, r["warm"]
        for n, rss in steps.items():
            per = (rss - r["warm"]) / (n - 10)
            step = (rss - previous) / (n - previous_n)
            print(
                f"    {n:>5} sockets: {rss / MiB:7.1f} MiB, {per / 1024:5.1f} KiB per socket "
                f"(this step: {step / 1024:5.1f} KiB per socket)"
            )
            previous_n, previous = n, rss
        print(
            f"    after closing all: {r['after'] / MiB:.1f} MiB; {max(steps)} sockets again: "
            f"{r['again'] / MiB:.1f} MiB ({(r['again'] - r['full']) / MiB:+.1f} MiB)"
        )


def main() -> int:
    """Run every server at every socket count, then the memory runs; print figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s phases, relays and bare only")
    parser.add_argument("--sockets", type=int, nargs="*", default=[500])
    parser.add_argument("--rate", type=float, default=10.0, help="steady messages per second")
    parser.add_argument("--servers", nargs="*", choices=SERVERS, help="default: all")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument("--rss-sockets", type=int, nargs="*", default=[1000, 2500, 5000])
    parser.add_argument("--rss-servers", nargs="*", choices=SERVERS, default=[*RELAYS, BARE])
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        loop = new_loop()
        loop.run_until_complete(serve_bare(args.serve_bare, os.environ["REDIS_URL"]))
        return 0
    args.seconds = 4.0 if args.quick else 10.0
    if args.servers is None:
        args.servers = [*RELAYS, BARE] if args.quick else list(SERVERS)
    raise_fd_limit()  # the servers inherit it
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
    results, rss = [], []
    try:
        cookie = prepare_database(env)
        for sockets in args.sockets:
            for kind in args.servers:
                print(f"... {kind}, {sockets} sockets", flush=True)
                try:
                    result = run_one(kind, sockets, args, env, cookie, redis_url)
                except Exception as exc:  # a peer that cannot cope is a result too
                    print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                results.append(result)
                print("    " + json.dumps(result), flush=True)
        for kind in args.rss_servers if args.rss_sockets else []:
            print(f"... {kind}, memory up to {max(args.rss_sockets)} sockets", flush=True)
            try:
                rss.append(run_rss(kind, sorted(args.rss_sockets), args, env, cookie, redis_url))
            except Exception as exc:
                print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if redis_server is not None:
            redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print_results(results, args)
    if rss:
        print_rss(rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
