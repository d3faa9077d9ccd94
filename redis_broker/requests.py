"""Request/reply: ``request()`` and ``arequest()`` ask a consumer and wait for its answer.

A request is an ordinary event (stream entry, Pub/Sub message or list element) whose
``headers`` carry three documented fields: ``reply_to`` (the Redis key of the caller's
inbox stream), ``correlation_id`` and ``deadline`` (epoch milliseconds). Any consumer
answers with its return value by appending a reply entry to ``reply_to``; so can a
service in another language.

Replies come back to **one inbox per process**, a stream read by one background thread
that holds one blocking connection and hands each reply to the caller waiting for its
correlation id. No request opens a connection or a subscription of its own; a reply
written while the reader's connection was down is read when it reconnects, because
it resumes from the last id it read. The inbox expires a minute after its process
stops refreshing it.

Failures are never a timeout in disguise: ``NoResponders`` when nothing could answer
(checked in the same round trip as the send), ``RemoteError`` as soon as the handler
failed for good, ``RequestTimeout`` only for slowness.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import wire
from .autopipeline import acall, arun_script
from .conf import SETTING_NAME, BrokerConfig, get_config
from .connection import (
    CONNECTION_ERRORS,
    LuaScript,
    atranslate_errors,
    build_client,
    get_async_redis,
    get_redis,
    is_cluster,
    publish_command,
    pubsub_publish,
    translate_errors,
)
from .exceptions import MalformedEntry, NoResponders, RemoteError, RequestTimeout
from .metrics import process as metrics
from .naming import inbox_name, list_consumers_name, prefixed, worker_key
from .publishing import trim_args
from .tracing import producing

logger = logging.getLogger("redis_broker.requests")

#: Header fields of a request and of a reply (the README's wire section documents them).
REPLY_TO = "reply_to"
CORRELATION_ID = "correlation_id"
DEADLINE = "deadline"
STATUS = "status"  # of a reply: "ok", or "error" with data {"type", "message"}

#: The inbox's lifetime (seconds) after its reader last refreshed it.
INBOX_TTL = 60
#: Entries an inbox keeps at most (approximate trimming by the responders).
INBOX_MAXLEN = 10_000
#: How long (ms) a sent reply is kept to answer a redelivered request without a second
#: call: longer than any request waits.
REPLY_RECORD_MS = 10 * 60 * 1000
#: Sends of one event loop at once on a cluster, where each call goes on its own: many
#: concurrent ``arequest`` calls share a few connections instead of opening one each.
#: A single Redis needs no limit: the calls of one pass of the loop share one write.
MAX_CONCURRENT_SENDS = 8

VIAS = ("stream", "channel", "list")


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply: the responder's return value as ``data``, its ``headers`` and ``event_id``.

    A responder may return ``Reply(data, headers={...})`` to add headers of its own.
    """

    data: Any
    headers: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""


# Append the request only if a group of the stream has a live consumer: one whose worker
# heartbeat exists (ARGV[3] .. name; our workers, however long their stream was quiet),
# or, for consumers written without this package, one that touched the stream less
# than ARGV[1] ms ago. On a Redis Cluster the heartbeat keys live in other slots, which
# a script may not touch: ARGV[3] is then '' and the script returns the names of the
# consumers to look up instead of appending (the caller checks them, then appends).
_SEND_TO_STREAM = LuaScript("""
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return false end
local live = false
local names = {}
for _, group in ipairs(groups) do
  local gname
  for i = 1, #group, 2 do if group[i] == 'name' then gname = group[i + 1] end end
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], gname)) do
    local cname, idle
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then cname = consumer[i + 1] end
      if consumer[i] == 'idle' then idle = consumer[i + 1] end
    end
    if idle < tonumber(ARGV[1]) then
      live = true
      break
    end
    if ARGV[3] == '' then
      names[#names + 1] = cname
    elseif redis.call('EXISTS', ARGV[3] .. cname) == 1 then
      live = true
      break
    end
  end
  if live then break end
end
if not live then
  if #names > 0 then return names end
  return false
end
if ARGV[2] ~= '' then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
""")

# Append the request (ARGV[2]) to the list KEYS[1] only if one of the consumers named in
# KEYS[2] has a live worker heartbeat (ARGV[1] .. name): the check and the send in one
# round trip. Single Redis only: on a cluster the heartbeats live in other slots.
_SEND_TO_LIST = LuaScript("""
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. name) == 1 then
    return redis.call('RPUSH', KEYS[1], ARGV[2])
  end
end
return false
""")


