"""Traces with OpenTelemetry: the one module that talks to it, and a no-op without it.

Install the ``[otel]`` extra (``opentelemetry-api``) and configure an SDK the usual way;
this module uses the global tracer provider (``trace.get_tracer("redis_broker")``) and
the global propagator (W3C ``traceparent``/``tracestate`` by default), so the project's
own configuration decides sampling and export. Without the package every function here
returns at once (one module-level flag, :data:`ENABLED`), and nothing reaches the wire.

What is traced, with names from the OpenTelemetry messaging semantic conventions
(``messaging.system`` is ``"redis"``):

* ``publish``/``publish_many``/``broadcast``/``push`` (and their async twins) run in a
  ``PRODUCER`` span named ``"<operation> <destination>"`` (operation type ``send``)
  when a span is current (a traced view, a consumer's call), and write its context into
  the message's ``headers`` as ``traceparent`` (and ``tracestate``). Outside any span
  they start no trace and add no header, so the wire stays as it was.
* ``request``/``arequest`` run in a ``CLIENT`` span ``"request <destination>"`` that
  covers the wait for the reply (``messaging.message.conversation_id`` is the
  correlation id).
* A model event takes the context of the span current when the change is recorded, so
  an outbox row holds the view's ``traceparent`` and the relay's later publish (a
  ``PRODUCER`` span per traced event, child of that context) continues the view's trace.
* Every handler call of a stream, channel or list consumer runs in a ``CONSUMER`` span
  ``"process <destination>"`` whose parent is the message's ``traceparent``; what the
  call publishes, its ``output=`` entry and its reply carry that span's context.
* The browser relay: a browser's publish is a ``PRODUCER`` span (a new trace), and the
  hub records one ``deliver <channel>`` span per traced message it fans out (per
  process, not per socket).

Without an SDK configured (the API's no-op provider) nothing is recorded and nothing is
passed on: a consumer whose worker starts without one runs its handler unwrapped.
Cost (bench/tracing.py): without the package, nothing; with the API and no SDK, a
context-variable read per publish and nothing per handler call; attributes are built
only for spans that record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__, wire
from .exceptions import MalformedEntry

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the [otel] extra is not installed: everything below is a no-op
    ENABLED = False
else:
    ENABLED = True

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .consumers.message import StreamMessage

R = TypeVar("R")

SYSTEM = "redis"

# Attribute names of the messaging semantic conventions (kept here, not imported from
# opentelemetry-semantic-conventions, whose messaging names are still "incubating").
MESSAGING_SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION_NAME = "messaging.destination.name"
DESTINATION_TEMPLATE = "messaging.destination.template"
CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BATCH_COUNT = "messaging.batch.message_count"

# Where a handler call's context is kept on its message, for the output and the reply
# that are encoded later on the event loop's thread (the call may have run on a lane
# thread, and context variables do not cross threads).
_CONTEXT_KEY = "_redis_broker_trace_context"

_tracer: Tracer | None = None


def get_tracer() -> Tracer:
    """Return this package's tracer from the global provider (a proxy until one is set)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("redis_broker", __version__)
    return _tracer


def _sdk_tracer() -> Tracer | None:
    """Return the tracer while a provider is configured (an SDK), else None.

    Without one the API traces nothing, so consumers skip even reading the message's
    ``traceparent`` (bench/tracing.py: the propagator's extract is most of the cost).
    """
    tracer = get_tracer()
    if isinstance(tracer, trace.ProxyTracer) and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        return None
    return tracer


def current_carrier() -> dict[str, str] | None:
    """Return the current span's context as headers (``traceparent``...), or None.

    None without the package or without a valid current span: what a model event takes
    when it is recorded, so its row holds the context of the view that saved it.
    """
    if not ENABLED:
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def inject_into(headers: dict[str, Any]) -> dict[str, Any]:
    """Add the current span's context to ``headers`` (when there is one); return them."""
    carrier = current_carrier()
    if carrier:
        headers.update(carrier)
    return headers


