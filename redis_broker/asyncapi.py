"""The project's AsyncAPI 3.0.0 document, built from its code and settings.

* ``servers``: the Redis of ``REDIS_BROKER["URL"]`` (its Sentinels, or a cluster's
  nodes), with host, port, database and TLS, never a user name or password;
* ``channels``: one per stream, Pub/Sub channel or pattern and list that a consumer
  reads, an ``output=`` appends to, a model event goes to or a declared publisher
  (``publishers.py``) sends to, plus ``replies``, the callers' reply inboxes. A
  pattern's ``{name}`` parts are channel parameters; a key's hash tag is a parameter
  whose only value is itself, so the address reads as the key;
* ``operations``: ``receive`` per consumer (its group named), ``send`` per output, per
  configured model and per declared publisher; a ``reply`` object wherever requests are
  answered (every consumer without ``no_reply=True``) or made (a publisher with
  ``reply=``), addressed by the request's ``reply_to`` header (README, "Request and
  reply fields");
* messages: the wire envelope (``wire.py``: ``type``, ``data``, ``event_id``,
  ``published_at``, ``headers``), its ``data`` typed by the declared payload type
  (``payloads.py``), any JSON where none is declared. On a stream the envelope's
  parts are the entry's fields, ``data`` and ``headers`` as JSON text.

Everything is sorted (ids, keys), so a committed copy changes only when the code or
settings do; ``asyncapi_compat.py`` tells which changes break it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .conf import BrokerConfig, get_config
from .consumers.registry import (
    PARAMETER_RE,
    ChannelConsumerSpec,
    ConsumerSpec,
    StreamConsumerSpec,
)
from .consumers.registry import autodiscover as discover_consumers
from .naming import hash_tag, matches_any, prefixed
from .payloads import REF_TEMPLATE, schemas
from .publishers import Publisher
from .publishers import autodiscover as discover_publishers
from .requests import CORRELATION_ID, DEADLINE, REPLY_TO, STATUS, Reply

ASYNCAPI_VERSION = "3.0.0"
FORMATS = ("json", "yaml")
#: The channel of the callers' reply inboxes (its address is known only at run time).
REPLIES = "replies"
#: Our own shared schemas; the dot keeps them apart from payload types' names.
HEADERS_SCHEMA = "redis_broker.Headers"
ERROR_SCHEMA = "redis_broker.RemoteError"
#: Where a request names the stream its reply goes to, as an AsyncAPI runtime expression.
REPLY_LOCATION = f"$message.payload#/headers/{REPLY_TO}"
CORRELATION_LOCATION = f"$message.payload#/headers/{CORRELATION_ID}"

_WIRE = {
    "stream": "A stream entry (XADD) whose fields are the envelope's parts; `data` and "
    "`headers` are JSON text.",
    "channel": "One JSON object per PUBLISH.",
    "list": "One JSON object, as text, per list element (RPUSH).",
}
_ANY: dict[str, Any] = {"description": "Any JSON: no type is declared."}


class YamlUnavailable(RuntimeError):
    """PyYAML, which the YAML format needs, is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "The YAML format needs PyYAML: pip install 'django-redis-broker[asyncapi]' "
            "(or PyYAML), or use JSON."
        )


# --- What the project declares ------------------------------------------------------------


def discover() -> tuple[list[ConsumerSpec], list[Publisher]]:
    """Import every installed app's ``consumers`` and ``publishers`` modules; return what
    they registered."""
    return discover_consumers(), discover_publishers()


def project_document() -> dict[str, Any]:
    """Return the document of this project: its settings, consumers, publishers and
    model events."""
    from .model_events import event_schemas

    consumers, publishers = discover()
    return build(get_config(), consumers, publishers, event_schemas())


# --- Building ------------------------------------------------------------------------------


@dataclass
class _Message:
    """A message before its payload type is resolved to a schema."""

    kind: str
    title: str
    summary: str
    type_schema: dict[str, Any]
    data: Any  # a type (resolved with the others at the end) or a ready schema (dict)
    correlated: bool = False
    durable: bool = False


