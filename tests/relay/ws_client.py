"""A small test-side wrapper over the ``websockets`` client for end-to-end tests.

It keeps the tests short: JSON frames in and out, a ``closed`` future holding the
server's close code, and ``subscribe`` that waits for the server's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


class HandshakeRefused(ConnectionError):
    """The server answered the upgrade request with something other than 101."""


class Socket:
    """One open WebSocket: ``send``, ``receive``, ``subscribe``, ``close``; ``closed`` is
    a future of the server's close code."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                self.frames.put_nowait(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(self.connection.close_code)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one JSON frame."""
        await self.connection.send(json.dumps(frame))

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
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(self.connection.close(), 5)
        await asyncio.wait_for(asyncio.shield(self.closed), 5)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def open_socket(url: str, *, cookie: str | None = None, origin: str | None = None) -> Socket:
    """Open a WebSocket to ``url`` (``ws://host:port/path``), sending a session cookie."""
    host = url.split("//", 1)[1].split("/", 1)[0]
    headers = {"Cookie": cookie} if cookie else None
    try:
        connection = await connect(
            url,
            origin=origin or f"http://{host}",  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=10,
            max_size=None,
        )
    except InvalidStatus as exc:
        raise HandshakeRefused(str(exc)) from exc
    return Socket(connection)