def _attributes(
    operation_type: str, operation: str, destination: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    attributes = {
        MESSAGING_SYSTEM: SYSTEM,
        OPERATION_TYPE: operation_type,
        OPERATION_NAME: operation,
        DESTINATION_NAME: destination,
    }
    attributes.update((key, value) for key, value in extra.items() if value is not None)
    return attributes


def _fail(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class Producing:
    """The span a publish runs in: its context goes into the message's headers.

    ``headers(given)`` returns the headers to encode (the given ones plus
    ``traceparent``); ``message_id`` and ``batch`` add attributes to a recording span.
    The disabled instance (:data:`NOT_TRACED`) returns the headers untouched.
    """

    __slots__ = ("_span", "_token", "_carrier", "_start")

    def __init__(self, start: Callable[[], Span] | None = None) -> None:
        self._start = start
        self._span: Span | None = None
        self._token: object = None
        self._carrier: dict[str, str] | None = None

    def __enter__(self) -> Producing:
        if self._start is not None:
            span = self._span = self._start()
            self._token = otel_context.attach(trace.set_span_in_context(span))
        if ENABLED and self is not NOT_TRACED:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            self._carrier = carrier or None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if exc is not None:
            _fail(span, exc)
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span.end()

    def headers(self, given: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """Return ``given`` plus the span's ``traceparent`` (ours wins over a stale one)."""
        carrier = self._carrier
        if carrier is None:
            return given
        return {**given, **carrier} if given else dict(carrier)

    def message_id(self, event_id: str) -> None:
        """Record the event id of the message sent (when the span records)."""
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute(MESSAGE_ID, event_id)

    def batch(self, count: int) -> None:
        """Record how many messages one publish sent (when the span records)."""
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute(BATCH_COUNT, count)


#: What every ``producing()`` returns when nothing is traced.
NOT_TRACED = Producing()


def producing(
    operation: str,
    destination: str,
    *,
    root: bool = False,
    client: bool = False,
    conversation_id: str | None = None,
) -> Producing:
    """Return the span context manager a publish to ``destination`` runs in.

    Without a valid current span nothing is traced (unless ``root``: the relay starts a
    trace for a browser's publish). Inside a ``PRODUCER`` span already (the relay's, or
    the project's own), that span is the message's context and no second one starts.
    ``client`` makes a ``CLIENT`` span (a request waiting for its reply).
    """
    if not ENABLED:
        return NOT_TRACED
    current = trace.get_current_span()
    if not current.get_span_context().is_valid:
        if not root:
            return NOT_TRACED
    elif getattr(current, "kind", None) is SpanKind.PRODUCER:
        return Producing()  # the current producer span's context, no span of ours

    def start() -> Span:
        span = get_tracer().start_span(
            f"{operation} {destination}", kind=SpanKind.CLIENT if client else SpanKind.PRODUCER
        )
        if span.is_recording():
            extra = {CONVERSATION_ID: conversation_id}
            span.set_attributes(_attributes("send", operation, destination, extra))
        return span

    return Producing(start)


def _remote_parent(headers: Mapping[str, Any] | None) -> Context | None:
    """Return the context a message's headers carry, or None when they carry none."""
    if not headers or not isinstance(headers.get(wire.TRACEPARENT), str):
        return None
    return propagate.extract(headers)


class _Sending:
    """One ``PRODUCER`` span per already encoded entry that carries a ``traceparent``."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for span in self.spans:
            if exc is not None:
                _fail(span, exc)
            span.end()


_NOT_SENDING = _Sending([])


def sending(entries: Sequence[tuple[str, Mapping[str, str]]]) -> _Sending:
    """Return the spans of publishing encoded entries (model events, outbox rows).

    Each entry whose ``headers`` carry a ``traceparent`` (taken when the change was
    recorded) gets a ``publish <stream>`` span, child of that context: the relay's
    publish, however much later, joins the trace of the view that saved the change.
    """
    tracer = _sdk_tracer() if ENABLED else None
    if tracer is None:
        return _NOT_SENDING
    spans: list[Span] = []
    for stream, fields in entries:
        text = fields.get(wire.HEADERS)
        if not text or wire.TRACEPARENT not in text:
            continue
        try:
            parent = _remote_parent(wire.loads(text, what="headers"))
        except MalformedEntry:
            continue
        if parent is None:
            continue
        span = tracer.start_span(f"publish {stream}", context=parent, kind=SpanKind.PRODUCER)
        if span.is_recording():
            extra = {MESSAGE_ID: fields.get(wire.EVENT_ID)}
            span.set_attributes(_attributes("send", "publish", stream, extra))
        spans.append(span)
    return _Sending(spans) if spans else _NOT_SENDING


class _Process:
    """Start and end the ``process`` span of one handler call."""

    __slots__ = ("name", "group", "template")

    def __init__(self, name: str, group: str, template: str | None) -> None:
        self.name = name
        self.group = group
        self.template = template

    def start(self, message: StreamMessage) -> tuple[Span, object] | None:
        """Start the call's span and make it current; None when nothing is traced."""
        tracer = _sdk_tracer()
        if tracer is None:
            return None  # no SDK: nothing to record, nothing passed on
        parent = _remote_parent(message.headers)
        span = tracer.start_span(self.name, context=parent, kind=SpanKind.CONSUMER)
        if span.is_recording():
            extra = {
                DESTINATION_TEMPLATE: self.template,
                CONSUMER_GROUP: self.group or None,
                MESSAGE_ID: message.event_id or None,
                CONVERSATION_ID: (message.headers or {}).get("correlation_id"),
            }
            span.set_attributes(_attributes("process", "process", message.stream, extra))
        if not span.get_span_context().is_valid:
            return None
        context = trace.set_span_in_context(span, parent)
        vars(message)[_CONTEXT_KEY] = context
        return span, otel_context.attach(context)

    @staticmethod
    def finish(span: Span, token: object, exc: BaseException | None) -> None:
        """End the call's span (recording ``exc``) and restore the context."""
        if exc is not None:
            _fail(span, exc)
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()


def traced_handler(
    handler: Callable[[StreamMessage], R],
    *,
    is_async: bool,
    destination: str,
    group: str = "",
    template: str | None = None,
) -> Callable[[StreamMessage], R]:
    """Return ``handler`` running each call in a ``process <destination>`` span.

    The span's parent is the message's ``traceparent`` (a new trace without one), so
    whatever the call publishes continues the publisher's trace. The call's context is
    kept on the message for its output and reply (:func:`message_carrier`). Without the
    package, or without an SDK configured when the worker starts, ``handler`` itself:
    configure tracing before ``runconsumers`` starts its consumers (at settings or
    ``AppConfig.ready()`` time, as ``opentelemetry-instrument`` does).
    """
    if not ENABLED or _sdk_tracer() is None:
        return handler
    process = _Process(f"process {template or destination}", group, template)
    start, finish = process.start, process.finish

    if is_async:
        async_handler: Callable[[StreamMessage], Awaitable[Any]] = handler  # type: ignore[assignment]

        async def call_async(message: StreamMessage) -> Any:
            started = start(message)
            if started is None:
                return await async_handler(message)
            try:
                result = await async_handler(message)
            except BaseException as exc:
                finish(*started, exc)
                raise
            finish(*started, None)
            return result

        return call_async  # type: ignore[return-value]

    def call(message: StreamMessage) -> R:
        started = start(message)
        if started is None:
            return handler(message)
        try:
            result = handler(message)
        except BaseException as exc:
            finish(*started, exc)
            raise
        finish(*started, None)
        return result

    return call


def message_carrier(message: StreamMessage) -> dict[str, str] | None:
    """Return the context of the handler call on ``message`` as headers, or None.

    For the call's ``output=`` entry and its reply, encoded after the call on the
    worker's own thread.
    """
    if not ENABLED:
        return None
    context: Context | None = vars(message).get(_CONTEXT_KEY)
    if context is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier or None


def delivered(channel: str, headers: Mapping[str, Any]) -> None:
    """Record the relay hub's fan-out of one traced message (one span per process).

    Called only for messages with headers; a message without a ``traceparent`` starts
    no trace here.
    """
    tracer = _sdk_tracer()
    parent = None if tracer is None else _remote_parent(headers)
    if tracer is None or parent is None:
        return
    span = tracer.start_span(f"deliver {channel}", context=parent, kind=SpanKind.CONSUMER)
    if span.is_recording():
        span.set_attributes(_attributes("process", "deliver", channel, {}))
    span.end()
