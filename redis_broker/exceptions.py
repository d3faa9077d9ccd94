"""Exceptions raised by django-redis-broker.

Every error a user may want to catch derives from :class:`RedisBrokerError`, so one
``except RedisBrokerError`` covers the app without swallowing unrelated bugs.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class RedisBrokerError(Exception):
    """Base class of every error raised by django-redis-broker."""


class ConfigurationError(RedisBrokerError, ImproperlyConfigured):
    """A ``REDIS_BROKER`` value is wrong.

    Carries the key path and the system-check id, so ``manage.py check`` and runtime
    report the same problem in the same words.
    """

    def __init__(self, key: str, message: str, *, check_id: str, hint: str | None = None):
        self.key = key
        self.check_id = check_id
        self.hint = hint
        self.detail = message
        super().__init__(f"REDIS_BROKER{key}: {message}" + (f" ({hint})" if hint else ""))


class BrokerUnavailable(RedisBrokerError, ConnectionError):
    """Redis could not be reached (or did not answer in time).

    The message names the URL with any password masked, so it is safe to log, and the
    likely cause when redis-py only reports a symptom: a TLS mismatch, a missing or
    wrong password.
    """


class WriteRefused(BrokerUnavailable):
    """Redis is up but refused a write: memory full (OOM) or a read-only replica (READONLY).

    The message names the stream or channel, quotes Redis's reason and says what to
    change (``maxmemory`` / ``maxmemory-policy``, or the primary's URL). A subclass of
    ``BrokerUnavailable``: for the caller, the event did not get into Redis either way.
    """


class Reject(RedisBrokerError):
    """Raise from a stream consumer to dead-letter the entry at once, without retries."""


class MalformedEntry(RedisBrokerError, ValueError):
    """A stream entry or Pub/Sub message does not follow the documented wire format."""


class ConsumerGroupMissing(RedisBrokerError):
    """Redis answered NOGROUP: the stream or its consumer group vanished (flush, eviction, restart).

    The runner re-creates the group; the message says what happened and what to check.
    """


class ConsumerDefinitionError(RedisBrokerError, ImproperlyConfigured):
    """A ``@stream_consumer`` has a bad argument or clashes with another one.

    The message starts with the handler's dotted path, so the culprit is found at once.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ConsumerNameInUse(RedisBrokerError):
    """Another live ``runconsumers`` process already runs under this consumer name.

    Two processes with one name would share one pending list and each handle what the
    other has in flight, so the second one is refused at start.
    """


class NoResponders(RedisBrokerError):
    """A request found nothing that could answer it: no subscriber, group or live worker."""


class RemoteError(RedisBrokerError):
    """The responder's handler failed for good on a request (``Reject``, retries spent).

    ``type`` and ``message`` are the handler's exception's class name and text.
    """

    def __init__(self, type: str, message: str, destination: str = "") -> None:
        self.type = type
        self.message = message
        self.destination = destination
        where = f" ({destination})" if destination else ""
        super().__init__(f"{type}: {message}{where}")


class RequestTimeout(RedisBrokerError, TimeoutError):
    """No reply came within the request's timeout (the responder is slow, or died)."""
