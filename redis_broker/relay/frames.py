"""The frames the relay sends to browsers, built in one place.

Every server-to-browser frame is one JSON text: ``message`` (a Pub/Sub message or a
replayed durable entry), the payload-less control frames (``subscribed``,
``unsubscribed``, ``gap``) and ``error`` with its ``code`` and ``detail``. The README's
frame table documents them; the browser client (``static/redis_broker/broker.js``)
reads them.
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
    """Return the JSON text of the ``message`` frame the browser receives.

    Built once per message and process, whatever the number of sockets: ``sender`` and
    ``published_at`` cost two lookups. ``sender`` comes from the message's headers
    (``wire.SENDER_ID``, ``wire.SENDER_NAME``), which only server code can set: a
    browser's publish carries its user, stamped by the relay, and nothing the page chose.
    """
    frame: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "data": message.data,
        "event_id": message.event_id,
    }
    if message.type:
        frame["event_type"] = message.type
    if message.published_at:
        frame["published_at"] = message.published_at
    headers = message.headers
    if headers:
        sender_id = headers.get(wire.SENDER_ID)
        sender_name = headers.get(wire.SENDER_NAME)
        if sender_id is not None or sender_name is not None:
            frame["sender"] = {
                "id": None if sender_id is None else str(sender_id),
                "name": None if sender_name is None else str(sender_name),
            }
    if message.id is not None:
        frame["id"] = message.id
    return wire.dumps(frame, what="frame", envelope=1)


def control_frame(kind: str, channel: str, **extra: Any) -> str:
    """Return the JSON text of a frame without payload (``subscribed``, ``gap``...)."""
    return wire.dumps({"type": kind, "channel": channel, **extra}, what="frame")


def error_frame(code: str, channel: Any, detail: str) -> str:
    """Return the JSON text of an ``error`` frame (``channel`` only when it is a name).

    Every error frame says in ``detail`` what went wrong, in words a page can show.
    """
    frame: dict[str, Any] = {"type": "error", "code": code, "channel": None, "detail": detail}
    if isinstance(channel, str) and len(channel) <= 200:
        frame["channel"] = channel
    return wire.dumps(frame, what="frame")
