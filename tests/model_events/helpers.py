"""Helpers of the model-event tests: read streams back, override the broker settings."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.test import override_settings

from redis_broker import wire
from redis_broker.wire import DecodedEntry


def read_stream(client: redis.Redis, stream: str) -> list[DecodedEntry]:
    """Return every entry of ``stream``, oldest first, decoded with the wire format."""
    return [wire.decode_entry(fields) for _id, fields in client.xrange(stream)]


def broker_settings(**changes: Any) -> override_settings:
    """Return an override of ``REDIS_BROKER`` with ``changes`` on top of the current value."""
    return override_settings(REDIS_BROKER={**settings.REDIS_BROKER, **changes})


def model_events(**specs: dict[str, Any]) -> override_settings:
    """Return an override replacing some ``MODEL_EVENTS`` entries (``testapp__Order={...}``)."""
    current = dict(settings.REDIS_BROKER["MODEL_EVENTS"])
    current.update({label.replace("__", "."): spec for label, spec in specs.items()})
    return broker_settings(MODEL_EVENTS=current)
