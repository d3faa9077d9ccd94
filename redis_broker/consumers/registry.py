"""The consumer decorators: register handlers as validated specs; find them in installed apps.

``@stream_consumer``, ``@channel_consumer`` and ``@list_consumer`` each make a spec of
their kind; one registry holds them all.

Registration happens at import time and does no I/O. ``runconsumers`` imports the
``consumers`` module of every installed app (``autodiscover()``, like the admin's
``admin.py`` discovery), so web processes never import worker code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from django.utils.module_loading import autodiscover_modules

from ..exceptions import ConsumerDefinitionError
from ..naming import PATTERN_RE, is_valid_channel, is_valid_key_name
from ..payloads import Payload, declared_payload, declared_reply

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


#: A ``{name}`` part of a channel consumer's pattern: a wildcard passed as a keyword.
PARAMETER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,49})\}")


def _valid_name(path: str, label: str, value: Any) -> None:
    # Keys (streams, lists, outputs) may hold a hash tag; a group name is no key.
    valid = is_valid_channel(value) or (label != "group" and is_valid_key_name(value))
    if not valid:
        raise ConsumerDefinitionError(
            path,
            f"{label} {value!r} is not a valid name (letters, digits and . _ : -, at most "
            "200 characters; a stream or list name may hold one {hash tag}).",
        )


def _valid_output(path: str, output: Any) -> None:
    if output is not None:
        _valid_name(path, "output", output)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """What every registered handler has, whatever it reads (validated on creation).

    ``concurrency`` left at None falls back to ``REDIS_BROKER["CONSUMERS"]``; ``output``
    names a stream each non-None return value is appended to. ``payload`` is the type
    the handler declares for ``message.data`` (``schema=``, else its ``StreamMessage[T]``
    annotation), ``reply`` the type its return annotation gives replies and outputs; both
    None when undeclared (``payloads.py``).
    """

    func: Callable[..., Any]
    name: str
    concurrency: int | None = None
    output: str | None = None
    no_reply: bool = False
    schema: Any = None
    payload: Payload | None = field(init=False, default=None)
    reply: Payload | None = field(init=False, default=None)

    #: "stream", "channel" or "list": what the consumer reads.
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        path = self.path
        if not callable(self.func):
            raise ConsumerDefinitionError(path, "the handler is not callable.")
        if not isinstance(self.name, str) or not self.name:
            raise ConsumerDefinitionError(path, f"name must be a non-empty str, not {self.name!r}.")
        _positive(path, "concurrency", self.concurrency)
        _valid_output(path, self.output)
        self._check_signature(self.keywords())
        object.__setattr__(self, "payload", declared_payload(self.func, self.schema, path))
        object.__setattr__(self, "reply", declared_reply(self.func, path))

    def keywords(self) -> tuple[str, ...]:
        """Return the keyword arguments the handler is called with besides the message."""
        return ()

    def _check_signature(self, keywords: tuple[str, ...]) -> None:
        try:
            signature = inspect.signature(self.func)
        except (TypeError, ValueError):  # some builtins have no signature; trust them
            return
        try:
            signature.bind(None, **dict.fromkeys(keywords))
        except TypeError:
            wanted = "one positional argument (the message)"
            if keywords:
                wanted += " and the keyword arguments " + ", ".join(keywords)
            raise ConsumerDefinitionError(
                self.path, f"the handler must accept {wanted}; its signature is {signature}."
            ) from None

    @property
    def path(self) -> str:
        """Return the handler's dotted path."""
        return dotted_path(self.func)

    @property
    def is_async(self) -> bool:
        """Return True for ``async def`` handlers (awaited on the loop), False for threads."""
        return inspect.iscoroutinefunction(self.func)

    @property
    def source(self) -> str:
        """Return what the consumer reads: a stream, a channel pattern or a list."""
        raise NotImplementedError

    def matches(self, selector: str) -> bool:
        """Return True when ``selector`` names this consumer: its name or its source."""
        return selector in (self.name, self.source)

    def clashes_with(self, other: ConsumerSpec) -> str | None:
        """Return why ``other`` cannot be registered beside this spec, or None."""
        if other.name == self.name:
            return f"the name {self.name!r} is already used by {other.path}."
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConsumerSpec(ConsumerSpec):
    """A ``@stream_consumer``: one (stream, group) and its options.

    ``batch_size`` left at None falls back to ``REDIS_BROKER["CONSUMERS"]``; ``start`` is
    where a new group begins.
    """

    stream: str
    group: str
    batch_size: int | None = None
    start: str = "0"

    kind: ClassVar[str] = "stream"

    def __post_init__(self) -> None:
        path = self.path
        _valid_name(path, "stream", self.stream)
        _valid_name(path, "group", self.group)
        _positive(path, "batch_size", self.batch_size)
        if not isinstance(self.start, str) or not START_RE.fullmatch(self.start):
            raise ConsumerDefinitionError(
                path, f'start must be "0", "$" or an entry id, not {self.start!r}.'
            )
        ConsumerSpec.__post_init__(self)

    @property
    def source(self) -> str:
        """Return the stream."""
        return self.stream

    def matches(self, selector: str) -> bool:
        """Return True for the consumer's name, its stream, or ``stream:group``."""
        return selector in (self.name, self.stream, f"{self.stream}:{self.group}")

    def clashes_with(self, other: ConsumerSpec) -> str | None:
        """Two handlers in one group would each see only part of the stream."""
        if isinstance(other, StreamConsumerSpec) and (other.stream, other.group) == (
            self.stream,
            self.group,
        ):
            return (
                f"stream {self.stream!r} already has a consumer in group {self.group!r}: "
                f"{other.path}. Give one of them another group."
            )
        return ConsumerSpec.clashes_with(self, other)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConsumerSpec(ConsumerSpec):
    """A ``@channel_consumer``: a Pub/Sub channel, or a pattern of them.

    A plain name is SUBSCRIBEd. ``*`` and ``?`` globs and ``{name}`` parts make it a
    pattern (PSUBSCRIBE, with each ``{name}`` read as ``*``); the text a ``{name}`` part
    matched is passed to the handler as that keyword argument.
    """

    pattern: str

    kind: ClassVar[str] = "channel"

    def __post_init__(self) -> None:
        glob = PARAMETER_RE.sub("*", self.pattern) if isinstance(self.pattern, str) else None
        if glob is None or not PATTERN_RE.fullmatch(glob):
            raise ConsumerDefinitionError(
                self.path,
                f"pattern {self.pattern!r} is not a channel name or pattern (letters, digits, "
                ". _ : -, the wildcards * and ?, and {name} parts; at most 200 characters).",
            )
        names = self.keywords()
        if len(set(names)) != len(names):
            raise ConsumerDefinitionError(self.path, f"pattern {self.pattern!r} repeats a name.")
        ConsumerSpec.__post_init__(self)

    def keywords(self) -> tuple[str, ...]:
        """Return the names of the pattern's ``{name}`` parts, in order."""
        return tuple(PARAMETER_RE.findall(self.pattern))

    @property
    def source(self) -> str:
        """Return the pattern as written."""
        return self.pattern

    @property
    def subscription(self) -> str:
        """Return what to (P)SUBSCRIBE: the pattern with each ``{name}`` read as ``*``."""
        return PARAMETER_RE.sub("*", self.pattern)

    @property
    def is_pattern(self) -> bool:
        """Return True when the consumer needs PSUBSCRIBE."""
        return self.subscription != self.pattern or any(c in self.pattern for c in "*?")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListConsumerSpec(ConsumerSpec):
    """A ``@list_consumer``: a Redis list used as a work queue.

    ``batch_size`` (items taken per round trip) left at None falls back to
    ``REDIS_BROKER["CONSUMERS"]``.
    """

    list: str
    batch_size: int | None = None

    kind: ClassVar[str] = "list"

    def __post_init__(self) -> None:
        _valid_name(self.path, "list", self.list)
        _positive(self.path, "batch_size", self.batch_size)
        ConsumerSpec.__post_init__(self)

    @property
    def source(self) -> str:
        """Return the list."""
        return self.list

    def clashes_with(self, other: ConsumerSpec) -> str | None:
        """Two handlers on one list would each see only part of its items."""
        if isinstance(other, ListConsumerSpec) and other.list == self.list:
            return f"list {self.list!r} already has a consumer: {other.path}."
        return ConsumerSpec.clashes_with(self, other)


