"""The wire format, encode and decode side by side.

A stream entry has the fields ``type``, ``data`` (JSON text), ``event_id`` (UUID4),
``published_at`` (ISO 8601 UTC) and, only when given, ``headers`` (JSON object text).
A Pub/Sub message is one JSON object ``{"type", "data", "event_id", "published_at"}``,
plus ``"headers"`` (an object) when given and ``"id"`` (the stream entry id) on durable
channels. Any language can read both
with a plain Redis client and a JSON parser. Nothing is ever pickled.

Trace context travels in ``headers`` as W3C Trace Context text: ``traceparent``
(``00-<trace id>-<span id>-<flags>``) and, when the tracer has one, ``tracestate``.
Publishing writes them only while an OpenTelemetry span is current (``tracing.py``), so
without tracing the wire is unchanged; consumers continue the trace they name, and an
``output=`` entry or a reply carries the context of the handler call that made it.

Payloads nest at most :data:`MAX_DEPTH` arrays and objects deep: :func:`dumps` refuses
deeper ones before anything is sent, and every reader (stream consumers, the relay's
hub and sockets, the admin inspector) parses JSON with :func:`loads`, which refuses
them too, so no input can make a reader recurse, and ``loads`` raises nothing but
``MalformedEntry``.

A dead-letter entry is the original entry's fields plus ``original_stream``,
``original_id`` (``""`` for a list item or a channel message), ``original_kind``
(``"channel"`` for a channel message, absent otherwise), ``error`` (``"Type: message"``,
or ``"validation: $.field: why"`` for a payload its handler's declared type refused; at
most 4,000 characters), ``delivery_count`` and, when an exception caused it, ``traceback``: the
formatted exception with its traceback and chained causes, cut to its last
:data:`MAX_TRACEBACK_CHARS` characters (the innermost frames and the message are at the
end). Readers must accept dead letters without ``traceback`` (written before it existed,
or for a cause that is no exception, such as too many deliveries).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, cast

from django.core.serializers.json import DjangoJSONEncoder

from .exceptions import MalformedEntry
from .payloads import to_builtins

TYPE = "type"
DATA = "data"
EVENT_ID = "event_id"
PUBLISHED_AT = "published_at"
HEADERS = "headers"

# The header of an ``output=`` entry naming the event it was made from (contract section 8).
INPUT_EVENT_ID = "input_event_id"

# The headers naming who published a live message: the relay sets them on every publish
# of a logged-in browser (the user's pk as text, and ``get_username()``), and trusted
# server code may set them too. The relay's message frames show them as ``sender``.
SENDER_ID = "sender_id"
SENDER_NAME = "sender_name"

# The W3C Trace Context headers (https://www.w3.org/TR/trace-context/): written and read by
# ``tracing.py`` through OpenTelemetry's propagator, never by hand.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Dead-letter fields added next to the original ones (contract section 3).
ORIGINAL_STREAM = "original_stream"
ORIGINAL_ID = "original_id"
#: "channel" on a channel consumer's dead letter (a Pub/Sub message: no id, no key to
#: append to; a requeue publishes it again); absent for streams and lists.
ORIGINAL_KIND = "original_kind"
ERROR = "error"
DELIVERY_COUNT = "delivery_count"
TRACEBACK = "traceback"
#: Longest ``traceback`` field of a dead letter; a longer one keeps its end.
MAX_TRACEBACK_CHARS = 4096

#: The deepest nesting of arrays and objects a payload may have (``[[1]]`` is 2 deep).
#: Python's JSON parser recurses once per level and dies with RecursionError near a
#: thousand, wherever the stack already is; a bounded depth is what makes decoding safe.
#: 100 and not serde_json's 128: serde_json refuses a 128th level, and our envelopes (a
#: Pub/Sub message, a browser frame) add one, so 100 keeps every document we write
#: readable by strict parsers in other languages, with room to spare for the inspector's
#: indented re-encoding. Real payloads rarely nest past ten.
MAX_DEPTH = 100


class _Encoder(DjangoJSONEncoder):
    """Django's encoder, plus typed payloads: dataclasses and pydantic models."""

    def default(self, o: Any) -> Any:
        """Return ``o`` as JSON-ready values, or raise ``TypeError``.

        Django's types first: model events carry datetimes on every save, and a typed
        payload is tried only when Django refuses (bench/model_events.py).
        """
        try:
            return super().default(o)
        except TypeError:
            return to_builtins(o)  # a dataclass or pydantic model; else TypeError


