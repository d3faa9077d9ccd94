"""The object a stream consumer's handler receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_new = object.__new__
_set = object.__setattr__


@dataclass(frozen=True)
class StreamMessage:
    """One stream entry as delivered to a handler.

    ``stream`` is the name the consumer was registered with (without ``KEY_PREFIX``);
    ``data`` is the decoded JSON payload; ``fields`` holds every field of the entry as
    text, including ones other producers added. ``delivery_count`` is 1 on the first
    delivery and grows with each retry or reclaim.
    """

    id: str
    stream: str
    group: str
    data: Any
    type: str
    event_id: str
    headers: dict[str, Any]
    published_at: str
    delivery_count: int
    fields: dict[str, str]

    @classmethod
    def build(
        cls,
        id: str,
        stream: str,
        group: str,
        data: Any,
        type: str,
        event_id: str,
        headers: dict[str, Any],
        published_at: str,
        delivery_count: int,
        fields: dict[str, str],
    ) -> StreamMessage:
        """Return a message like the constructor does, at a third of its cost.

        The frozen ``__init__`` sets each of the ten fields through ``object.__setattr__``;
        the consumer builds one message per entry, so it fills ``__dict__`` in one step
        (bench/consume.py).
        """
        message = _new(cls)
        _set(
            message,
            "__dict__",
            {
                "id": id,
                "stream": stream,
                "group": group,
                "data": data,
                "type": type,
                "event_id": event_id,
                "headers": headers,
                "published_at": published_at,
                "delivery_count": delivery_count,
                "fields": fields,
            },
        )
        return message
