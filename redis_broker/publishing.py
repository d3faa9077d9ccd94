"""Publishing: durable events to Redis Streams, live messages to Pub/Sub.

Every function encodes the whole payload before it talks to Redis, so a value JSON
cannot encode (or nested deeper than ``wire.MAX_DEPTH``) raises ``TypeError`` and nothing
half-sent is left behind. Connection failures surface as ``BrokerUnavailable`` naming the
masked URL; a Redis that refuses writes (OOM, READONLY) as ``WriteRefused``, a
``BrokerUnavailable`` naming the stream or channel and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, cast

from . import wire
from .autopipeline import acall, arun_script
from .conf import BrokerConfig, get_config
from .connection import (
    LuaScript,
    atranslate_errors,
    execute_batch,
    get_async_redis,
    get_redis,
    publish_command,
    pubsub_publish,
    translate_errors,
)
from .metrics.process import count_published
from .naming import matches_any, prefixed
from .replicas import axadd_and_wait, xadd_and_wait
from .tracing import Producing, producing

# XADD and PUBLISH in one atomic step, so the message a browser receives carries the id
# of the entry it can later replay from, and no reader sees one without the other.
# ARGV[8], when given, is the ``headers`` field (JSON object text). On a cluster the
# message goes out with SPUBLISH: the stream and the channel are one key, so one slot.
_DURABLE_BROADCAST_SOURCE = """
local fields = {'type', ARGV[2], 'data', ARGV[3], 'event_id', ARGV[4], 'published_at', ARGV[5]}
if ARGV[8] then
  fields[9] = 'headers'
  fields[10] = ARGV[8]
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
return {id, redis.call('PUBLISH', KEYS[2], ARGV[6] .. id .. ARGV[7])}
"""
#: The durable broadcast by publish command (``connection.publish_command``).
_DURABLE_BROADCAST = {
    command: LuaScript(_DURABLE_BROADCAST_SOURCE.replace("'PUBLISH'", f"'{command}'"))
    for command in ("PUBLISH", "SPUBLISH")
}


def trim_args(maxlen: int | None) -> dict[str, Any]:
    """Return XADD's keyword arguments for approximate trimming to ``maxlen`` (None: keep all).

    Every XADD of the app trims this way: published entries, dead letters, requeues.
    """
    if maxlen is None:
        return {}
    return {"maxlen": maxlen, "approximate": True}


def _trim(maxlen: int | None) -> tuple[Any, ...]:
    """Return XADD's trimming arguments (``MAXLEN ~ n``), or none."""
    return () if maxlen is None else ("MAXLEN", "~", maxlen)