# allow_nan=False: NaN and Infinity are not JSON (RFC 8259); JSON.parse and most other
# languages' parsers refuse them, so publishing does too, and readers treat them as malformed.
_encoder = _Encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# The C encoder that JSONEncoder.encode builds on every call, built once: events are
# encoded on hot paths (every model save), and this halves the cost of a small payload
# (bench/publish.py, bench/model_events.py).
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


def dumps(value: Any, *, what: str = "payload", envelope: int = 0) -> str:
    """Encode ``value`` as compact JSON with Django's encoder (dates, Decimals, UUIDs).

    Raises ``TypeError`` naming ``what`` when the value cannot be encoded or nests deeper
    than :data:`MAX_DEPTH` (plus ``envelope`` levels of our own around the payload),
    before anything reaches Redis: publishing refuses what its consumers could not decode.
    """
    try:
        if _iterencode is None:
            text = _encoder.encode(value)
        elif isinstance(value, str):
            return json.encoder.encode_basestring(value)
        else:
            text = "".join(_iterencode(value, 0))
    except RecursionError:
        raise TypeError(_too_deep_message(what)) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"The {what} cannot be encoded as JSON: {exc}") from exc
    limit = MAX_DEPTH + envelope
    if len(text) > 2 * limit + 1 and _too_deep(text, limit):  # shorter: cannot be deeper
        raise TypeError(_too_deep_message(what))
    return text


def _too_deep_message(what: str) -> str:
    return (
        f"The {what} cannot be sent: nested deeper than {MAX_DEPTH} levels; "
        "consumers could not decode it."
    )


# The depth of a JSON text is measured on its skeleton: the bytes left once escapes and
# everything but quotes and brackets are deleted, "{}" read as "[]". Quotes go in pairs;
# when every pair is adjacent, no string held a bracket and the quotes are deleted, else
# the text between them is. Each pass of ``replace(b"[]", b"")`` then removes exactly one
# level. All of it runs at C speed; a few passes clear real payloads, and hostile ones
# (many deep chains) finish with one ``accumulate`` over what is left, so the cost stays
# linear. bench/publish.py and bench/consume.py use payloads that never get this far.
_SKELETON_TABLE = bytes.maketrans(b"{}", b"[]")
_SKELETON_DELETE = bytes(c for c in range(256) if c not in b'"[]{}')
_STEP = [0] * 256
_STEP[ord("[")] = 1
_STEP[ord("]")] = -1
_QUICK_PASSES = 4


def json_depth(text: str) -> int:
    """Return how deeply arrays and objects nest in JSON ``text`` (``[[1]]`` is 2).

    Brackets inside strings do not count. On invalid JSON the result is only an estimate
    (unclosed brackets count), which is all a reader about to reject it needs.
    """
    data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        # Escaped backslashes first, pairing from the left as a JSON parser does, then
        # escaped quotes; the other escapes are deleted with the skeleton's letters.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(_SKELETON_TABLE, _SKELETON_DELETE)
    if b'"' in skeleton:
        if 2 * skeleton.count(b'""') == skeleton.count(b'"'):
            skeleton = skeleton.translate(None, b'"')
        else:
            skeleton = b"".join(skeleton.split(b'"')[::2])
    levels = 0
    while skeleton and levels < _QUICK_PASSES:
        shorter = skeleton.replace(b"[]", b"")
        if len(shorter) == len(skeleton):
            break  # brackets that do not match: not JSON
        skeleton = shorter
        levels += 1
    return levels + max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)