ChannelKey = tuple[str, str]  # (kind, name as the code writes it)
_REPLIES_KEY: ChannelKey = (REPLIES, "")


@dataclass
class _Channel:
    """A channel and its messages, by key (ids come at the end)."""

    kind: str  # "stream", "channel", "list" or REPLIES
    name: str  # as the code names it, without KEY_PREFIX
    messages: dict[str, _Message] = field(default_factory=dict)
    pattern: bool = False


@dataclass
class _Operation:
    """An operation: its channel, its message's key there, and whether it has a reply
    (then under the same key in ``replies``)."""

    channel: ChannelKey
    message: str
    body: dict[str, Any]
    replies: bool = False


class _Builder:
    """Collects channels, messages and operations; resolves every type in one go."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.channels: dict[ChannelKey, _Channel] = {}
        self.operations: dict[tuple[str, str], _Operation] = {}
        self.components: dict[str, Any] = {}

    def channel(self, kind: str, name: str, *, pattern: bool = False) -> ChannelKey:
        key = (kind, name)
        found = self.channels.setdefault(key, _Channel(kind, name))
        found.pattern = found.pattern or pattern
        return key

    def durable(self, kind: str, name: str) -> bool:
        glob = PARAMETER_RE.sub("*", name)
        return kind == "channel" and matches_any(self.config.websocket.durable_channels, glob)

    def add(
        self,
        op_kind: str,
        op_name: str,
        key: ChannelKey,
        message: _Message,
        body: dict[str, Any],
        reply: Any = None,
        *,
        replies: bool = False,
    ) -> None:
        """Add operation ``op_kind.op_name`` on channel ``key`` with its one message, and
        its reply (typed ``reply``) when it ``replies``."""
        message.durable = self.durable(*key)
        mid = f"{op_kind}.{op_name}"  # named after the operation's id at the end
        self.operations[(op_kind, op_name)] = _Operation(key, mid, body, replies)
        self.channels[key].messages[mid] = message
        if replies:
            self.channel(*_REPLIES_KEY)
            self.channels[_REPLIES_KEY].messages[mid] = _Message(
                "stream",
                f"Reply: {_type_title(reply)}",
                "The answer to a request, appended to the caller's inbox (status `ok`).",
                {"type": "string", "const": ""},
                reply,
                correlated=True,
            )

    # --- the four sources ---

    def consumer(self, spec: ConsumerSpec) -> None:
        kind = spec.kind
        pattern = isinstance(spec, ChannelConsumerSpec) and spec.is_pattern
        key = self.channel(kind, spec.source, pattern=pattern)
        data = spec.payload.type if spec.payload is not None else Any
        doc = inspect.getdoc(spec.func) or ""
        body: dict[str, Any] = {
            "action": "receive",
            "title": spec.name,
            "description": _consumer_text(spec),
            "x-redis-handler": spec.path,
        }
        if doc:
            body["summary"] = doc.splitlines()[0]
        if isinstance(spec, StreamConsumerSpec):
            body["x-redis-group"] = spec.group
        if isinstance(spec, ChannelConsumerSpec) and spec.is_pattern:
            body["x-redis-pattern"] = prefixed(self.config.key_prefix, spec.subscription)
        message = _Message(
            kind,
            _type_title(data),
            f"What {spec.name} reads.",
            {"type": "string"},
            data,
            correlated=not spec.no_reply,
        )
        self.add(
            "consume",
            spec.name,
            key,
            message,
            body,
            reply_type(spec),
            replies=not spec.no_reply,
        )
        if spec.output is not None:
            out = output_type(reply_type(spec))
            self.add(
                "output",
                spec.name,
                self.channel("stream", spec.output),
                _Message(
                    "stream",
                    _type_title(out),
                    f"What {spec.name} returns (a None return appends nothing).",
                    {"type": "string", "const": ""},
                    out,
                ),
                {
                    "action": "send",
                    "title": f"{spec.name} output",
                    "description": f"`{spec.path}`'s return values, appended to `{spec.output}`"
                    " in the same atomic step as its input's acknowledgement; the headers "
                    "name the input's event (`input_event_id`).",
                    "x-redis-handler": spec.path,
                },
            )

    def publisher(self, declared: Publisher) -> None:
        key = self.channel(declared.via, declared.address)
        data = declared.payload.type if declared.payload is not None else Any
        type_schema: dict[str, Any] = {"type": "string"}
        if declared.type:
            type_schema["const"] = declared.type
        body: dict[str, Any] = {"action": "send", "title": declared.name}
        if declared.description:
            body["description"] = declared.description
        replies = declared.reply_payload is not None
        reply = declared.reply_payload.type if declared.reply_payload is not None else None
        message = _Message(
            declared.via,
            _type_title(data),
            f"What {declared.name} sends.",
            type_schema,
            data,
            correlated=replies,
        )
        self.add("publish", declared.name, key, message, body, reply, replies=replies)

    def model_event(self, key: str, schema: Mapping[str, Any]) -> None:
        spec = self.config.model_events[key]
        title = str(schema.get("title") or spec.label)
        self.components[title] = dict(schema)
        data = {"$ref": REF_TEMPLATE.format(name=title)}
        delivery = (
            "after the transaction commits (through the outbox when Redis cannot take it)"
            if spec.delivery == "on_commit"
            else "through the transactional outbox"
        )
        self.add(
            "model",
            key,
            self.channel("stream", spec.stream),
            _Message(
                "stream",
                title,
                f"A {spec.label} event.",
                {"type": "string", "enum": sorted(f"{key}.{a}" for a in spec.actions)},
                data,
            ),
            {
                "action": "send",
                "title": f"{spec.label} events",
                "description": f"Saves and deletes of {spec.label} ("
                + ", ".join(sorted(spec.actions))
                + f"), published {delivery}.",
                "x-redis-delivery": spec.delivery,
            },
        )

    # --- the document ---

    def document(self) -> dict[str, Any]:
        config = self.config
        found = self._resolve()
        channel_ids = _unique_ids(
            self.channels, lambda k: REPLIES if k == _REPLIES_KEY else f"{k[0]}.{_slug(k[1])}"
        )
        op_ids = _unique_ids(self.operations, lambda k: f"{k[0]}.{_slug(k[1])}")
        message_ids = {op.message: op_ids[key] for key, op in self.operations.items()}

        channels: dict[str, Any] = {}
        for key, channel in self.channels.items():
            messages = {}
            for mid, message in channel.messages.items():
                name = _reply_id(message_ids, mid) if key == _REPLIES_KEY else message_ids[mid]
                messages[name] = self._message(found, message, name)
            if key == _REPLIES_KEY:
                messages["error"] = _error_message()
            channels[channel_ids[key]] = self._channel(channel, messages)

        operations: dict[str, Any] = {}
        for key, op in self.operations.items():
            cid = channel_ids[op.channel]
            body = dict(op.body)
            body["channel"] = {"$ref": f"#/channels/{cid}"}
            body["messages"] = [{"$ref": f"#/channels/{cid}/messages/{message_ids[op.message]}"}]
            if op.replies:
                reply_id = _reply_id(message_ids, op.message)
                body["reply"] = {
                    "address": {
                        "location": REPLY_LOCATION,
                        "description": "The caller's inbox stream, named by the request's "
                        f"`{REPLY_TO}` header.",
                    },
                    "channel": {"$ref": f"#/channels/{REPLIES}"},
                    "messages": [
                        {"$ref": f"#/channels/{REPLIES}/messages/{reply_id}"},
                        {"$ref": f"#/channels/{REPLIES}/messages/error"},
                    ],
                }
            operations[op_ids[key]] = body

        components = {
            **found.components,
            **self.components,
            HEADERS_SCHEMA: _headers_schema(),
            ERROR_SCHEMA: _error_schema(),
        }
        document: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": _info(config),
            "defaultContentType": "application/json",
            "servers": servers(config),
            "channels": _sorted(channels),
            "operations": _sorted(operations),
            "components": {"schemas": _sorted(components)},
        }
        if _has_credentials(config):
            document["components"]["securitySchemes"] = {
                "redis_acl": {
                    "type": "userPassword",
                    "description": "Redis AUTH: an ACL user name and password (not shown).",
                }
            }
            for server in document["servers"].values():
                server["security"] = [{"$ref": "#/components/securitySchemes/redis_acl"}]
        return document

    def _resolve(self) -> _Schemas:
        """Resolve every message's payload type to a schema, in one call (shared names)."""
        kinds: list[Any] = []
        for channel in self.channels.values():
            for message in channel.messages.values():
                if not isinstance(message.data, dict) and not any(message.data is k for k in kinds):
                    kinds.append(message.data)
        return _Schemas.of(kinds)

    def _message(self, found: _Schemas, message: _Message, name: str) -> dict[str, Any]:
        data = message.data if isinstance(message.data, dict) else found.schema(message.data)
        properties: dict[str, Any] = {
            "type": message.type_schema,
            "data": data,
            "event_id": {"type": "string", "format": "uuid", "description": "Unique per event."},
            "published_at": {
                "type": "string",
                "format": "date-time",
                "description": "When it was published (ISO 8601, UTC).",
            },
            "headers": {"$ref": REF_TEMPLATE.format(name=HEADERS_SCHEMA)},
        }
        if message.durable:
            properties["id"] = {
                "type": "string",
                "description": "The message's entry id in the channel's stream (durable channels).",
            }
        result: dict[str, Any] = {
            "name": name,
            "title": message.title,
            "summary": message.summary,
            "description": _WIRE[message.kind],
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["type", "data", "event_id", "published_at"],
                "properties": properties,
            },
        }
        if message.correlated:
            result["correlationId"] = {
                "location": CORRELATION_LOCATION,
                "description": "Set on requests, and copied into their replies.",
            }
        return result

    def _channel(self, channel: _Channel, messages: dict[str, Any]) -> dict[str, Any]:
        if channel.kind == REPLIES:
            return {
                "address": None,
                "title": "Reply inboxes",
                "description": "A caller's reply inbox: the stream its request names in the "
                f"`{REPLY_TO}` header (one per calling process), so its address is known only "
                f"at run time. A reply is appended there (XADD) with the request's "
                f"`{CORRELATION_ID}` and a `{STATUS}` header: `ok`, or `error` with data "
                "`{type, message}`.",
                "messages": _sorted(messages),
                "x-redis-kind": "stream",
            }
        address = prefixed(self.config.key_prefix, channel.name)
        result: dict[str, Any] = {
            "address": address,
            "title": channel.name,
            "description": _channel_text(
                channel, address, self.durable(channel.kind, channel.name)
            ),
            "messages": _sorted(messages),
            "x-redis-kind": channel.kind,
        }
        parameters = _parameters(channel, address)
        if parameters:
            result["parameters"] = parameters
        if self.durable(channel.kind, channel.name):
            result["x-redis-durable"] = True
        return result


