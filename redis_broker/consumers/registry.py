"""``@stream_consumer``: register handlers as validated specs, and find them in installed apps.

Registration happens at import time and does no I/O. ``runconsumers`` imports the
``consumers`` module of every installed app (``autodiscover()``, like the admin's
``admin.py`` discovery), so web processes never import worker code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.utils.module_loading import autodiscover_modules

from ..exceptions import ConsumerDefinitionError
from ..naming import is_valid_channel

F = TypeVar("F", bound=Callable[..., Any])

#: Where a new group starts reading: "0" (the whole stream), "$" (only new entries) or an id.
START_RE = re.compile(r"0|\$|\d+(?:-\d+)?")


def dotted_path(func: Callable[..., Any]) -> str:
    """Return ``module.qualname`` of ``func``, the name errors and the command show."""
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _positive(path: str, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConsumerDefinitionError(
            path, f"{name} must be a positive int or None, not {value!r}."
        )


@dataclass(frozen=True, slots=True)
class StreamConsumerSpec:
    """One registered handler and its per-consumer options (validated on creation).

    ``batch_size`` and ``concurrency`` left at None fall back to ``REDIS_BROKER["CONSUMERS"]``.
    """

    func: Callable[..., Any]
    stream: str
    group: str
    name: str
    batch_size: int | None = None
    concurrency: int | None = None
    start: str = "0"

    def __post_init__(self) -> None:
        path = self.path
        if not callable(self.func):
            raise ConsumerDefinitionError(path, "the handler is not callable.")
        for label, value in (("stream", self.stream), ("group", self.group)):
            if not is_valid_channel(value):
                raise ConsumerDefinitionError(
                    path,
                    f"{label} {value!r} is not a valid name "
                    "(letters, digits and . _ : -, at most 200 characters).",
                )
        if not isinstance(self.name, str) or not self.name:
            raise ConsumerDefinitionError(path, f"name must be a non-empty str, not {self.name!r}.")
        _positive(path, "batch_size", self.batch_size)
        _positive(path, "concurrency", self.concurrency)
        if not isinstance(self.start, str) or not START_RE.fullmatch(self.start):
            raise ConsumerDefinitionError(
                path, f'start must be "0", "$" or an entry id, not {self.start!r}.'
            )
        try:
            signature = inspect.signature(self.func)
        except (TypeError, ValueError):  # some builtins have no signature; trust them
            return
        try:
            signature.bind(None)
        except TypeError:
            raise ConsumerDefinitionError(
                path,
                "the handler must accept one positional argument (the message); "
                f"its signature is {signature}.",
            ) from None

    @property
    def path(self) -> str:
        """Return the handler's dotted path."""
        return dotted_path(self.func)

    @property
    def is_async(self) -> bool:
        """Return True for ``async def`` handlers (awaited on the loop), False for threads."""
        return inspect.iscoroutinefunction(self.func)

    def matches(self, selector: str) -> bool:
        """Return True when ``selector`` names this consumer: its name, stream or stream:group."""
        return selector in (self.name, self.stream, f"{self.stream}:{self.group}")


class ConsumerRegistry:
    """The set of registered consumers, keyed by handler path.

    Registering the same path again replaces the spec (a re-imported module); a second
    handler for the same stream and group, or under the same name, is an error: two
    handlers in one group would each see only part of the stream.
    """

    def __init__(self) -> None:
        self._specs: dict[str, StreamConsumerSpec] = {}

    def register(self, spec: StreamConsumerSpec) -> None:
        """Add ``spec``; raise ``ConsumerDefinitionError`` when it clashes with another."""
        path = spec.path
        for other in self._specs.values():
            if other.path == path:
                continue
            if (other.stream, other.group) == (spec.stream, spec.group):
                raise ConsumerDefinitionError(
                    path,
                    f"stream {spec.stream!r} already has a consumer in group {spec.group!r}: "
                    f"{other.path}. Give one of them another group.",
                )
            if other.name == spec.name:
                raise ConsumerDefinitionError(
                    path, f"the name {spec.name!r} is already used by {other.path}."
                )
        self._specs[path] = spec

    def stream_consumer(
        self,
        stream: str,
        *,
        group: str,
        name: str | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        start: str = "0",
    ) -> Callable[[F], F]:
        """Return a decorator registering a handler here (see :func:`stream_consumer`)."""

        def decorator(func: F) -> F:
            spec = StreamConsumerSpec(
                func=func,
                stream=stream,
                group=group,
                name=getattr(func, "__name__", "") if name is None else name,
                batch_size=batch_size,
                concurrency=concurrency,
                start=start,
            )
            self.register(spec)
            return func

        return decorator

    def all(self) -> list[StreamConsumerSpec]:
        """Return every registered spec, in registration order."""
        return list(self._specs.values())

    def select(self, selectors: Iterable[str]) -> list[StreamConsumerSpec]:
        """Return the specs named by ``selectors`` (all when empty).

        Raises ``LookupError`` naming a selector that matches nothing, with the choices.
        """
        selectors = list(selectors)
        if not selectors:
            return self.all()
        chosen: list[StreamConsumerSpec] = []
        for selector in selectors:
            found = [spec for spec in self._specs.values() if spec.matches(selector)]
            if not found:
                known = ", ".join(f"{s.name} ({s.stream}:{s.group})" for s in self.all())
                raise LookupError(f"No consumer is called {selector!r}. Known: {known or 'none'}.")
            chosen.extend(spec for spec in found if spec not in chosen)
        return chosen


#: The process-wide registry ``@stream_consumer`` writes to.
registry = ConsumerRegistry()


def stream_consumer(
    stream: str,
    *,
    group: str,
    name: str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    start: str = "0",
) -> Callable[[F], F]:
    """Register a sync or async function as the consumer of ``stream`` in ``group``.

    The function is returned unchanged. ``name`` (default: the function's name) selects it
    on the ``runconsumers`` command line; ``batch_size`` and ``concurrency`` override the
    ``CONSUMERS`` settings for this consumer; ``start`` is where a new group begins
    (``"0"``: events published before the first start are processed too).
    """
    return registry.stream_consumer(
        stream,
        group=group,
        name=name,
        batch_size=batch_size,
        concurrency=concurrency,
        start=start,
    )


def autodiscover() -> list[StreamConsumerSpec]:
    """Import ``<app>.consumers`` of every installed app; return all registered specs."""
    autodiscover_modules("consumers")
    return registry.all()