def _too_deep(text: str, limit: int) -> bool:
    # Callers first skip texts of at most 2 * limit + 1 characters, which cannot nest
    # deeper (and leave the parser little to recurse on if they are not JSON): that
    # covers bench/publish.py's payload at the cost of a len(). Nesting never exceeds the
    # number of opening brackets either, so two counts clear most longer payloads, and
    # only those with many brackets pay for json_depth.
    return text.count("[") + text.count("{") > limit and json_depth(text) > limit


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_decode_json = _json_decoder.decode
# The C scanner that ``decode`` reaches through two Python frames and two regex matches
# for whitespace: a document that starts and ends with its value (all we write) is
# parsed by it directly, anything else by ``decode`` (bench/consume.py: 0.5 us an entry).
_scan_json: Callable[[str, int], tuple[Any, int]] = _json_decoder.scan_once  # type: ignore[attr-defined]
# Only a payload holding a \uD800-\uDFFF escape can decode to a lone UTF-16 surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(raw: str | bytes, *, what: str = "payload", envelope: int = 0) -> Any:
    """Parse JSON text (bytes must be UTF-8); raise ``MalformedEntry`` and nothing else.

    The one JSON reader of the app: stream entries, Pub/Sub messages, browser frames and
    the inspector all parse with it. Refused, each with a reason naming ``what``: bytes
    that are not UTF-8, text that is not JSON, nesting deeper than :data:`MAX_DEPTH`
    (plus ``envelope`` levels around the payload), integers longer than Python converts
    (``sys.get_int_max_str_digits()``) and strings holding a lone surrogate (``"\\ud800"``),
    which no UTF-8 page, socket or Redis command could carry on.
    """
    try:
        text = raw if isinstance(raw, str) else raw.decode()
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"the {what} is not UTF-8 text: {exc}") from exc
    limit = MAX_DEPTH + envelope
    if len(text) > 2 * limit + 1 and _too_deep(text, limit):
        raise MalformedEntry(f"the {what} is nested deeper than {MAX_DEPTH} levels")
    try:
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:  # leading whitespace, or no value at all
            end = -1
        if end != len(text):  # trailing whitespace, extra data: decode's verdict
            value = _decode_json(text)
    except ValueError as exc:  # UnicodeDecodeError and the int digits limit are too
        raise MalformedEntry(f"the {what} is not JSON: {exc}") from exc
    except RecursionError as exc:  # within MAX_DEPTH, but on a thread's already deep stack
        raise MalformedEntry(f"the {what} nests too deeply for this thread's stack") from exc
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        try:
            dumps(value, envelope=envelope).encode()
        except (TypeError, UnicodeEncodeError) as exc:
            raise MalformedEntry(f"the {what} is not valid Unicode text: {exc}") from exc
    return value


_clock: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and a ``Z``.

    Formatted at most once per millisecond: a burst of events shares the text (measured
    by bench/model_events.py: a batch of saves formats the time once).
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
# 128 ids, formatted in one loop, with the version and variant bits set as uuid4() does
# (bench/publish.py: publish_many's per-event cost).
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


#: A stream entry id as Redis writes it (``<ms>-<seq>``), or its bare ``<ms>`` form.
ENTRY_ID_RE = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")


def is_entry_id(value: object) -> bool:
    """Return True for a stream entry id (``1700000000000-0``) or its ``<ms>`` form."""
    return isinstance(value, str) and ENTRY_ID_RE.fullmatch(value) is not None


def entry_id_key(entry_id: str | bytes) -> tuple[int, int]:
    """Return a stream entry id as a tuple that sorts like Redis sorts ids."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry_id_ms(entry_id: str) -> int:
    """Return the millisecond timestamp part of a stream entry id."""
    return entry_id_key(entry_id)[0]


def reply_text(value: Any, errors: str = "strict") -> str:
    """Return a Redis reply value (bytes or text) as text; ``None`` is ``""``.

    ``errors="replace"`` for display and dead letters, where invalid UTF-8 must not raise.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", errors)
    return "" if value is None else str(value)


def _field_pairs(raw: Mapping[Any, Any] | Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    if type(raw) is list:
        values = iter(raw)
        return zip(values, values, strict=False)
    return cast(Mapping[Any, Any], raw).items()


def fields_as_text(raw: Mapping[Any, Any] | Sequence[Any]) -> dict[str, str]:
    """Return an entry's fields as text; raise ``MalformedEntry`` on invalid UTF-8.

    ``raw`` is a mapping, or the flat ``[field, value, ...]`` list of a raw reply
    (the stream consumers' own reads skip redis-py's dict per entry: bench/consume.py).
    """
    try:
        # The common case, redis-py's bytes replies, without a per-value type check.
        return {k.decode(): v.decode() for k, v in _field_pairs(raw)}
    except AttributeError:
        pass  # text or mixed replies: take the general path
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"the entry is not UTF-8 text: {exc}") from exc
    try:
        return {reply_text(k): reply_text(v) for k, v in _field_pairs(raw)}
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"the entry is not UTF-8 text: {exc}") from exc


#: A decoded entry as a tuple: (type, data, event_id, published_at, headers, fields).
EntryParts = tuple[str, Any, str, str, dict[str, Any], dict[str, str]]