@dataclass
class _Schemas:
    """The schemas of a set of types and the named components they refer to."""

    refs: list[tuple[Any, dict[str, Any]]]
    components: dict[str, Any]

    @classmethod
    def of(cls, kinds: list[Any]) -> _Schemas:
        try:
            found, components = schemas(kinds)
            return cls(list(zip(kinds, found, strict=True)), components)
        except (TypeError, ValueError):
            pass  # one type msgspec cannot describe: describe the others, name that one
        refs: list[tuple[Any, dict[str, Any]]] = []
        components = {}
        for kind in kinds:
            try:
                (one,), shared = schemas([kind])
            except (TypeError, ValueError) as exc:
                one, shared = {"description": f"No JSON Schema for {kind!r}: {exc}"}, {}
            refs.append((kind, one))
            components.update(shared)
        return cls(refs, components)

    def schema(self, kind: Any) -> dict[str, Any]:
        found = next(schema for k, schema in self.refs if k is kind)
        return dict(_ANY) if found == {} else found


# --- Payload types -------------------------------------------------------------------------


def reply_type(spec: ConsumerSpec) -> Any:
    """Return the type of ``spec``'s replies: its return annotation (a ``Reply`` carries any
    JSON), ``None`` for ``-> None``, ``Any`` when it has none."""
    if spec.reply is not None:
        return _without_reply(spec.reply.type)
    try:
        returns = typing.get_type_hints(spec.func).get("return", Any)
    except Exception:  # an annotation that cannot be resolved declares nothing
        return Any
    return type(None) if returns is None or returns is type(None) else Any


