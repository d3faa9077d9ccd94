"""The object every consumer's handler receives, generic in the type of its ``data``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic

if TYPE_CHECKING:
    # A default of Any keeps a bare ``StreamMessage`` meaning ``StreamMessage[Any]`` under
    # mypy's strict mode (no "missing type parameters"), as it always did. Python 3.11's
    # own TypeVar has no default, and typing_extensions is no dependency of ours, so only
    # the type checker sees it (its stubs ship with mypy).
    from typing_extensions import TypeVar

    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


@dataclass(frozen=True)
class StreamMessage(Generic[T]):
    """One stream entry, channel message or list item as delivered to a handler.

    ``stream`` is the name the consumer was registered with (without ``KEY_PREFIX``), or
    the channel or list for those kinds; ``data`` is the decoded JSON payload, or, when
    the handler declares a type (``message: StreamMessage[Order]`` or ``schema=Order``),
    an ``Order`` built and checked from it (``payloads.py``). ``fields`` holds every field
    of a stream entry as text, including ones other producers added. ``delivery_count``
    is 1 on the first delivery and grows with each retry or reclaim.
    """

    id: str
    stream: str
    group: str
    data: T
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
        data: T,
        type: str,
        event_id: str,
        headers: dict[str, Any],
        published_at: str,
        delivery_count: int,
        fields: dict[str, str],
    ) -> StreamMessage[T]:
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
