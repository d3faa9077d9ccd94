"""django-redis-broker: Redis Streams and Pub/Sub messaging for Django.

The public names below are imported lazily, so ``import redis_broker`` reads no
settings and opens no connection; that keeps it safe in ``settings.py`` and app loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "ConsumerDefinitionError",
    "ConsumerGroupMissing",
    "ConsumerNameInUse",
    "NoResponders",
    "RedisBrokerError",
    "Reject",
    "RemoteError",
    "Reply",
    "RequestTimeout",
    "StreamMessage",
    "WriteRefused",
    "abroadcast",
    "apublish",
    "apublish_many",
    "apush",
    "arequest",
    "broadcast",
    "channel_consumer",
    "get_async_redis",
    "get_redis",
    "list_consumer",
    "publish",
    "publish_many",
    "publish_model_event",
    "publisher",
    "push",
    "request",
    "stream_consumer",
]

_LAZY = {
    "BrokerUnavailable": "redis_broker.exceptions",
    "ConfigurationError": "redis_broker.exceptions",
    "ConsumerDefinitionError": "redis_broker.exceptions",
    "ConsumerGroupMissing": "redis_broker.exceptions",
    "ConsumerNameInUse": "redis_broker.exceptions",
    "NoResponders": "redis_broker.exceptions",
    "RemoteError": "redis_broker.exceptions",
    "RequestTimeout": "redis_broker.exceptions",
    "Reply": "redis_broker.requests",
    "request": "redis_broker.requests",
    "arequest": "redis_broker.requests",
    "RedisBrokerError": "redis_broker.exceptions",
    "Reject": "redis_broker.exceptions",
    "StreamMessage": "redis_broker.consumers.message",
    "WriteRefused": "redis_broker.exceptions",
    "abroadcast": "redis_broker.publishing",
    "apush": "redis_broker.publishing",
    "push": "redis_broker.publishing",
    "channel_consumer": "redis_broker.consumers.registry",
    "list_consumer": "redis_broker.consumers.registry",
    "apublish": "redis_broker.publishing",
    "apublish_many": "redis_broker.publishing",
    "broadcast": "redis_broker.publishing",
    "get_async_redis": "redis_broker.connection",
    "get_redis": "redis_broker.connection",
    "publish": "redis_broker.publishing",
    "publish_many": "redis_broker.publishing",
    "publish_model_event": "redis_broker.model_events",
    "publisher": "redis_broker.publishers",
    "stream_consumer": "redis_broker.consumers.registry",
}

if TYPE_CHECKING:
    from .connection import get_async_redis, get_redis
    from .consumers.message import StreamMessage
    from .consumers.registry import channel_consumer, list_consumer, stream_consumer
    from .exceptions import (
        BrokerUnavailable,
        ConfigurationError,
        ConsumerDefinitionError,
        ConsumerGroupMissing,
        ConsumerNameInUse,
        NoResponders,
        RedisBrokerError,
        Reject,
        RemoteError,
        RequestTimeout,
        WriteRefused,
    )
    from .model_events import publish_model_event
    from .publishers import publisher
    from .publishing import (
        abroadcast,
        apublish,
        apublish_many,
        apush,
        broadcast,
        publish,
        publish_many,
        push,
    )
    from .requests import Reply, arequest, request


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'redis_broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