def output_type(kind: Any) -> Any:
    """Return what an ``output=`` entry holds for replies of type ``kind``: a None return
    appends nothing, so ``T | None`` appends ``T``."""
    if kind is type(None):
        return Any
    args = _union_args(kind)
    if args is None:
        return kind
    rest = [arg for arg in args if arg is not type(None)]
    return typing.Union[tuple(rest)] if rest else Any  # noqa: UP007 - built from a list


def _union_args(kind: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(kind)
    return None


def _without_reply(kind: Any) -> Any:
    """A ``Reply`` wraps its data untyped: a responder that returns one replies any JSON."""
    parts = _union_args(kind) or (kind,)
    if any(part is Reply or typing.get_origin(part) is Reply for part in parts):
        return Any
    return kind


def _type_title(kind: Any) -> str:
    if kind is Any:
        return "Any JSON"
    if kind is None or kind is type(None):
        return "null"
    if isinstance(kind, dict):
        return str(kind.get("title", "object"))
    name = getattr(kind, "__name__", None)
    return str(name) if name and not typing.get_args(kind) else str(kind).replace("typing.", "")


# --- Pieces ------------------------------------------------------------------------------


def _consumer_text(spec: ConsumerSpec) -> str:
    """Describe how ``spec`` reads, for its operation."""
    if isinstance(spec, StreamConsumerSpec):
        text = (
            f"`{spec.path}`, in consumer group `{spec.group}`: each entry goes to one "
            "consumer of the group (at least once); every group gets its own copy."
        )
    elif spec.kind == "channel":
        text = f"`{spec.path}`: every subscribed worker gets each message (at most once)."
    else:
        text = f"`{spec.path}`: each element is taken by one worker (at least once)."
    if spec.no_reply:
        text += " It never answers requests (`no_reply=True`)."
    return text


def _channel_text(channel: _Channel, address: str, durable: bool) -> str:
    """Describe ``channel``: what kind of Redis name it is and how messages travel."""
    if channel.kind == "stream":
        return f"Redis stream `{address}`: each message is an entry, read by consumer groups."
    if channel.kind == "list":
        return (
            f"Redis list `{address}`, a work queue: each message is one element, taken by "
            "one consumer."
        )
    text = f"Pub/Sub channel `{address}`: each message reaches whoever is subscribed then."
    if channel.pattern:
        glob = PARAMETER_RE.sub("*", address)
        text = (
            f"Pub/Sub channels matching `{glob}` (PSUBSCRIBE): `*` stands for any run of "
            "characters, `?` for one"
        )
        if PARAMETER_RE.search(address):
            text += "; each `{name}` part is a parameter, passed to the handler by keyword"
        text += "."
    if durable:
        text += (
            " Durable (`WEBSOCKET['DURABLE_CHANNELS']`): each message is also kept in the "
            "capped stream of the same name, for the browser relay's replay."
        )
    return text


def _parameters(channel: _Channel, address: str) -> dict[str, Any]:
    """Return the channel's parameters: a channel's ``{name}`` parts, a key's hash tag."""
    if channel.kind == "channel":
        return {
            name: {
                "description": f"A part of the channel's name: a consumer's handler "
                f"receives it, and a publisher is given it, as the keyword argument `{name}`."
            }
            for name in PARAMETER_RE.findall(address)
        }
    tag = hash_tag(address)
    if tag is None:
        return {}
    literal = "{" + tag + "}"
    return {
        tag: {
            "description": "A Redis Cluster hash tag, part of the key as written (braces "
            "included).",
            "enum": [literal],
            "default": literal,
        }
    }


def _headers_schema() -> dict[str, Any]:
    """Return the schema of ``headers``: the package's own names (others are the sender's)."""
    text = {"type": "string"}
    return {
        "title": HEADERS_SCHEMA,
        "description": "Text fields sent beside the data, when there are any. These are "
        "the names the package reads or writes; any other is the sender's own.",
        "type": "object",
        "properties": {
            REPLY_TO: {
                **text,
                "description": "Requests: the Redis key of the caller's inbox stream; the "
                "reply is appended there.",
            },
            CORRELATION_ID: {
                **text,
                "description": "Requests: text the reply copies, to be matched with its request.",
            },
            DEADLINE: {
                "type": "integer",
                "description": "Requests: epoch milliseconds after which the caller no "
                "longer waits (a responder then skips the request).",
            },
            STATUS: {
                "type": "string",
                "enum": ["ok", "error"],
                "description": "Replies: `error` when the handler failed for good.",
            },
            "input_event_id": {
                **text,
                "description": "`output=` entries: the event_id of the input they were made from.",
            },
            "traceparent": {**text, "description": "W3C Trace Context, while a span is current."},
            "tracestate": {**text, "description": "W3C Trace Context vendor data."},
            "sender_id": {
                **text,
                "description": "Set by the browser relay: the publishing user's primary key.",
            },
            "sender_name": {
                **text,
                "description": "Set by the browser relay: the publishing user's user name.",
            },
        },
        "additionalProperties": True,
    }


def _error_schema() -> dict[str, Any]:
    return {
        "title": ERROR_SCHEMA,
        "description": "Why a request failed for good: the handler raised Reject, or its "
        "retries ran out. The caller raises RemoteError with these.",
        "type": "object",
        "properties": {
            "type": {"type": "string", "description": "The exception's class name."},
            "message": {"type": "string", "maxLength": 2000},
        },
        "required": ["type", "message"],
    }


def _error_message() -> dict[str, Any]:
    return {
        "name": "error",
        "title": "Error reply",
        "summary": f"The answer to a request whose handler failed for good ({STATUS} 'error').",
        "description": _WIRE["stream"],
        "contentType": "application/json",
        "correlationId": {"location": CORRELATION_LOCATION},
        "payload": {
            "type": "object",
            "required": ["type", "data", "event_id", "published_at", "headers"],
            "properties": {
                "type": {"type": "string", "const": ""},
                "data": {"$ref": REF_TEMPLATE.format(name=ERROR_SCHEMA)},
                "event_id": {"type": "string", "format": "uuid"},
                "published_at": {"type": "string", "format": "date-time"},
                "headers": {"$ref": REF_TEMPLATE.format(name=HEADERS_SCHEMA)},
            },
        },
    }


def _info(config: BrokerConfig) -> dict[str, Any]:
    info = {"title": config.asyncapi.title, "version": config.asyncapi.version}
    if config.asyncapi.description:
        info["description"] = config.asyncapi.description
    return info


def servers(config: BrokerConfig) -> dict[str, Any]:
    """Return the document's servers: where Redis is, never who logs in or with what.

    Host, port, database and TLS (protocol ``rediss``) come from the URL; Sentinels or
    a cluster's startup nodes are servers too. The user name, password and query string
    (which may hold a password) are never read.
    """
    parts = urlsplit(config.url)
    protocol = "rediss" if parts.scheme == "rediss" else "redis"
    if parts.scheme == "unix":
        return {
            "redis": {
                "host": "localhost",
                "pathname": parts.path,
                "protocol": "redis",
                "description": "Redis over a unix socket.",
            }
        }
    database = parts.path.strip("/") or "0"
    if config.sentinels:
        return {
            f"sentinel-{n}": {
                "host": _host(host, port),
                "pathname": f"/{database}",
                "protocol": protocol,
                "description": f"A Redis Sentinel; the primary is its service "
                f"`{config.sentinel_service}`.",
            }
            for n, (host, port) in enumerate(config.sentinels, 1)
        }
    main = {
        "host": _host(parts.hostname or "localhost", parts.port or 6379),
        "pathname": f"/{database}",
        "protocol": protocol,
    }
    if not config.cluster:
        return {"redis": {**main, "description": "The Redis server."}}
    nodes = [main] + [
        {"host": _host(host, port), "pathname": "/0", "protocol": protocol}
        for host, port in config.startup_nodes
    ]
    return {
        f"node-{n}": {**node, "description": "A Redis Cluster node (any one finds the others)."}
        for n, node in enumerate(nodes, 1)
    }


def _host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _has_credentials(config: BrokerConfig) -> bool:
    parts = urlsplit(config.url)
    return bool(parts.username or parts.password or "password=" in parts.query) or bool(
        config.options.get("password") or config.options.get("username")
    )


# --- Ids ---------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _slug(text: str) -> str:
    """Return ``text`` as an id: braces dropped, characters AsyncAPI ids avoid as ``_``."""
    return _UNSAFE.sub("_", text.replace("{", "").replace("}", "")) or "_"


K = typing.TypeVar("K", bound=Hashable)


def _unique_ids(keys: Iterable[K], label: Callable[[K], str]) -> dict[K, str]:
    """Return an id per key: its label, with a hash of the key where two labels meet."""
    groups: dict[str, list[K]] = defaultdict(list)
    for key in keys:
        groups[label(key)].append(key)
    ids: dict[K, str] = {}
    for name, members in groups.items():
        for key in members:
            digest = hashlib.sha1(repr(key).encode(), usedforsecurity=False).hexdigest()[:8]
            ids[key] = name if len(members) == 1 else f"{name}-{digest}"
    return ids


def _reply_id(message_ids: Mapping[str, str], mid: str) -> str:
    return f"{message_ids[mid]}.reply"


def _sorted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: mapping[key] for key in sorted(mapping)}