class Inbox:
    """This process's reply stream and the thread that reads it.

    Callers register a correlation id before they send (``expect``) and wait on the
    returned future; the reader completes it. Created on first use, per process.
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.key = prefixed(
            config.key_prefix,
            inbox_name(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"),
        )
        self._waiting: dict[str, concurrent.futures.Future[dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="redis-broker-inbox", daemon=True)
        self._thread.start()

    def expect(self, correlation_id: str) -> concurrent.futures.Future[dict[str, str]]:
        """Return the future the reply to ``correlation_id`` will complete."""
        future: concurrent.futures.Future[dict[str, str]] = concurrent.futures.Future()
        with self._lock:
            self._waiting[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (answered, timed out or refused)."""
        with self._lock:
            self._waiting.pop(correlation_id, None)

    def close(self) -> None:
        """Stop the reader (it notices within a second)."""
        self._stop.set()

    def _read(self) -> None:
        """Read replies until closed; survive outages, resuming after the last id read."""
        last_id = "$"
        client: redis.Redis | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if client is None:
                    client = build_client(self.config)
                    if last_id == "$":  # the first read: nothing of ours can be there yet
                        last_id = "0-0"
                pipe = client.pipeline(transaction=False)
                pipe.expire(self.key, INBOX_TTL)
                pipe.xread({self.key: last_id}, count=1000, block=1000)
                _, reply = pipe.execute()
                failures = 0
            except CONNECTION_ERRORS + (redis.RedisError,) as exc:
                failures += 1
                if failures == 1:
                    logger.warning("Request inbox lost Redis (%s); reconnecting", exc)
                if client is not None:
                    client.close()
                    client = None
                self._stop.wait(min(0.05 * 2**failures, 1.0))
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = wire.reply_text(entry_id)
                    self._deliver(fields)
        if client is not None:
            client.close()

    def _deliver(self, raw: Mapping[Any, Any]) -> None:
        try:
            fields = wire.fields_as_text(raw)
            headers = wire.loads(fields.get(wire.HEADERS, "{}"), what="reply headers")
            correlation_id = str(headers.get(CORRELATION_ID, ""))
        except (MalformedEntry, AttributeError) as exc:
            logger.warning("Dropped a malformed reply in %s (%s)", self.key, exc)
            return
        with self._lock:
            future = self._waiting.pop(correlation_id, None)
        if future is not None and not future.done():
            future.set_result(fields)


_inbox: tuple[int, Inbox] | None = None
_inbox_lock = threading.Lock()
_send_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def get_inbox() -> Inbox:
    """Return this process's inbox, starting its reader on first use (and after a fork)."""
    global _inbox
    with _inbox_lock:
        if _inbox is None or _inbox[0] != os.getpid():
            _inbox = (os.getpid(), Inbox(get_config()))
        return _inbox[1]


def reset_inbox() -> None:
    """Stop this process's inbox reader; the next request starts a new one (tests)."""
    global _inbox
    with _inbox_lock:
        if _inbox is not None:
            _inbox[1].close()
        _inbox = None


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Start a new inbox, on the new settings, when a test overrides ``REDIS_BROKER``."""
    if setting == SETTING_NAME:
        reset_inbox()


def _request_headers(
    inbox: Inbox, correlation_id: str, timeout: float, headers: Mapping[str, Any] | None
) -> dict[str, Any]:
    merged = dict(headers or {})
    merged[REPLY_TO] = inbox.key
    merged[CORRELATION_ID] = correlation_id
    merged[DEADLINE] = int((time.time() + timeout) * 1000)
    return merged


def _check(via: str, timeout: float) -> None:
    if via not in VIAS:
        raise ValueError(f"via must be one of {', '.join(VIAS)}, not {via!r}.")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}.")


# Reply headers that are the protocol's, not the responder's (``Reply.headers`` omits them).
_NOT_OWN = frozenset({STATUS, CORRELATION_ID, wire.TRACEPARENT, wire.TRACESTATE})


def _reply(fields: Mapping[str, str], destination: str) -> Reply:
    """Return the reply in ``fields``, or raise the responder's error."""
    headers = wire.loads(fields.get(wire.HEADERS, "{}"), what="reply headers")
    data = wire.loads(fields.get(wire.DATA, "null"), what="reply")
    if headers.get(STATUS) == "error":
        _count(metrics.REMOTE_ERROR)
        error = data if isinstance(data, dict) else {}
        raise RemoteError(
            str(error.get("type", "Error")), str(error.get("message", "")), destination
        )
    own = {k: v for k, v in headers.items() if k not in _NOT_OWN}
    _count(metrics.REPLIED)
    return Reply(data, own, fields.get(wire.EVENT_ID, ""))


def _count(outcome: str) -> None:
    """Count a finished request in ``redis_broker_requests_total`` (unless METRICS is off)."""
    if get_config().metrics:
        metrics.count_request(outcome)