class ConsumerRegistry:
    """The set of registered consumers of every kind, keyed by handler path.

    Registering the same path again replaces the spec (a re-imported module); a spec that
    clashes with another (two handlers in one stream group or on one list would each see
    only part of it; two consumers with one name could not be told apart) is an error.
    """

    def __init__(self) -> None:
        self._specs: dict[str, ConsumerSpec] = {}

    def register(self, spec: ConsumerSpec) -> None:
        """Add ``spec``; raise ``ConsumerDefinitionError`` when it clashes with another."""
        path = spec.path
        for other in self._specs.values():
            if other.path != path and (why := spec.clashes_with(other)):
                raise ConsumerDefinitionError(path, why)
        self._specs[path] = spec

    def _decorator(
        self, kind: type[ConsumerSpec], name: str | None, **options: Any
    ) -> Callable[[F], F]:
        """Return a decorator that registers a ``kind`` spec of ``func`` and returns ``func``."""

        def decorate(func: F) -> F:
            spec_name = getattr(func, "__name__", "") if name is None else name
            self.register(kind(func=func, name=spec_name, **options))
            return func

        return decorate

    def stream_consumer(
        self,
        stream: str,
        *,
        group: str,
        name: str | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        start: str = "0",
        output: str | None = None,
        no_reply: bool = False,
        schema: Any = None,
    ) -> Callable[[F], F]:
        """Return a decorator registering a stream consumer here (see :func:`stream_consumer`)."""
        return self._decorator(
            StreamConsumerSpec,
            name,
            stream=stream,
            group=group,
            batch_size=batch_size,
            concurrency=concurrency,
            start=start,
            output=output,
            no_reply=no_reply,
            schema=schema,
        )

    def channel_consumer(
        self,
        pattern: str,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        output: str | None = None,
        no_reply: bool = False,
        schema: Any = None,
    ) -> Callable[[F], F]:
        """Return a decorator registering a channel consumer (see :func:`channel_consumer`)."""
        return self._decorator(
            ChannelConsumerSpec,
            name,
            pattern=pattern,
            concurrency=concurrency,
            output=output,
            no_reply=no_reply,
            schema=schema,
        )

    def list_consumer(
        self,
        list_name: str,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        output: str | None = None,
        no_reply: bool = False,
        schema: Any = None,
    ) -> Callable[[F], F]:
        """Return a decorator registering a list consumer here (see :func:`list_consumer`)."""
        return self._decorator(
            ListConsumerSpec,
            name,
            list=list_name,
            batch_size=batch_size,
            concurrency=concurrency,
            output=output,
            no_reply=no_reply,
            schema=schema,
        )

    def all(self) -> list[ConsumerSpec]:
        """Return every registered spec, in registration order."""
        return list(self._specs.values())

    def select(self, selectors: Iterable[str]) -> list[ConsumerSpec]:
        """Return the specs named by ``selectors`` (all when empty).

        Raises ``LookupError`` naming a selector that matches nothing, with the choices.
        """
        selectors = list(selectors)
        if not selectors:
            return self.all()
        chosen: list[ConsumerSpec] = []
        for selector in selectors:
            found = [spec for spec in self._specs.values() if spec.matches(selector)]
            if not found:
                known = ", ".join(describe_spec(s) for s in self.all())
                raise LookupError(f"No consumer is called {selector!r}. Known: {known or 'none'}.")
            chosen.extend(spec for spec in found if spec not in chosen)
        return chosen


