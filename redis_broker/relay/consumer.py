"""The WebSocket consumer of the browser relay: it translates frames and nothing more.

Policy lives in the ``AUTHORIZER``; Pub/Sub lives in :mod:`redis_broker.relay.hub`;
Origin and session checks are ASGI wrappers in the project's ``asgi.py``.

Client frames (JSON text)::

    {"action": "subscribe", "channel": "chat.lobby"}
    {"action": "subscribe", "channel": "user.42", "since": "1700000000000-0"}
    {"action": "unsubscribe", "channel": "chat.lobby"}
    {"action": "publish", "channel": "chat.lobby", "data": {...}}

Server frames: ``subscribed``, ``unsubscribed``, ``message``, ``gap`` and ``error`` (with
``code`` one of ``bad_request``, ``forbidden``, ``too_large``, ``rate_limited``,
``unavailable``, and a ``detail`` in words). An error frame never closes the socket.
A browser's publish is broadcast with the sender stamped by the server: the event type
``browser.user.<pk>`` and the headers ``sender_id``/``sender_name``, which message frames
show as ``sender``; the page chooses only ``data``. Frames are parsed by
``wire.loads``, so no frame can raise anything but a ``bad_request``. Under daphne, frames
refused before they reach the consumer close with 1009 (too big) or 1007 (not UTF-8):
see :func:`close_bad_frames_with_a_code`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .. import tracing, wire
from ..authorization import PUBLISH, SUBSCRIBE, authorize
from ..conf import WebsocketSettings, get_config
from ..exceptions import BrokerUnavailable, MalformedEntry
from ..naming import is_valid_channel
from ..publishing import abroadcast
from .frames import (
    BAD_REQUEST,
    FORBIDDEN,
    RATE_LIMITED,
    TOO_LARGE,
    UNAVAILABLE,
    control_frame,
    error_frame,
)
from .hub import Subscription, get_hub

logger = logging.getLogger("redis_broker.relay")

#: Close code when a socket's send queue overflowed (the browser cannot keep up).
CLOSE_TOO_SLOW = 4008
#: Close code when the user's access was revoked (logout, ``disconnect_user``).
CLOSE_REVOKED = 4001
#: Channels one socket may hold at once; each costs the hub a Redis subscription.
MAX_SUBSCRIPTIONS = 100


def user_group(pk: Any) -> str:
    """Return the Channels group that holds every socket of the user with ``pk``."""
    return f"redis_broker.user.{pk}"


def close_bad_frames_with_a_code() -> None:
    """Make daphne answer a frame it refuses with a close code instead of dropping TCP.

    Under daphne, autobahn refuses a frame over daphne's size limit (1 MiB unless
    ``--websocket-max-message-size`` says otherwise) and a text frame that is not UTF-8
    before any application code sees it, then "fails" the connection. With its
    ``failByDrop`` option, which daphne leaves at the default ``True`` and exposes
    nowhere, failing means cutting TCP: the browser sees code 1006 and no reason.
    Without it, autobahn sends the close code the RFC names (1009 "message too big",
    1007 "invalid payload data") and closes cleanly. autobahn reads its options from the
    protocol class when they are set there, so this sets that one option on daphne's
    protocol class, once, and only in a process where daphne has already imported it
    (``daphne`` and daphne's ``runserver`` import it before they load the project's ASGI
    application, which calls this through :meth:`BrokerSocketConsumer.as_asgi`). Other
    ASGI servers are left alone. Idempotent.
    """
    ws_protocol = sys.modules.get("daphne.ws_protocol")
    protocol = getattr(ws_protocol, "WebSocketProtocol", None)
    if protocol is not None and "failByDrop" not in vars(protocol):
        protocol.failByDrop = False


def frame_send(send: Callable[[dict[str, Any]], Awaitable[None]]) -> Any:
    """Return the ASGI ``send`` under Channels' session middleware, for message frames.

    ``SessionMiddleware`` wraps every ``send`` of the socket to save the session and set
    its cookie on an ``http.response.start``, and a ``websocket.send`` is never one: for a
    frame the wrapper only reads the session's state and passes it on. That cost a quarter
    of the server's CPU per delivered frame under uvicorn (bench/relay.py: 9.5 -> 6.9 us).
    Frames skip it; accept and close still go through the whole stack, and any other
    wrapper is kept.
    """
    from channels.sessions import InstanceSessionWrapper

    owner = getattr(send, "__self__", None)
    while isinstance(owner, InstanceSessionWrapper):
        send = owner.real_send
        owner = getattr(send, "__self__", None)
    return send


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log a socket task that died of anything but cancellation (never silently)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("A relay socket task failed", exc_info=task.exception())


class _TokenBucket:
    """Allow ``rate`` events per second on average, in bursts of at most ``rate``."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class BrokerSocketConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Relay Pub/Sub channels to one browser tab, and the tab's publishes to Redis.

    Frames to the browser go through a bounded queue drained by one sender task, so
    the hub never waits on a slow socket; a socket whose queue overflows is closed
    with code 4008.
    """

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Return the relay's ASGI application; see :func:`close_bad_frames_with_a_code`."""
        close_bad_frames_with_a_code()
        return super().as_asgi(**initkwargs)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        """Join the user's revocation group before accepting (see ``disconnect_user``)."""
        user = self.scope.get("user")
        if (
            self.channel_layer is not None
            and user is not None
            and getattr(user, "is_authenticated", False)
        ):
            self.groups = [user_group(user.pk)]
        await super().websocket_connect(message)

    async def connect(self) -> None:
        """Accept the socket and start its sender task."""
        self.settings: WebsocketSettings = get_config().websocket
        self.subscriptions: dict[str, Subscription] = {}
        # A deque and a future instead of an asyncio.Queue: offer() runs once per socket
        # and message, and this saves ~6 % of the CPU per frame (bench/relay.py).
        self.queue: deque[str] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.bucket = _TokenBucket(self.settings.publish_rate)
        self.closing = False
        # Who publishes from this socket, decided once by the server (never by frames).
        self.publish_type = self.publisher_type()
        self.publish_headers = self.publisher_headers()
        self.hub = get_hub()
        self.hub.register(self, self.scope.get("user"))
        await self.accept()
        self.sender = asyncio.get_running_loop().create_task(self._send_frames())
        self.sender.add_done_callback(_log_failure)

    async def disconnect(self, code: int) -> None:
        """Release the socket's subscriptions and stop its sender."""
        self.closing = True
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.unregister(self)
        sender = getattr(self, "sender", None)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        subscriptions = getattr(self, "subscriptions", {})
        if subscriptions:
            await self.hub.unsubscribe_all(subscriptions.values())
            subscriptions.clear()

    # ------------------------------------------------------------------ frames out

    def offer(self, text: str) -> bool:
        """Queue one frame for the browser; close the socket when it cannot keep up."""
        if self.closing:
            return False
        if len(self.queue) >= self.settings.send_queue_size:
            self.overflow()
            return False
        self.queue.append(text)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def overflow(self) -> None:
        """Close this socket with 4008: it fell ``SEND_QUEUE_SIZE`` frames behind."""
        if self.closing:
            return
        self.closing = True
        self.hub.stats.overflows += 1
        logger.warning(
            "Closing a WebSocket that fell %d frames behind (code %d)",
            self.settings.send_queue_size,
            CLOSE_TOO_SLOW,
        )
        self.closer = asyncio.get_running_loop().create_task(self._close_now(CLOSE_TOO_SLOW))
        self.closer.add_done_callback(_log_failure)

    async def _close_now(self, code: int) -> None:
        await self.hub.unsubscribe_all(self.subscriptions.values())
        self.subscriptions.clear()
        await self.close(code=code)

    async def _send_frames(self) -> None:
        # The ASGI send directly: this is the hot path of every delivery, and the generic
        # send() only adds two coroutine layers around the same ASGI message.
        queue, send = self.queue, frame_send(self.base_send)
        loop = asyncio.get_running_loop()
        while True:
            while queue:
                await send({"type": "websocket.send", "text": queue.popleft()})
            self.waiter = loop.create_future()
            await self.waiter

    def error(self, code: str, channel: Any = None, *, detail: str) -> None:
        """Queue an error frame saying what went wrong; the socket stays open.

        Counted by code in the hub's stats, which the process's relay status reports.
        """
        self.hub.count_error(code)
        self.offer(error_frame(code, channel, detail))

    # ------------------------------------------------------------------ frames in

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Check size and JSON, then hand the frame to its action.

        Frames are parsed with the wire format's reader, so a frame nested deeper than
        ``wire.MAX_DEPTH`` (around its ``data``), with a number Python will not convert or
        with a lone surrogate gets ``bad_request`` like any other non-JSON frame.
        """
        if text_data is None:
            self.error(BAD_REQUEST, detail="frames must be JSON text")
            return
        limit = self.settings.max_message_bytes
        if len(text_data) > limit or len(text_data.encode("utf-8", "surrogatepass")) > limit:
            self.error(
                TOO_LARGE, detail=f"a frame may have at most {limit} bytes; this one was dropped"
            )
            return
        try:
            frame = wire.loads(text_data, what="frame", envelope=1)
        except MalformedEntry as exc:
            self.error(BAD_REQUEST, detail=str(exc)[:200])
            return
        await self.receive_json(frame)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Dispatch a decoded frame on its ``action``."""
        if not isinstance(content, dict):
            self.error(BAD_REQUEST, detail="the frame must be a JSON object")
            return
        action = content.get("action")
        channel = content.get("channel")
        handler = {
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "publish": self.publish,
        }.get(action if isinstance(action, str) else "")
        if handler is None:
            self.error(BAD_REQUEST, channel, detail=f"unknown action {action!r}"[:200])
            return
        if not is_valid_channel(channel):
            self.error(
                BAD_REQUEST,
                channel,
                detail="a channel name is 1-200 characters of A-Z a-z 0-9 _ . : - (no wildcards)",
            )
            return
        await handler(cast(str, channel), content)

    async def subscribe(self, channel: str, content: dict[str, Any]) -> None:
        """Subscribe to ``channel`` (replaying from ``since`` on durable channels)."""
        since = content.get("since")
        if since is not None and not wire.is_entry_id(since):
            self.error(BAD_REQUEST, channel, detail="since must be a stream entry id")
            return
        if not await authorize(self.scope.get("user"), channel, SUBSCRIBE):
            self.error(FORBIDDEN, channel, detail="you may not subscribe to this channel")
            return
        if channel in self.subscriptions:
            self.offer(control_frame("subscribed", channel))
            return
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            self.error(
                BAD_REQUEST, channel, detail=f"a socket holds at most {MAX_SUBSCRIPTIONS} channels"
            )
            return
        if not self.closing:
            self.subscriptions[channel] = await self.hub.subscribe(self, channel, since)

    async def unsubscribe(self, channel: str, content: dict[str, Any]) -> None:
        """Stop receiving ``channel``."""
        sub = self.subscriptions.pop(channel, None)
        if sub is not None:
            await self.hub.unsubscribe(sub)
        self.offer(control_frame("unsubscribed", channel))

    async def publish(self, channel: str, content: dict[str, Any]) -> None:
        """Broadcast ``data`` on ``channel`` if the user may and the rate limit allows."""
        if not self.bucket.take():
            rate = self.settings.publish_rate
            self.error(
                RATE_LIMITED,
                channel,
                detail=f"at most {rate} publishes per second; this one was dropped",
            )
            return
        if not await authorize(self.scope.get("user"), channel, PUBLISH):
            self.error(FORBIDDEN, channel, detail="you may not publish to this channel")
            return
        try:
            # A browser's publish starts a trace (no span is current in a socket's frame
            # handler); abroadcast writes this span's context into the message.
            with tracing.producing("broadcast", channel, root=True):
                await abroadcast(
                    channel,
                    content.get("data"),
                    type=self.publish_type,
                    headers=self.publish_headers,
                )
        except BrokerUnavailable as exc:
            logger.warning("A browser publish on %r failed: %s", channel, exc)
            self.error(
                UNAVAILABLE, channel, detail="the broker is unavailable; this one was not sent"
            )

    def publisher_type(self) -> str:
        """Return the event type of this socket's publishes: who sent them, unforgeably.

        Receivers see it as ``event_type``: ``browser.user.<pk>`` or ``browser.anonymous``.
        The page chooses the data; only the server chooses this.
        """
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return f"browser.user.{user.pk}"
        return "browser.anonymous"

    def publisher_headers(self) -> dict[str, str] | None:
        """Return the headers of this socket's publishes: the logged-in sender, or None.

        Message frames show them as ``"sender": {"id": "<pk>", "name": "<username>"}``;
        an anonymous socket's publishes (when an ``AUTHORIZER`` allows them) carry none.
        """
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return {wire.SENDER_ID: str(user.pk), wire.SENDER_NAME: str(user.get_username())}
        return None

    # ------------------------------------------------------------------ control

    async def redis_broker_disconnect(self, event: dict[str, Any]) -> None:
        """Close this socket: the user's access was revoked (``disconnect_user``)."""
        if self.closing:
            return
        self.closing = True
        await self._close_now(CLOSE_REVOKED)