def decode_entry_parts(raw: Mapping[Any, Any] | Sequence[Any]) -> EntryParts:
    """Parse an entry's fields (bytes or text, a mapping or a flat ``[field, value, ...]``
    list); raise ``MalformedEntry`` when not ours.

    Entries from other producers need only ``data``; the other fields get defaults. The
    consumers' hot path takes the parts as a tuple, a third of the cost of building a
    ``DecodedEntry`` per entry (bench/consume.py).
    """
    fields = fields_as_text(raw)
    text = fields.get(DATA)
    if text is None:
        raise MalformedEntry("the entry has no 'data' field")
    data = loads(text, what="'data' field")
    headers: dict[str, Any] = {}
    if HEADERS in fields:
        headers = loads(fields[HEADERS], what="'headers' field")
        if not isinstance(headers, dict):
            raise MalformedEntry("the 'headers' field is not a JSON object")
    get = fields.get
    return get(TYPE, ""), data, get(EVENT_ID, ""), get(PUBLISHED_AT, ""), headers, fields


def decode_entry(raw: Mapping[Any, Any]) -> DecodedEntry:
    """Return :func:`decode_entry_parts` as a ``DecodedEntry``."""
    type_, data, event_id, published_at, headers, fields = decode_entry_parts(raw)
    return DecodedEntry(
        type=type_,
        data=data,
        event_id=event_id,
        published_at=published_at,
        headers=headers,
        fields=fields,
    )


#: An ``output=`` entry before it is written: its ``data`` text, ``event_id`` and
#: ``headers`` text (``published_at`` is given when the batch is written).
OutputParts = tuple[str, str, str]


def encode_output(
    result: Any, input_event_id: str, trace: Mapping[str, str] | None = None
) -> OutputParts:
    """Return the parts of the entry a handler's return value becomes (``output=``).

    Its headers name the input's event (``input_event_id``) so it can be traced back,
    and carry ``trace`` (the handler call's ``traceparent``) when given.
    Raises ``TypeError`` when ``result`` cannot be encoded, like ``publish()``.
    """
    if trace:
        headers = dumps({INPUT_EVENT_ID: input_event_id, **trace}, what="headers")
    else:
        headers = "{" + json.encoder.encode_basestring(INPUT_EVENT_ID) + ":"
        headers += json.encoder.encode_basestring(input_event_id) + "}"
    return dumps(result, what="return value"), new_event_id(), headers


def output_fields(parts: OutputParts, published_at: str) -> dict[str, str]:
    """Return the stream entry fields of an output."""
    data, event_id, headers = parts
    return {TYPE: "", DATA: data, EVENT_ID: event_id, PUBLISHED_AT: published_at, HEADERS: headers}


def output_script_body(key: str) -> str:
    """Return the Lua that XADDs one output to ``KEYS[key]`` from ``ARGV`` (see ``policy``).

    The script's arguments are ``maxlen`` ("" for none) as ARGV[2], ``published_at`` as
    ARGV[3], and each output's data, event id and headers at ``ARGV[i + 1..3]``. Built
    here so the field names stay owned by this module.
    """
    fields = (
        f"'{TYPE}', '', '{DATA}', ARGV[i + 1], '{EVENT_ID}', ARGV[i + 2], "
        f"'{PUBLISHED_AT}', ARGV[3], '{HEADERS}', ARGV[i + 3]"
    )
    return f"""
      if ARGV[2] ~= '' then
        redis.call('XADD', KEYS[{key}], 'MAXLEN', '~', ARGV[2], '*', {fields})
      else
        redis.call('XADD', KEYS[{key}], '*', {fields})
      end"""


def dead_letter_fields(
    fields: Mapping[str, str],
    *,
    original_stream: str,
    original_id: str,
    error: str,
    delivery_count: int,
    traceback: str = "",
    original_kind: str = "",
) -> dict[str, str]:
    """Return the dead-letter entry: the original fields plus where, why and how often.

    ``traceback`` (the formatted exception, when there was one) is kept as its last
    ``MAX_TRACEBACK_CHARS`` characters, marked with a leading "…" when cut.
    """
    result = dict(fields)
    result[ORIGINAL_STREAM] = original_stream
    result[ORIGINAL_ID] = original_id
    result[ERROR] = error[:4000]
    result[DELIVERY_COUNT] = str(delivery_count)
    if original_kind:
        result[ORIGINAL_KIND] = original_kind
    if traceback:
        if len(traceback) > MAX_TRACEBACK_CHARS:
            traceback = "…" + traceback[-(MAX_TRACEBACK_CHARS - 1) :]
        result[TRACEBACK] = traceback
    return result