def build(
    config: BrokerConfig,
    consumers: Sequence[ConsumerSpec],
    publishers: Sequence[Publisher],
    model_events: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Return the AsyncAPI 3.0.0 document of ``consumers``, ``publishers`` and the
    ``model_events`` schemas (``model_events.event_schemas()``) under ``config``. Pure:
    no I/O, no imports of the project's modules."""
    builder = _Builder(config)
    for spec in sorted(consumers, key=lambda s: s.name):
        builder.consumer(spec)
    for declared in sorted(publishers, key=lambda p: p.name):
        builder.publisher(declared)
    for key in sorted(model_events):
        if key in config.model_events:
            builder.model_event(key, model_events[key])
    return builder.document()


# --- Text ----------------------------------------------------------------------------------


def dumps(document: Mapping[str, Any], format: str = "json") -> str:
    """Return ``document`` as JSON (indented, keys sorted) or YAML (needs PyYAML)."""
    if format == "yaml":
        yaml = _yaml()
        return str(yaml.safe_dump(dict(document), sort_keys=True, allow_unicode=True))
    if format != "json":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}.")
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def loads(text: str) -> dict[str, Any]:
    """Return the document in ``text``, JSON or YAML (YAML needs PyYAML).

    Raises ``ValueError`` when it is neither, or is no AsyncAPI document.
    """
    try:
        document = json.loads(text)
    except ValueError:
        yaml = _yaml()
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"it is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict) or "asyncapi" not in document:
        raise ValueError("it is no AsyncAPI document (no `asyncapi` key at the top).")
    return document


def yaml_available() -> bool:
    """Return True when PyYAML is installed (the YAML format needs it)."""
    try:
        _yaml()
    except YamlUnavailable:
        return False
    return True


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise YamlUnavailable() from None
    return yaml
