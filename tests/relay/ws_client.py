"""A minimal asyncio WebSocket client (RFC 6455) for end-to-end tests.

Why hand-written: the venv has no client library the test process can use. autobahn's
asyncio flavour refuses to load once daphne (an installed app) has chosen Twisted for
txaio, and ``websockets``/``aiohttp``/``wsproto`` are not installed. Text frames, close
and ping are all the relay needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from typing import Any
from urllib.parse import urlsplit

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class HandshakeRefused(ConnectionError):
    """The server answered the upgrade request with something else than 101."""


def _frame(opcode: int, payload: bytes) -> bytes:
    """Return one masked, final client frame."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Socket:
    """One open WebSocket: ``send``, ``receive``, ``subscribe``, ``close``; ``closed`` is
    a future of the server's close code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                first, second = await self.reader.readexactly(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(length)
                if opcode == TEXT:
                    self.frames.put_nowait(json.loads(payload))
                elif opcode == PING:
                    self.writer.write(_frame(PONG, payload))
                elif opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    with contextlib.suppress(ConnectionError):
                        self.writer.write(_frame(CLOSE, payload[:2]))
                    self._closed(code)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self._closed(None)
        finally:
            self.writer.close()

    def _closed(self, code: int | None) -> None:
        if not self.closed.done():
            self.closed.set_result(code)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one JSON frame."""
        self.writer.write(_frame(TEXT, json.dumps(frame).encode()))
        await self.writer.drain()

    async def receive(self, within: float = 5) -> dict[str, Any]:
        """Return the next frame, decoded."""
        return await asyncio.wait_for(self.frames.get(), within)

    async def subscribe(self, channel: str, **extra: Any) -> None:
        """Subscribe and wait for the ``subscribed`` frame."""
        await self.send({"action": "subscribe", "channel": channel, **extra})
        frame = await self.receive()
        assert frame == {"type": "subscribed", "channel": channel}, frame

    async def close(self) -> None:
        """Close the socket and wait until the server has closed it too."""
        if not self.closed.done():
            with contextlib.suppress(ConnectionError):
                self.writer.write(_frame(CLOSE, struct.pack("!H", 1000)))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        finally:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def open_socket(url: str, *, cookie: str | None = None, origin: str | None = None) -> Socket:
    """Open a WebSocket to ``url`` (``ws://host:port/path``), sending a session cookie."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin or f'http://{host}:{port}'}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        writer.close()
        raise HandshakeRefused(status.decode(errors="replace"))
    return Socket(reader, writer)