def requeue_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """Return a dead-lettered entry's original fields (same ``event_id``) for re-publishing."""
    dropped = {ORIGINAL_STREAM, ORIGINAL_ID, ORIGINAL_KIND, ERROR, DELIVERY_COUNT, TRACEBACK}
    return {k: v for k, v in fields.items() if k not in dropped}


def encode_message(
    data: Any,
    *,
    type: str = "",
    event_id: str | None = None,
    published_at: str | None = None,
    entry_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Return the Pub/Sub message text for one event (also a list element, see ``push``).

    ``headers``, when given, is a JSON object beside the other fields.
    """
    if not isinstance(type, str):
        raise TypeError(f"The event type must be a str, not {type.__class__.__name__}.")
    message: dict[str, Any] = {
        TYPE: type,
        DATA: data,
        EVENT_ID: event_id or new_event_id(),
        PUBLISHED_AT: published_at or now_iso(),
    }
    if entry_id is not None:
        message["id"] = entry_id
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError("headers must be a mapping of names to JSON-encodable values.")
        message[HEADERS] = dict(headers)
    return dumps(message, envelope=1)


def durable_message_parts(fields: Mapping[str, str]) -> tuple[str, str]:
    """Return the Pub/Sub message for an encoded durable entry, split where its id goes.

    The entry id is only known once Redis has appended the entry, so the publishing
    script splices it in between the two halves: ``{..., "data": ..., "id": "<id>"}``.
    The entry's ``headers`` field (JSON object text), when it has one, is spliced in as is.
    """
    head = dumps(
        {
            TYPE: fields[TYPE],
            EVENT_ID: fields[EVENT_ID],
            PUBLISHED_AT: fields[PUBLISHED_AT],
        }
    )
    if HEADERS in fields:
        head = f'{head[:-1]},"{HEADERS}":{fields[HEADERS]}}}'
    return f'{head[:-1]},"{DATA}":{fields[DATA]},"id":"', '"}'


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A Pub/Sub message (or list element) read back."""

    type: str
    data: Any
    event_id: str
    published_at: str
    id: str | None
    headers: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        """Return the message as stream entry fields (for dead letters and outputs)."""
        fields = {
            TYPE: self.type,
            DATA: dumps(self.data),
            EVENT_ID: self.event_id,
            PUBLISHED_AT: self.published_at,
        }
        if self.headers:
            fields[HEADERS] = dumps(self.headers, what="headers")
        return fields


def decode_message(raw: bytes | str, *, what: str = "message") -> DecodedMessage:
    """Parse a Pub/Sub message; raise ``MalformedEntry`` when it is not ours.

    A message that is valid JSON but not our envelope (another publisher) is wrapped
    as the ``data`` of an untyped message, so relays still deliver it.
    """
    value = loads(raw, what=what, envelope=1)
    if not isinstance(value, dict) or DATA not in value or EVENT_ID not in value:
        # The whole message becomes the payload, so it must fit the payload's limit.
        if isinstance(value, (dict, list)) and _too_deep(reply_text(raw), MAX_DEPTH):
            raise MalformedEntry(f"the {what} is nested deeper than {MAX_DEPTH} levels")
        return DecodedMessage(type="", data=value, event_id="", published_at="", id=None)
    headers = value.get(HEADERS) or {}
    if not isinstance(headers, dict):
        raise MalformedEntry(f"the {what}'s 'headers' is not a JSON object")
    return DecodedMessage(
        type=str(value.get(TYPE, "")),
        data=value[DATA],
        event_id=str(value[EVENT_ID]),
        published_at=str(value.get(PUBLISHED_AT, "")),
        id=value.get("id"),
        headers=headers,
    )


def decode_element(raw: bytes | str) -> DecodedMessage:
    """Parse a list element: our envelope, or any other producer's text as ``data``.

    An element that is JSON but not our envelope is the ``data`` (as for Pub/Sub); one
    that is not JSON at all (``LPUSH jobs hello``) is delivered as its text. Only bytes
    that are not UTF-8, or JSON nested too deeply, raise ``MalformedEntry``.
    """
    try:
        return decode_message(raw, what="element")
    except MalformedEntry:
        text = reply_text(raw) if not isinstance(raw, bytes) else None
        if text is None:
            try:
                text = raw.decode()  # type: ignore[union-attr]
            except UnicodeDecodeError as exc:
                raise MalformedEntry(f"the element is not UTF-8 text: {exc}") from exc
        if text.lstrip()[:1] in ("{", "[") and _too_deep(text, MAX_DEPTH):
            raise
        return DecodedMessage(type="", data=text, event_id="", published_at="", id=None)
