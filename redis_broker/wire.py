"""The wire format, encode and decode side by side.

A stream entry has the fields ``type``, ``data`` (JSON text), ``event_id`` (UUID4),
``published_at`` (ISO 8601 UTC) and, only when given, ``headers`` (JSON object text).
A Pub/Sub message is one JSON object ``{"type", "data", "event_id", "published_at"}``,
plus ``"id"`` (the stream entry id) on durable channels. Any language can read both
with a plain Redis client and a JSON parser. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from .exceptions import MalformedEntry

TYPE = "type"
DATA = "data"
EVENT_ID = "event_id"
PUBLISHED_AT = "published_at"
HEADERS = "headers"

# Dead-letter fields added next to the original ones (contract section 3).
ORIGINAL_STREAM = "original_stream"
ORIGINAL_ID = "original_id"
ERROR = "error"
DELIVERY_COUNT = "delivery_count"

_encoder = DjangoJSONEncoder(ensure_ascii=False, separators=(",", ":"))
# The C encoder that JSONEncoder.encode builds on every call, built once: events are
# encoded on hot paths (every model save), and this halves the cost of a small payload.
# Falls back to the pure-Python encoder where the C accelerator is missing.
_iterencode: Callable[[Any, int], Any] | None = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,  # markers: circular references end in RecursionError instead
        _encoder.default,
        json.encoder.encode_basestring,  # the C version where there is one
        _encoder.indent,
        ":",
        ",",
        _encoder.sort_keys,
        _encoder.skipkeys,
        _encoder.allow_nan,
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def dumps(value: Any, *, what: str = "payload") -> str:
    """Encode ``value`` as compact JSON with Django's encoder (dates, Decimals, UUIDs).

    Raises ``TypeError`` naming ``what`` when the value cannot be encoded, before anything
    reaches Redis.
    """
    try:
        if _iterencode is None:
            return _encoder.encode(value)
        if isinstance(value, str):
            return json.encoder.encode_basestring(value)
        return "".join(_iterencode(value, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"The {what} cannot be encoded as JSON: {exc}") from exc


_clock: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and a ``Z``.

    Formatted at most once per millisecond: a burst of events shares the text.
    """
    global _clock
    millis = time.time_ns() // 1_000_000
    if _clock[0] != millis:
        text = datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
        _clock = (millis, text.replace("+00:00", "Z"))
    return _clock[1]


class _EventIds(threading.local):
    """Event ids made ahead, per thread."""

    def __init__(self) -> None:
        self.ready: list[str] = []


_ids = _EventIds()


def _forget_ids() -> None:
    # A forked child must not hand out the ids its parent is about to hand out.
    global _ids
    _ids = _EventIds()


os.register_at_fork(after_in_child=_forget_ids)

# Building a uuid.UUID per event costs more than the rest of its envelope, and so does a
# getrandom() call per event. The same text comes from one block of random bytes per
# 128 ids, formatted in one loop, with the version and variant bits set as uuid4() does.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_IDS_PER_BLOCK = 128


def _make_ids() -> list[str]:
    h = os.urandom(16 * _IDS_PER_BLOCK).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * _IDS_PER_BLOCK, 32)
    ]


def new_event_id() -> str:
    """Return a fresh event id: random UUID4 text, as ``str(uuid.uuid4())`` gives."""
    ready = _ids.ready
    if not ready:
        ready = _ids.ready = _make_ids()
    return ready.pop()


def encode_entry(
    data: Any,
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    published_at: str | None = None,
) -> dict[str, str]:
    """Return the stream entry fields for one event."""
    if not isinstance(type, str):
        raise TypeError(f"The event type must be a str, not {type.__class__.__name__}.")
    fields = {
        TYPE: type,
        DATA: dumps(data),
        EVENT_ID: event_id or new_event_id(),
        PUBLISHED_AT: published_at or now_iso(),
    }
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError("headers must be a mapping of names to JSON-encodable values.")
        fields[HEADERS] = dumps(dict(headers), what="headers")
    return fields


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """A stream entry read back: the payload parsed, the other fields as text."""

    type: str
    data: Any
    event_id: str
    published_at: str
    headers: dict[str, Any]
    fields: dict[str, str]  # every field as text, including ones we do not know


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


_decode_json = json.JSONDecoder().decode