def describe_spec(spec: ConsumerSpec) -> str:
    """Return ``name (what it reads)``, as the command lists consumers."""
    if isinstance(spec, StreamConsumerSpec):
        return f"{spec.name} ({spec.stream}:{spec.group})"
    return f"{spec.name} ({spec.kind} {spec.source})"


#: The process-wide registry the decorators write to.
registry = ConsumerRegistry()


def stream_consumer(
    stream: str,
    *,
    group: str,
    name: str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    start: str = "0",
    output: str | None = None,
    no_reply: bool = False,
    schema: Any = None,
) -> Callable[[F], F]:
    """Register a sync or async function as the consumer of ``stream`` in ``group``.

    The function is returned unchanged. ``name`` (default: the function's name) selects it
    on the ``runconsumers`` command line; ``batch_size`` and ``concurrency`` override the
    ``CONSUMERS`` settings for this consumer; ``start`` is where a new group begins
    (``"0"``: events published before the first start are processed too); ``output``
    names a stream each non-None return value is appended to, in the same atomic step
    as the input's ack; ``no_reply=True`` never answers requests (see ``request()``).
    ``schema`` (a dataclass, TypedDict or pydantic model) types ``message.data`` where the
    handler's ``StreamMessage[T]`` annotation does not; a payload that does not convert
    is dead-lettered at once (``payloads.py``).
    """
    return registry.stream_consumer(
        stream,
        group=group,
        name=name,
        batch_size=batch_size,
        concurrency=concurrency,
        start=start,
        output=output,
        no_reply=no_reply,
        schema=schema,
    )


def channel_consumer(
    pattern: str,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    output: str | None = None,
    no_reply: bool = False,
    schema: Any = None,
) -> Callable[[F], F]:
    """Register a sync or async function as a consumer of Pub/Sub channel ``pattern``.

    A plain name subscribes to that channel; ``*``/``?`` globs and ``{name}`` parts
    subscribe to a pattern, and each ``{name}`` part's text is passed to the handler as
    a keyword argument: ``@channel_consumer("prices.{symbol}")`` calls
    ``handler(message, symbol="ABC")`` for ``prices.ABC``. At-most-once, as Pub/Sub is.
    """
    return registry.channel_consumer(
        pattern,
        name=name,
        concurrency=concurrency,
        output=output,
        no_reply=no_reply,
        schema=schema,
    )


def list_consumer(
    list_name: str,
    *,
    name: str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    output: str | None = None,
    no_reply: bool = False,
    schema: Any = None,
) -> Callable[[F], F]:
    """Register a sync or async function as the consumer of the Redis list ``list_name``.

    At-least-once: each item is moved atomically to this worker's processing list and
    removed when the handler returns; retries, dead letters and a dead worker's items
    work as for streams (see the README).
    """
    return registry.list_consumer(
        list_name,
        name=name,
        batch_size=batch_size,
        concurrency=concurrency,
        output=output,
        no_reply=no_reply,
        schema=schema,
    )


def autodiscover() -> list[ConsumerSpec]:
    """Import ``<app>.consumers`` of every installed app; return all registered specs."""
    autodiscover_modules("consumers")
    return registry.all()
