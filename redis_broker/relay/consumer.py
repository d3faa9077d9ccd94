"""The WebSocket consumer of the browser relay (being built in issue 5)."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class BrokerSocketConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Relay Pub/Sub channels to one browser tab; closes every socket until issue 5 lands."""

    async def connect(self) -> None:
        await self.close()