def fields_as_text(raw: Mapping[Any, Any]) -> dict[str, str]:
    """Return an entry's fields as text; raise ``MalformedEntry`` on invalid UTF-8."""
    try:
        # The common case, redis-py's bytes replies, without a per-value type check.
        return {k.decode(): v.decode() for k, v in raw.items()}
    except AttributeError:
        pass  # text or mixed replies: take the general path
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"the entry is not UTF-8 text: {exc}") from exc
    try:
        return {_text(k): _text(v) for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"the entry is not UTF-8 text: {exc}") from exc


def decode_entry(raw: Mapping[Any, Any]) -> DecodedEntry:
    """Parse an entry's fields (bytes or text); raise ``MalformedEntry`` when not ours.

    Entries from other producers need only ``data``; the other fields get defaults.
    """
    fields = fields_as_text(raw)
    text = fields.get(DATA)
    if text is None:
        raise MalformedEntry("the entry has no 'data' field")
    try:
        data = _decode_json(text)
    except ValueError as exc:
        raise MalformedEntry(f"the 'data' field is not JSON: {exc}") from exc
    headers: dict[str, Any] = {}
    if HEADERS in fields:
        try:
            headers = _decode_json(fields[HEADERS])
        except ValueError as exc:
            raise MalformedEntry(f"the 'headers' field is not JSON: {exc}") from exc
        if not isinstance(headers, dict):
            raise MalformedEntry("the 'headers' field is not a JSON object")
    return DecodedEntry(
        type=fields.get(TYPE, ""),
        data=data,
        event_id=fields.get(EVENT_ID, ""),
        published_at=fields.get(PUBLISHED_AT, ""),
        headers=headers,
        fields=fields,
    )


def dead_letter_fields(
    fields: Mapping[str, str],
    *,
    original_stream: str,
    original_id: str,
    error: str,
    delivery_count: int,
) -> dict[str, str]:
    """Return the dead-letter entry: the original fields plus where, why and how often."""
    result = dict(fields)
    result[ORIGINAL_STREAM] = original_stream
    result[ORIGINAL_ID] = original_id
    result[ERROR] = error[:4000]
    result[DELIVERY_COUNT] = str(delivery_count)
    return result


def requeue_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """Return a dead-lettered entry's original fields (same ``event_id``) for re-publishing."""
    dropped = {ORIGINAL_STREAM, ORIGINAL_ID, ERROR, DELIVERY_COUNT}
    return {k: v for k, v in fields.items() if k not in dropped}


def encode_message(
    data: Any,
    *,
    type: str = "",
    event_id: str | None = None,
    published_at: str | None = None,
    entry_id: str | None = None,
) -> str:
    """Return the Pub/Sub message text for one event."""
    message: dict[str, Any] = {
        TYPE: type,
        DATA: data,
        EVENT_ID: event_id or new_event_id(),
        PUBLISHED_AT: published_at or now_iso(),
    }
    if entry_id is not None:
        message["id"] = entry_id
    return dumps(message)


def durable_message_parts(fields: Mapping[str, str]) -> tuple[str, str]:
    """Return the Pub/Sub message for an encoded durable entry, split where its id goes.

    The entry id is only known once Redis has appended the entry, so the publishing
    script splices it in between the two halves: ``{..., "data": ..., "id": "<id>"}``.
    """
    head = dumps(
        {
            TYPE: fields[TYPE],
            EVENT_ID: fields[EVENT_ID],
            PUBLISHED_AT: fields[PUBLISHED_AT],
        }
    )
    return f'{head[:-1]},"{DATA}":{fields[DATA]},"id":"', '"}'


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A Pub/Sub message read back."""

    type: str
    data: Any
    event_id: str
    published_at: str
    id: str | None


def decode_message(raw: bytes | str) -> DecodedMessage:
    """Parse a Pub/Sub message; raise ``MalformedEntry`` when it is not ours.

    A message that is valid JSON but not our envelope (another publisher) is wrapped
    as the ``data`` of an untyped message, so relays still deliver it.
    """
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise MalformedEntry(f"the message is not JSON: {exc}") from exc
    if not isinstance(value, dict) or DATA not in value or EVENT_ID not in value:
        return DecodedMessage(type="", data=value, event_id="", published_at="", id=None)
    return DecodedMessage(
        type=str(value.get(TYPE, "")),
        data=value[DATA],
        event_id=str(value[EVENT_ID]),
        published_at=str(value.get(PUBLISHED_AT, "")),
        id=value.get("id"),
    )
