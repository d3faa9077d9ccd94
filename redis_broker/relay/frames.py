"""The frames the relay sends to browsers, built in one place.

Every server-to-browser frame is one JSON text: ``message`` (a Pub/Sub message or a
replayed durable entry), the payload-less control frames (``subscribed``,
``unsubscribed``, ``gap``) and ``error`` with its ``code``. The README's frame table
documents them; the browser client (``static/redis_broker/broker.js``) reads them.
"""

from __future__ import annotations

from typing import Any

from .. import wire

BAD_REQUEST = "bad_request"
FORBIDDEN = "forbidden"
TOO_LARGE = "too_large"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"


def message_frame(channel: str, message: wire.DecodedMessage) -> str:
    """Return the JSON text of the ``message`` frame the browser receives."""
    frame: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "data": message.data,
        "event_id": message.event_id,
    }
    if message.type:
        frame["event_type"] = message.type
    if message.id is not None:
        frame["id"] = message.id
    return wire.dumps(frame, what="frame", envelope=1)


def control_frame(kind: str, channel: str, **extra: Any) -> str:
    """Return the JSON text of a frame without payload (``subscribed``, ``gap``...)."""
    return wire.dumps({"type": kind, "channel": channel, **extra}, what="frame")


def error_frame(code: str, channel: Any = None, detail: str = "") -> str:
    """Return the JSON text of an ``error`` frame (``channel`` only when it is a name)."""
    frame: dict[str, Any] = {"type": "error", "code": code, "channel": None}
    if isinstance(channel, str) and len(channel) <= 200:
        frame["channel"] = channel
    if detail:
        frame["detail"] = detail
    return wire.dumps(frame, what="frame")
