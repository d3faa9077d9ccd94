"""Helpers of the relay tests: send, receive and subscribe on a test socket."""

from __future__ import annotations

import json
from typing import Any

from channels.testing import WebsocketCommunicator


async def send(socket: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    """Send one JSON frame."""
    await socket.send_to(text_data=json.dumps(frame))


async def receive(socket: WebsocketCommunicator, within: float = 5) -> dict[str, Any]:
    """Return the next frame, decoded."""
    return json.loads(await socket.receive_from(timeout=within))  # type: ignore[no-any-return]


async def subscribe(socket: WebsocketCommunicator, channel: str, **extra: Any) -> dict[str, Any]:
    """Subscribe and return the ``subscribed`` frame (Redis has confirmed by then)."""
    await send(socket, {"action": "subscribe", "channel": channel, **extra})
    frame = await receive(socket)
    assert frame == {"type": "subscribed", "channel": channel}, frame
    return frame