def _batch_and_wait(config: BrokerConfig, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run a batch's XADDs stream by stream, each followed by ``WAIT`` on its node.

    Replies keep the order of ``commands``.
    """
    by_key: dict[Any, list[int]] = {}
    for i, command in enumerate(commands):
        by_key.setdefault(command[1], []).append(i)
    replies: list[Any] = [None] * len(commands)
    for key, indexes in by_key.items():
        ids = xadd_and_wait(get_redis(), config, key, [commands[i][2:] for i in indexes])
        for i, entry_id in zip(indexes, ids, strict=True):
            replies[i] = entry_id
    return replies


def _ids(replies: Iterable[Any]) -> list[str]:
    return [wire.reply_text(r) for r in replies]


def _encode_many(
    items: Iterable[Any], type: str, headers: Mapping[str, Any] | None
) -> list[dict[str, str]]:
    published_at = wire.now_iso()
    return [
        wire.encode_entry(item, type=type, headers=headers, published_at=published_at)
        for item in items
    ]


def publish(
    stream: str,
    data: Any,
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Append one event to ``stream`` and return its entry id.

    The stream name gets ``KEY_PREFIX``; the stream is trimmed to about
    ``STREAM_MAXLEN`` entries in the same command.
    """
    config = get_config()
    with producing("publish", stream) as span:
        fields = wire.encode_entry(data, type=type, headers=span.headers(headers))
        span.message_id(fields[wire.EVENT_ID])
        key = prefixed(config.key_prefix, stream)
        with translate_errors(lambda: _stream(key)):
            if config.wait_replicas:
                args = [*_trim(config.stream_maxlen), "*", *_flat(fields)]
                entry_id = xadd_and_wait(get_redis(), config, key, [args])[0]
            else:
                entry_id = get_redis().xadd(
                    key, cast(Any, fields), **trim_args(config.stream_maxlen)
                )
    if config.metrics:
        count_published("stream")
    return _ids([entry_id])[0]


def publish_many(
    stream: str,
    items: Iterable[Any],
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> list[str]:
    """Append several events to ``stream`` in one round trip; return their entry ids in order.

    Traced as one span (``messaging.batch.message_count``), whose context every event carries.
    """
    config = get_config()
    with producing("publish", stream) as span:
        encoded = _encode_many(items, type, span.headers(headers))
        if not encoded:
            return []
        span.batch(len(encoded))
        key = prefixed(config.key_prefix, stream)
        return publish_encoded([(key, fields) for fields in encoded], prefixed_keys=True)


def publish_encoded(
    entries: Sequence[tuple[str, Mapping[str, str]]], *, prefixed_keys: bool = False
) -> list[str]:
    """Append already encoded entries, possibly to several streams, in one round trip.

    Used by model events and the outbox relay, which encode at save time so that a
    retried event keeps its ``event_id`` and ``published_at``.
    """
    if not entries:
        return []
    config = get_config()
    prefix = "" if prefixed_keys else config.key_prefix
    commands: list[tuple[Any, ...]] = [
        ("XADD", prefixed(prefix, stream), "*", *_flat(fields)) for stream, fields in entries
    ]
    if config.stream_maxlen is not None:
        # Trimming is approximate anyway, so each stream is trimmed once, by its last XADD
        # in the batch: the server skips the trim check on the others.
        last = {command[1]: i for i, command in enumerate(commands)}
        trim = ("MAXLEN", "~", config.stream_maxlen)
        for i in last.values():
            command = commands[i]
            commands[i] = (*command[:2], *trim, *command[2:])
    with translate_errors(lambda: _stream(*dict.fromkeys(command[1] for command in commands))):
        if config.wait_replicas:
            ids = _ids(_batch_and_wait(config, commands))
        else:
            ids = _ids(execute_batch(get_redis(), commands))
    if config.metrics:
        count_published("stream", len(ids))
    return ids


def _stream(*names: str) -> str:
    """Return how an error names the streams (Redis keys) written to."""
    return ("stream " if len(names) == 1 else "streams ") + ", ".join(map(repr, names))


def _channel(key: str, *, durable: bool) -> str:
    """Return how an error names the channel (Redis key) written to."""
    return f"{'durable ' if durable else ''}channel {key!r}"


def _message(span: Producing, data: Any, type: str, headers: Mapping[str, Any] | None) -> str:
    """Encode one Pub/Sub message or list element, in ``span``'s trace and named by it."""
    event_id = wire.new_event_id()
    span.message_id(event_id)
    return wire.encode_message(data, type=type, headers=span.headers(headers), event_id=event_id)


def _flat(fields: Mapping[str, str]) -> Iterable[str]:
    return chain.from_iterable(fields.items())


def _durable_args(
    config: BrokerConfig, channel: str, data: Any, type: str, headers: Mapping[str, Any] | None
) -> tuple[list[str], list[Any]]:
    fields = wire.encode_entry(data, type=type, headers=headers)
    before_id, after_id = wire.durable_message_parts(fields)
    key = prefixed(config.key_prefix, channel)
    args = [
        config.websocket.durable_maxlen,
        fields[wire.TYPE],
        fields[wire.DATA],
        fields[wire.EVENT_ID],
        fields[wire.PUBLISHED_AT],
        before_id,
        after_id,
    ]
    if wire.HEADERS in fields:
        args.append(fields[wire.HEADERS])
    return [key, key], args


def is_durable(channel: str, config: BrokerConfig | None = None) -> bool:
    """Return True when ``channel`` matches ``WEBSOCKET["DURABLE_CHANNELS"]``."""
    config = config or get_config()
    return matches_any(config.websocket.durable_channels, channel)


def broadcast(
    channel: str, data: Any, *, type: str = "", headers: Mapping[str, Any] | None = None
) -> int:
    """Publish a live message on a Pub/Sub channel; return how many subscribers got it.

    Nothing is stored, except on channels matching ``DURABLE_CHANNELS``: those are also
    appended to a capped stream of the same name, so browsers can replay what they missed.
    ``headers`` travel beside the data (``wire.SENDER_ID`` and ``wire.SENDER_NAME`` become
    the ``sender`` of the relay's message frames).
    """
    config = get_config()
    with producing("broadcast", channel) as span:
        if is_durable(channel, config):
            keys, args = _durable_args(config, channel, data, type, span.headers(headers))
            span.message_id(args[3])
            with translate_errors(lambda: _channel(keys[0], durable=True)):
                client = get_redis()
                script = _DURABLE_BROADCAST[publish_command(client)]
                _entry_id, receivers = script.run(client, keys, args)
        else:
            message = _message(span, data, type, headers)
            key = prefixed(config.key_prefix, channel)
            with translate_errors(lambda: _channel(key, durable=False)):
                receivers = pubsub_publish(get_redis(), key, message)
    if config.metrics:
        count_published("channel")
    return int(receivers)


async def apublish(
    stream: str,
    data: Any,
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Async twin of :func:`publish`."""
    config = get_config()
    with producing("publish", stream) as span:
        fields = wire.encode_entry(data, type=type, headers=span.headers(headers))
        span.message_id(fields[wire.EVENT_ID])
        key = prefixed(config.key_prefix, stream)
        async with atranslate_errors(lambda: _stream(key)):
            if config.wait_replicas:
                args = [*_trim(config.stream_maxlen), "*", *_flat(fields)]
                entry_id = (await axadd_and_wait(get_async_redis(), config, key, [args]))[0]
            else:
                command = ("XADD", key, *_trim(config.stream_maxlen), "*", *_flat(fields))
                entry_id = await acall(get_async_redis(), *command)
    if config.metrics:
        count_published("stream")
    return _ids([entry_id])[0]


async def apublish_many(
    stream: str,
    items: Iterable[Any],
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> list[str]:
    """Async twin of :func:`publish_many`."""
    config = get_config()
    with producing("publish", stream) as span:
        encoded = _encode_many(items, type, span.headers(headers))
        if not encoded:
            return []
        span.batch(len(encoded))
        key = prefixed(config.key_prefix, stream)
        async with atranslate_errors(lambda: _stream(key)):
            if config.wait_replicas:
                adds = [("*", *_flat(fields)) for fields in encoded]
                adds[-1] = (*_trim(config.stream_maxlen), *adds[-1])
                ids = _ids(await axadd_and_wait(get_async_redis(), config, key, adds))
                if config.metrics:
                    count_published("stream", len(ids))
                return ids
            pipe = get_async_redis().pipeline(transaction=False)
            for fields in encoded[:-1]:
                pipe.xadd(key, cast(Any, fields))
            pipe.xadd(
                key, cast(Any, encoded[-1]), **trim_args(config.stream_maxlen)
            )  # one trim per batch
            ids = _ids(await pipe.execute())
    if config.metrics:
        count_published("stream", len(ids))
    return ids


async def abroadcast(
    channel: str, data: Any, *, type: str = "", headers: Mapping[str, Any] | None = None
) -> int:
    """Async twin of :func:`broadcast`."""
    config = get_config()
    with producing("broadcast", channel) as span:
        if is_durable(channel, config):
            keys, args = _durable_args(config, channel, data, type, span.headers(headers))
            span.message_id(args[3])
            async with atranslate_errors(lambda: _channel(keys[0], durable=True)):
                client = get_async_redis()
                script = _DURABLE_BROADCAST[publish_command(client)]
                _entry_id, receivers = await arun_script(client, script, keys, args)
        else:
            message = _message(span, data, type, headers)
            key = prefixed(config.key_prefix, channel)
            async with atranslate_errors(lambda: _channel(key, durable=False)):
                client = get_async_redis()
                receivers = await acall(client, publish_command(client), key, message)
    if config.metrics:
        count_published("channel")
    return int(receivers)


def _list(key: str) -> str:
    """Return how an error names the list (Redis key) written to."""
    return f"list {key!r}"


def push(
    list_name: str,
    data: Any,
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> int:
    """Append one item to the Redis list ``list_name`` (RPUSH); return the list's length.

    The element is one JSON text, the Pub/Sub message object plus ``headers`` when given,
    so ``@list_consumer`` handlers (and any other language) read it; the list name gets
    ``KEY_PREFIX``.
    """
    config = get_config()
    with producing("push", list_name) as span:
        element = _message(span, data, type, headers)
        key = prefixed(config.key_prefix, list_name)
        with translate_errors(lambda: _list(key)):
            length = int(get_redis().rpush(key, element))
    if config.metrics:
        count_published("list")
    return length


async def apush(
    list_name: str,
    data: Any,
    *,
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> int:
    """Async twin of :func:`push`."""
    config = get_config()
    with producing("push", list_name) as span:
        element = _message(span, data, type, headers)
        key = prefixed(config.key_prefix, list_name)
        async with atranslate_errors(lambda: _list(key)):
            length = int(await acall(get_async_redis(), "RPUSH", key, element))
    if config.metrics:
        count_published("list")
    return length