def request(
    destination: str,
    data: Any,
    *,
    timeout: float = 5.0,
    via: str = "stream",
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> Reply:
    """Send ``data`` to whatever consumes ``destination`` and return its reply.

    ``via`` is ``"stream"`` (the default), ``"channel"`` or ``"list"``. Raises
    ``NoResponders`` at once when nothing can answer, ``RemoteError`` when the handler
    failed for good, ``RequestTimeout`` after ``timeout`` seconds without a reply.
    Usable from any thread (a WSGI view, a sync consumer).
    """
    _check(via, timeout)
    inbox = get_inbox()
    correlation_id = uuid.uuid4().hex
    future = inbox.expect(correlation_id)
    try:
        with producing("request", destination, client=True, conversation_id=correlation_id) as span:
            merged = _request_headers(inbox, correlation_id, timeout, headers)
            message = _encode(via, data, type, span.headers(merged))
            if not _send_sync(via, destination, message):
                raise _nobody(via, destination)
            try:
                fields = future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise _too_slow(via, destination, timeout) from None
    finally:
        inbox.forget(correlation_id)
    return _reply(fields, destination)


async def arequest(
    destination: str,
    data: Any,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - the contract's name, the same as request()'s
    via: str = "stream",
    type: str = "",
    headers: Mapping[str, Any] | None = None,
) -> Reply:
    """Async twin of :func:`request`, for ASGI code and async consumers."""
    _check(via, timeout)
    inbox = get_inbox()
    correlation_id = uuid.uuid4().hex
    future = asyncio.wrap_future(inbox.expect(correlation_id))
    try:
        with producing("request", destination, client=True, conversation_id=correlation_id) as span:
            merged = _request_headers(inbox, correlation_id, timeout, headers)
            message = _encode(via, data, type, span.headers(merged))
            client = get_async_redis()
            async with atranslate_errors():
                if is_cluster(client):
                    async with _send_limit():
                        sent = await _send_async(client, via, destination, message)
                else:  # coalesced with the other calls of this pass (autopipeline.py)
                    sent = await _send_async(client, via, destination, message)
            if not sent:
                raise _nobody(via, destination)
            try:
                async with asyncio.timeout(timeout):
                    fields = await future
            except TimeoutError:
                raise _too_slow(via, destination, timeout) from None
    finally:
        inbox.forget(correlation_id)
    return _reply(fields, destination)


def _send_limit() -> asyncio.Semaphore:
    """Return the running loop's limit of sends at once (``MAX_CONCURRENT_SENDS``)."""
    loop = asyncio.get_running_loop()
    limit = _send_limits.get(loop)
    if limit is None:
        limit = _send_limits[loop] = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
    return limit


def _nobody(via: str, destination: str) -> NoResponders:
    _count(metrics.NO_RESPONDERS)
    return NoResponders(f"Nothing consumes {via} {destination!r}: no one can answer.")


def _too_slow(via: str, destination: str, timeout: float) -> RequestTimeout:
    _count(metrics.TIMEOUT)
    return RequestTimeout(f"No reply from {via} {destination!r} within {timeout} s.")


def _encode(via: str, data: Any, type: str, headers: Mapping[str, Any] | None) -> Any:
    if via == "stream":
        return wire.encode_entry(data, type=type, headers=headers)
    return wire.encode_message(data, type=type, headers=headers)


def responder_idle_ms(config: BrokerConfig) -> int:
    """Return how long (ms) a group's consumer without a worker heartbeat (a responder
    written without this package) may go without touching the stream and still count:
    three times the longest one of our workers with entries goes without (it reads every
    ``BLOCK_MS``, and renews its claims every ``CLAIM_IDLE_MS / 2``, at most 5 s).

    Redis 7.0 does not count an empty blocking read as activity, so such a responder
    counts only while its stream is busy; Redis 7.2 counts every read.
    """
    settings = config.consumers
    return 3 * max(settings.block_ms, min(settings.claim_idle_ms // 2, 5000))


def _stream_args(config: BrokerConfig, fields: Mapping[str, str]) -> list[Any]:
    maxlen = "" if config.stream_maxlen is None else config.stream_maxlen
    flat = [part for item in fields.items() for part in item]
    # + a consumer's name; none on a cluster, where the script may not read them.
    heartbeats = "" if config.cluster else worker_key(config.key_prefix, "")
    return [responder_idle_ms(config), maxlen, heartbeats, *flat]


def _heartbeats(config: BrokerConfig, names: list[Any]) -> list[str]:
    return [worker_key(config.key_prefix, wire.reply_text(name)) for name in names]


def _sent(client: redis.Redis, config: BrokerConfig, key: str, reply: Any, message: Any) -> bool:
    """Finish a send to a stream on a cluster: the script listed consumers to look up."""
    if not isinstance(reply, list):
        return reply is not None
    pipe = client.pipeline(transaction=False)
    for heartbeat in _heartbeats(config, reply):
        pipe.exists(heartbeat)
    if not any(pipe.execute()):
        return False
    client.xadd(key, message, **trim_args(config.stream_maxlen))
    return True


async def _asent(
    client: redis.asyncio.Redis, config: BrokerConfig, key: str, reply: Any, message: Any
) -> bool:
    """Async twin of :func:`_sent`."""
    if not isinstance(reply, list):
        return reply is not None
    pipe = client.pipeline(transaction=False)
    for heartbeat in _heartbeats(config, reply):
        pipe.exists(heartbeat)
    if not any(await pipe.execute()):
        return False
    await client.xadd(key, message, **trim_args(config.stream_maxlen))
    return True


def _send_sync(via: str, destination: str, message: Any) -> bool:
    """Send the request; return False when nothing can answer it."""
    config = get_config()
    key = prefixed(config.key_prefix, destination)
    client = get_redis()
    with translate_errors():
        if via == "stream":
            reply = _SEND_TO_STREAM.run(client, [key], _stream_args(config, message))
            return _sent(client, config, key, reply, message)
        if via == "channel":
            return pubsub_publish(client, key, message) > 0
        if not is_cluster(client):
            return _SEND_TO_LIST.run(client, *_list_args(config, destination, message)) is not None
        if not _list_has_responders(client, config, destination):
            return False
        client.rpush(key, message)
        return True


async def _send_async(
    client: redis.asyncio.Redis, via: str, destination: str, message: Any
) -> bool:
    """Async twin of :func:`_send_sync`: on a single Redis, one coalesced round trip."""
    config = get_config()
    key = prefixed(config.key_prefix, destination)
    if via == "stream":
        reply = await arun_script(client, _SEND_TO_STREAM, [key], _stream_args(config, message))
        return await _asent(client, config, key, reply, message)
    if via == "channel":
        return int(await acall(client, publish_command(client), key, message)) > 0
    if not is_cluster(client):
        keys, args = _list_args(config, destination, message)
        return await arun_script(client, _SEND_TO_LIST, keys, args) is not None
    names = await client.smembers(prefixed(config.key_prefix, list_consumers_name(destination)))
    if not names:
        return False
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(worker_key(config.key_prefix, wire.reply_text(name)))
    if not any(await pipe.execute()):
        return False
    await client.rpush(key, message)
    return True


def _list_args(config: BrokerConfig, destination: str, message: Any) -> tuple[list[str], list[Any]]:
    """Return the keys and arguments of ``_SEND_TO_LIST`` for a request to a list."""
    key = prefixed(config.key_prefix, destination)
    consumers = prefixed(config.key_prefix, list_consumers_name(destination))
    return [key, consumers], [worker_key(config.key_prefix, ""), message]


def _list_has_responders(client: redis.Redis, config: BrokerConfig, destination: str) -> bool:
    """Return True when a worker of the list's consumer is alive (its heartbeat is there)."""
    names = client.smembers(prefixed(config.key_prefix, list_consumers_name(destination)))
    if not names:
        return False
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(worker_key(config.key_prefix, wire.reply_text(name)))
    return any(pipe.execute())


# -- the responder's side (used by the consumer workers) ---------------------------------


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Where a request's reply goes, how it is matched, and until when it is wanted."""

    reply_to: str
    correlation_id: str
    deadline_ms: int | None


def request_info(headers: Mapping[str, Any]) -> RequestInfo | None:
    """Return the request fields of a message's headers, or None for a plain message."""
    reply_to, correlation_id = headers.get(REPLY_TO), headers.get(CORRELATION_ID)
    if not isinstance(reply_to, str) or not reply_to or correlation_id is None:
        return None
    deadline = headers.get(DEADLINE)
    deadline_ms = int(deadline) if isinstance(deadline, (int, float)) else None
    return RequestInfo(reply_to, str(correlation_id), deadline_ms)


def reply_fields(
    result: Any, correlation_id: str, trace: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the reply entry for a handler's return value (a ``Reply`` adds headers).

    ``trace`` is the handler call's ``traceparent`` (``tracing.message_carrier``).
    """
    data, extra = (result.data, result.headers) if isinstance(result, Reply) else (result, {})
    headers = {**extra, **(trace or {}), CORRELATION_ID: correlation_id, STATUS: "ok"}
    return wire.encode_entry(data, headers=headers)


def error_fields(
    exc: BaseException, correlation_id: str, trace: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the reply entry telling the caller that the handler failed for good."""
    error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    headers = {**(trace or {}), CORRELATION_ID: correlation_id, STATUS: "error"}
    return wire.encode_entry(error, headers=headers)
