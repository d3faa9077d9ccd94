"""Declared publishers: what a project sends besides its consumers' outputs.

::

    from redis_broker import publisher

    orders_out = publisher(
        "orders", schema=OrderCreated, type="order.created", description="Each paid order."
    )
    orders_out.publish(OrderCreated(...))  # publish("orders", ..., type="order.created")

A publisher says where it sends (``via``: a stream, a Pub/Sub channel or a list), what
(``schema``: a dataclass, ``TypedDict`` or pydantic model) and, for requests, what it
expects back (``reply``). Its ``publish()``/``apublish()`` call ``publish``,
``broadcast`` or ``push`` (and their async twins); ``request()``/``arequest()`` call
``request``/``arequest`` with its ``via``. The AsyncAPI document (``asyncapi.py``) shows
each as a ``send`` operation, which is why it exists: code that calls ``publish()``
directly sends the same bytes, but the document cannot see it.

A channel's name may hold ``{name}`` parts, filled in on each call by keyword:
``publisher("user.{user_id}", via="channel")`` then ``.publish(data, user_id=7)``. A stream
or list name is a Redis key, whose braces are a hash tag, so it has no parts.

Publishers are declared at import time, in an app's ``publishers`` module or anywhere
else that gets imported; ``autodiscover()`` imports ``<app>.publishers`` of every
installed app, as ``runconsumers`` imports ``consumers``. Declaring does no I/O and
reads no settings.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import autodiscover_modules

from . import publishing, requests
from .consumers.registry import PARAMETER_RE
from .naming import is_valid_channel, is_valid_key_name
from .payloads import Payload, to_builtins

VIAS = ("stream", "channel", "list")
#: Keyword arguments of the calls, which a ``{name}`` part cannot be called.
_RESERVED = frozenset({"data", "type", "headers", "timeout"})
#: Payloads sent as they are: JSON already (anything else is converted first).
_PLAIN = (dict, list, str, int, float, bool, type(None))


@dataclass(frozen=True, eq=False, kw_only=True)
class Publisher:
    """A declared sender: where it sends, what, and what it expects back (validated).

    ``name`` (default: the address) tells publishers apart in the document; ``type`` is
    the event type every call sends unless it passes its own.
    """

    address: str
    via: str = "stream"
    schema: Any = None
    reply: Any = None
    type: str = ""
    description: str = ""
    name: str = ""
    module: str = ""
    payload: Payload | None = field(init=False, default=None)
    reply_payload: Payload | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.address)
        where = f"publisher {self.name!r}"
        if self.via not in VIAS:
            raise ValueError(f"{where}: via must be one of {', '.join(VIAS)}, not {self.via!r}.")
        if not isinstance(self.type, str) or not isinstance(self.description, str):
            raise TypeError(f"{where}: type and description must be str.")
        if self.via == "channel":
            concrete = PARAMETER_RE.sub("x", self.address) if isinstance(self.address, str) else ""
            if not is_valid_channel(concrete):
                raise ValueError(
                    f"{where}: {self.address!r} is not a channel name (letters, digits and "
                    ". _ : -, with {name} parts; at most 200 characters; no wildcards: a "
                    "message goes to one channel)."
                )
            names = self.keywords()
            if len(set(names)) != len(names):
                raise ValueError(f"{where}: {self.address!r} repeats a {{name}} part.")
            if reserved := sorted(_RESERVED.intersection(names)):
                raise ValueError(
                    f"{where}: a {{name}} part cannot be called {', '.join(reserved)}: the "
                    "calls take that keyword themselves."
                )
        elif not is_valid_key_name(self.address):
            raise ValueError(
                f"{where}: {self.address!r} is not a {self.via} name (letters, digits and "
                ". _ : -, at most 200 characters, one {hash tag} at most)."
            )
        object.__setattr__(self, "payload", None if self.schema is None else Payload(self.schema))
        object.__setattr__(
            self, "reply_payload", None if self.reply is None else Payload(self.reply)
        )

    def keywords(self) -> tuple[str, ...]:
        """Return the names of the address's ``{name}`` parts, in order (channels only)."""
        return tuple(PARAMETER_RE.findall(self.address)) if self.via == "channel" else ()

    def destination(self, **params: Any) -> str:
        """Return the name one call sends to: the address with its ``{name}`` parts filled.

        Raises ``TypeError`` for a missing or unknown part and ``ValueError`` when a
        value would make an invalid channel name.
        """
        wanted = self.keywords()
        if missing := [name for name in wanted if name not in params]:
            raise TypeError(f"publisher {self.name!r} needs {', '.join(missing)}.")
        if unknown := sorted(set(params) - set(wanted)):
            raise TypeError(f"publisher {self.name!r} takes no {', '.join(unknown)}.")
        if not wanted:
            return self.address
        name = PARAMETER_RE.sub(lambda part: str(params[part[1]]), self.address)
        if not is_valid_channel(name):
            raise ValueError(f"publisher {self.name!r}: {name!r} is not a channel name.")
        return name

    def publish(
        self,
        data: Any,
        *,
        type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> str | int:
        """Send ``data``: ``publish()`` (returns the entry id), ``broadcast()`` (the
        number of subscribers) or ``push()`` (the list's length), after ``via``."""
        target, payload, options = self._call(data, type, headers, params)
        send = getattr(publishing, _SENDERS[self.via])
        return send(target, payload, **options)  # type: ignore[no-any-return]

    async def apublish(
        self,
        data: Any,
        *,
        type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> str | int:
        """Async twin of :meth:`publish`."""
        target, payload, options = self._call(data, type, headers, params)
        send = getattr(publishing, "a" + _SENDERS[self.via])
        return await send(target, payload, **options)  # type: ignore[no-any-return]

    def request(
        self,
        data: Any,
        *,
        timeout: float = 5.0,
        type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> requests.Reply:
        """Send ``data`` as a request and return the reply (``redis_broker.request``)."""
        target, payload, options = self._call(data, type, headers, params)
        return requests.request(target, payload, timeout=timeout, via=self.via, **options)

    async def arequest(
        self,
        data: Any,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the name request() and arequest() use
        type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> requests.Reply:
        """Async twin of :meth:`request`."""
        target, payload, options = self._call(data, type, headers, params)
        return await requests.arequest(target, payload, timeout=timeout, via=self.via, **options)

    def _call(
        self,
        data: Any,
        type: str | None,
        headers: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> tuple[str, Any, dict[str, Any]]:
        """Return what every send of one call shares, sync or async: the destination, the
        payload as plain values, and the ``type``/``headers`` keywords."""
        kind = self.type if type is None else type
        return self.destination(**params), _plain(data), {"type": kind, "headers": headers}


#: The publishing function each ``via`` sends with (``a`` + the name: its async twin).
_SENDERS = {"stream": "publish", "channel": "broadcast", "list": "push"}


def _plain(data: Any) -> Any:
    """Return a typed payload (a dataclass or pydantic model) as a dict, anything else as is.

    ``publish()`` encodes JSON-ready values only; this lets a publisher take the type
    it declares.
    """
    if isinstance(data, _PLAIN):
        return data
    try:
        return to_builtins(data)
    except TypeError:
        return data  # wire.dumps says what cannot be encoded, as it does for publish()


class PublisherRegistry:
    """The declared publishers, by name.

    Declaring a name again from the module that declared it replaces it (a re-imported
    module); from another module it is an error, since the document could show only one.
    """

    def __init__(self) -> None:
        self._publishers: dict[str, Publisher] = {}

    def register(self, declared: Publisher) -> Publisher:
        """Add ``declared`` and return it; raise ``ValueError`` when its name is taken."""
        other = self._publishers.get(declared.name)
        if other is not None and other.module != declared.module:
            raise ValueError(
                f"publisher {declared.name!r} is declared in {other.module} already; give "
                f"the one in {declared.module} another name=."
            )
        self._publishers[declared.name] = declared
        return declared

    def unregister(self, name: str) -> None:
        """Forget the publisher called ``name`` (tests that declare their own)."""
        self._publishers.pop(name, None)

    def all(self) -> list[Publisher]:
        """Return every declared publisher, by name."""
        return [self._publishers[name] for name in sorted(self._publishers)]


#: The process-wide registry :func:`publisher` writes to.
registry = PublisherRegistry()


def publisher(
    address: str,
    *,
    via: str = "stream",
    schema: Any = None,
    reply: Any = None,
    type: str = "",
    description: str = "",
    name: str | None = None,
) -> Publisher:
    """Declare what this project sends to ``address`` and return the publisher.

    ``via`` is ``"stream"`` (the default), ``"channel"`` or ``"list"``; ``schema`` types
    the payload, ``reply`` the answer of ``request()``; ``type`` is the event type sent
    unless a call gives its own; ``description`` (CommonMark) and ``name`` (default: the
    address; two publishers to one address need names) appear in the AsyncAPI document.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")
    return registry.register(
        Publisher(
            address=address,
            via=via,
            schema=schema,
            reply=reply,
            type=type,
            description=description,
            name=name or "",
            module=str(caller),
        )
    )


def autodiscover() -> list[Publisher]:
    """Import ``<app>.publishers`` of every installed app; return every declared publisher."""
    autodiscover_modules("publishers")
    return registry.all()
