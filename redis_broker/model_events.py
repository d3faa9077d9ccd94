"""Model events: publish configured models' saves and deletes after the transaction commits.

For every model in ``REDIS_BROKER["MODEL_EVENTS"]``, ``post_save`` and ``post_delete``
take the event's values and ``published_at`` when the change happens (its ``event_id``
is drawn once, when it is encoded, at the latest at commit) and then, depending on
``delivery``:

* ``"on_commit"`` (default): the event waits in a per-transaction buffer and is
  published when the transaction commits, together with the transaction's other events
  in one pipelined round trip; outside a transaction it is published at once. If Redis
  cannot take it then, it is written to the outbox (``OutboxEvent``) with a warning on
  the ``redis_broker.outbox`` logger, and the relay publishes it later.
* ``"outbox"``: the event row is written to the outbox inside the change's own
  transaction (a transactional outbox: the change and its event commit or roll back
  together) and only the relay publishes it.

Rolled-back work publishes nothing. Django already discards ``on_commit`` callbacks
registered inside a savepoint that is rolled back; the buffer leans on exactly that. Its
events are grouped by the savepoint they were recorded in, each group with its own
``on_commit`` callback (a "marker"), so when a savepoint is rolled back its group's
marker disappears with it and the group is dropped. When a savepoint is released its
group joins the enclosing one, so a transaction usually ends with a single group and a
single round trip to Redis, however many saves (or ``get_or_create`` calls, which use
savepoints) it made.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from time import time_ns
from typing import Any
from uuid import UUID

import redis
from django.apps import apps
from django.core.signals import setting_changed
from django.db import connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from . import publishing, wire
from .conf import MODEL_EVENT_ACTIONS, SETTING_NAME, ModelEventSettings, get_config, validate
from .conf import raw_setting as _raw_setting
from .exceptions import BrokerUnavailable
from .models import OutboxEvent

logger = logging.getLogger("redis_broker.outbox")

#: (stream, encoded entry fields) - an event ready to publish or to store.
Event = tuple[str, dict[str, str]]

DISPATCH_UID = "redis_broker.model_events.{label}"

# Values DjangoJSONEncoder writes as they are: immutable scalars and (a JSONField's)
# containers. Anything else (a FieldFile, a geometry, a custom field's object) goes
# through the field's own value_to_string(), as in Django's serializers.
_SCALAR_TYPES = frozenset(
    {str, int, float, bool, type(None), Decimal, datetime, date, time, timedelta, UUID}
)
_CONTAINER_TYPES = frozenset({dict, list})


# --- Receivers -----------------------------------------------------------------------


def connect_receivers() -> None:
    """Connect post_save/post_delete receivers for the models in ``MODEL_EVENTS``.

    Idempotent (each receiver has ``dispatch_uid="redis_broker.model_events.<label>"``)
    and free of I/O. The receivers read the current settings on every call, so a model
    removed from ``MODEL_EVENTS`` by ``override_settings`` stops publishing at once.
    Invalid entries are skipped here; the system checks report them.
    """
    config, _errors = validate(_raw_setting())
    for spec in config.model_events.values():
        try:
            model = apps.get_model(spec.label, require_ready=False)
        except (LookupError, ValueError):
            continue  # redis_broker.E006 says so
        uid = DISPATCH_UID.format(label=model._meta.label_lower)
        post_save.connect(_post_save, sender=model, dispatch_uid=uid, weak=False)
        post_delete.connect(_post_delete, sender=model, dispatch_uid=uid, weak=False)


@receiver(setting_changed)
def _connect_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Follow an ``override_settings`` of MODEL_EVENTS: new receivers, fresh recorders."""
    if setting == SETTING_NAME:
        _recorders.clear()
        if apps.ready:
            connect_receivers()


def _post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    using: str = "default",
    **kwargs: Any,
) -> None:
    # raw=True is loaddata: the fixture describes state, not something that happened.
    if raw:
        return
    recorder = _recorder_for(sender)
    action = "created" if created else "updated"
    if recorder is not None and action in recorder.types:
        recorder.record(instance, action, using)


def _post_delete(
    sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any
) -> None:
    recorder = _recorder_for(sender)
    if recorder is not None and "deleted" in recorder.types:
        recorder.record(instance, "deleted", using)


def publish_model_event(instance: models.Model, action: str, *, using: str | None = None) -> None:
    """Publish ``action`` for ``instance`` as if a signal had fired.

    For the code paths that send no ``post_save``/``post_delete`` (``bulk_create``,
    ``bulk_update``, ``QuerySet.update``, raw SQL, ...). The model must be in
    ``MODEL_EVENTS``; its stream, fields, actions and delivery apply, and inside a
    transaction the event waits for the commit like any other. ``action`` is
    ``"created"``, ``"updated"`` or ``"deleted"``; an action the model's ``actions``
    leave out publishes nothing.
    """
    if action not in MODEL_EVENT_ACTIONS:
        raise ValueError(
            f"{action!r} is not a model event action; use one of {', '.join(MODEL_EVENT_ACTIONS)}."
        )
    recorder = _recorder_for(type(instance))
    if recorder is None:
        raise ValueError(
            f"{instance._meta.label} is not in REDIS_BROKER['MODEL_EVENTS']; add it there "
            "to choose its stream and fields."
        )
    if action in recorder.types:
        db = using or instance._state.db or router.db_for_write(type(instance), instance=instance)
        recorder.record(instance, action, db)


# --- Recording -----------------------------------------------------------------------


class _Recorder:
    """What one configured model needs on every save, worked out once.

    The receivers run on every save of the model, so everything that depends only on
    the settings (the spec, the field getters, the ``type`` strings) is computed when
    the model is first seen and dropped when ``REDIS_BROKER`` changes.
    """

    __slots__ = ("spec", "getters", "keys", "read_all", "types", "buffered")

    def __init__(self, spec: ModelEventSettings, model: type[models.Model]) -> None:
        self.spec = spec
        concrete = model._meta.concrete_fields
        names = spec.fields
        if names is None:
            self.getters = tuple((f.name, f.attname, f) for f in concrete)
        else:
            by_name = {f.name: f for f in concrete} | {f.attname: f for f in concrete}
            self.getters = tuple((name, by_name[name].attname, by_name[name]) for name in names)
        self.keys = tuple(key for key, _, _ in self.getters)
        # Reads every attribute in one C call; always returns a tuple (note the "pk").
        self.read_all = operator.attrgetter("pk", *(attname for _, attname, _ in self.getters))
        label = model._meta.label_lower
        self.types = {action: f"{label}.{action}" for action in spec.actions}
        self.buffered = spec.delivery == "on_commit"

    def values(self, instance: models.Model) -> tuple[dict[str, Any], bool]:
        """Return the event's field values and whether all of them are immutable.

        A foreign key appears under its field name with the related object's primary
        key, as in Django's serializers.
        """
        values: dict[str, Any] = {}
        immutable = True
        for key, attname, model_field in self.getters:
            value = getattr(instance, attname)
            kind = type(value)
            if kind not in _SCALAR_TYPES:
                if kind in _CONTAINER_TYPES:
                    immutable = False
                else:
                    value = model_field.value_to_string(instance)
            values[key] = value
        return values, immutable

    def encode(self, instance: models.Model, action: str) -> Event:
        """Return the stream and the encoded entry of ``action`` on ``instance``.

        ``data`` is ``{"pk": ..., "fields": {...}}``. Raises ``TypeError`` (before
        anything is stored or sent) when a value cannot be encoded.
        """
        values, _ = self.values(instance)
        return _Deferred(self, action, instance.pk, values, wire.now_iso()).encode()

    def record(self, instance: models.Model, action: str, using: str) -> None:
        """Deliver ``action`` on ``instance`` per ``delivery`` (the receivers' common path)."""
        connection = connections[using]
        if self.buffered and connection.in_atomic_block:
            # Buffered until the commit. An event whose values (and pk) are all
            # immutable scalars is kept as they are and encoded at commit, in one tight
            # loop with the transaction's other events; they cannot fail to encode, and
            # a later change to the instance cannot reach them. Anything else (a
            # JSONField's dict or list) is encoded now, so it is frozen as it was saved.
            pending_events = _pending_for(connection)
            pk, *read = self.read_all(instance)
            if _SCALAR_TYPES.issuperset(map(type, read)) and type(pk) in _SCALAR_TYPES:
                values = dict(zip(self.keys, read, strict=True))  # the common case: no loop
                pending_events.add(_Deferred(self, action, pk, values, wire.now_iso()))
                return
            values, immutable = self.values(instance)
            pending = _Deferred(self, action, pk, values, wire.now_iso())
            pending_events.add(
                pending if immutable and type(pk) in _SCALAR_TYPES else pending.encode()
            )
            return
        event = self.encode(instance, action)
        if self.spec.delivery == "outbox":
            # Same connection, so the row commits or rolls back with the change itself.
            store_one(event, connection)
        else:
            deliver([event])


class _Deferred:
    """An event's values, taken when the change happened, not yet encoded.

    Its ``published_at`` is the time of the change; its ``event_id`` is drawn when it is
    encoded, once, before it is first sent or stored, so it never changes either.
    """

    __slots__ = ("recorder", "action", "pk", "values", "published_at")

    def __init__(
        self, recorder: _Recorder, action: str, pk: Any, values: dict[str, Any], published_at: str
    ) -> None:
        self.recorder = recorder
        self.action = action
        self.pk = pk
        self.values = values
        self.published_at = published_at

    def encode(self) -> Event:
        fields = {
            wire.TYPE: self.recorder.types[self.action],
            wire.DATA: wire.dumps({"pk": self.pk, "fields": self.values}),
            wire.EVENT_ID: wire.new_event_id(),
            wire.PUBLISHED_AT: self.published_at,
        }
        return self.recorder.spec.stream, fields


#: An event in a transaction's buffer: encoded, or waiting to be encoded at commit.
Pending = Event | _Deferred


def _encoded(events: Sequence[Pending]) -> list[Event]:
    return [event.encode() if isinstance(event, _Deferred) else event for event in events]


_recorders: dict[type[models.Model], _Recorder | None] = {}
_UNSET: Any = object()


def _recorder_for(model: type[models.Model]) -> _Recorder | None:
    """Return the model's recorder (None when it is not in ``MODEL_EVENTS``), cached."""
    recorder: _Recorder | None = _recorders.get(model, _UNSET)
    if recorder is _UNSET:
        spec = get_config().model_events.get(model._meta.label_lower)
        recorder = _recorders[model] = None if spec is None else _Recorder(spec, model)
    return recorder


def store(events: Sequence[Event], using: str | None = None) -> None:
    """Write ``events`` to the outbox in order, in one INSERT, on database ``using``."""
    db = using or router.db_for_write(OutboxEvent)
    OutboxEvent.objects.using(db).bulk_create(
        [OutboxEvent(stream=stream, fields=fields) for stream, fields in events]
    )


_insert_sql: dict[tuple[str, str], str] = {}  # (vendor, placeholder) -> INSERT statement


def _insert_sql_for(connection: BaseDatabaseWrapper, placeholder: str = "%s") -> str:
    sql = _insert_sql.get((connection.vendor, placeholder))
    if sql is None:
        meta, quote = OutboxEvent._meta, connection.ops.quote_name
        column = {f.name: str(f.column) for f in meta.concrete_fields}
        columns = ", ".join(quote(column[name]) for name in _ROW_FIELDS)
        placeholders = ", ".join([placeholder] * len(_ROW_FIELDS))
        sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders})"
        _insert_sql[connection.vendor, placeholder] = sql
    return sql


_ROW_FIELDS = ("stream", "fields", "created_at", "attempts", "last_error")


_clock: tuple[str, int, Any] = ("", -1, None)  # vendor, millisecond, adapted value


def _created_at(connection: BaseDatabaseWrapper) -> Any:
    """Return the current time adapted for ``connection``, worked out once a millisecond."""
    global _clock
    millis = time_ns() // 1_000_000
    vendor, at, value = _clock
    if at != millis or vendor != connection.vendor:
        value = connection.ops.adapt_datetimefield_value(timezone.now())
        _clock = (connection.vendor, millis, value)
    return value


def store_one(event: Event, connection: BaseDatabaseWrapper) -> None:
    """Write one outbox row on ``connection``, inside whatever transaction is open there.

    ``outbox`` delivery does this on every save, so it skips the model layer (an ORM
    ``save()`` would double the cost of a small model's save) and adapts the values with
    the backend's own adapters. On SQLite, where Python work rather than a network round
    trip is the cost of a statement, it also skips Django's cursor wrapper whenever
    nothing observes queries (no ``execute_wrapper``, no query logging as under
    ``DEBUG`` or ``assertNumQueries``), which halves the cost of the INSERT.
    """
    stream, fields = event
    params = [stream, connection.ops.adapt_json_value(fields, None), _created_at(connection), 0, ""]
    raw = connection.connection
    if (
        connection.vendor == "sqlite"
        and raw is not None
        and not connection.execute_wrappers
        and not connection.queries_logged
    ):
        with connection.wrap_database_errors:
            raw.execute(_insert_sql_for(connection, "?"), params)
        return
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql_for(connection), params)


def deliver(events: Sequence[Event]) -> None:
    """Publish committed ``events`` in one round trip, or keep them in the outbox.

    Events for a stream that already has rows waiting in the outbox join the queue
    instead of overtaking it, so each stream keeps its order. Never raises: it runs
    after the commit, when the caller can no longer undo anything, so failures are
    logged.
    """
    if not events:
        return
    try:
        db = router.db_for_write(OutboxEvent)
        # One indexed EXISTS per stream: cheap even with a long backlog during an outage.
        outbox = OutboxEvent.objects.using(db)
        waiting = {
            stream
            for stream in {stream for stream, _ in events}
            if outbox.filter(stream=stream).exists()
        }
        direct: Sequence[Event] = events
        queued: Sequence[Event] = ()
        if waiting:
            direct = [event for event in events if event[0] not in waiting]
            queued = [event for event in events if event[0] in waiting]
        if direct:
            try:
                publishing.publish_encoded(direct)
            except (BrokerUnavailable, redis.RedisError) as exc:
                logger.warning(
                    "Redis did not take %d model event(s) at commit; they wait in the "
                    "outbox for the relay: %s",
                    len(direct),
                    exc,
                )
                queued = events
        if queued:
            store(queued, db)
    except Exception:
        logger.exception(
            "Model events could neither be published nor stored in the outbox; "
            "%d event(s) lost: %s",
            len(events),
            ", ".join(fields[wire.EVENT_ID] for _, fields in events[:20]),
        )


# --- The per-transaction buffer -------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Group:
    """Events recorded while one savepoint (or the bare transaction) was innermost."""

    stack: tuple[str, ...]  # the open savepoints when the group was opened
    marker: Callable[[], None] | None = None
    index: int = 0  # where the marker sat in connection.run_on_commit
    events: list[Pending] = field(default_factory=list)


class _PendingEvents:
    """The events of one connection's open transaction, grouped by savepoint.

    Invariant after ``_reconcile``: every group's marker is still registered, and the
    groups' stacks form a chain (each the prefix of the next), oldest first, which is
    also the order their markers run in at commit.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.groups: list[_Group] = []

    def add(self, event: Pending) -> None:
        """Buffer ``event`` until the transaction (and every savepoint around it) commits."""
        # atomic(savepoint=False) pushes None: such a block cannot be rolled back on its
        # own (a failure dooms the whole transaction), so it is not a level of its own.
        ids = self.connection.savepoint_ids
        stack = tuple(sid for sid in ids if sid is not None) if ids else ()
        groups = self.groups
        if groups:
            top = groups[-1]
            hooks = self.connection.run_on_commit
            # The common case, checked inline: same level, marker where we left it.
            if top.stack == stack and (
                (top.index < len(hooks) and hooks[top.index][1] is top.marker) or self._alive(top)
            ):
                top.events.append(event)
                return
            self._reconcile(stack)
            if groups and groups[-1].stack == stack:
                groups[-1].events.append(event)
                return
        group = _Group(stack=stack, events=[event])
        group.marker = functools.partial(self._committed, group)
        group.index = len(self.connection.run_on_commit)
        self.connection.on_commit(group.marker)
        groups.append(group)

    def _alive(self, group: _Group) -> bool:
        """Return True while the group's marker is registered (nothing around it rolled back)."""
        hooks = self.connection.run_on_commit
        if group.index < len(hooks) and hooks[group.index][1] is group.marker:
            return True
        # Something before it was discarded (or it was): look for it.
        return any(hook[1] is group.marker for hook in reversed(hooks))

    def _reconcile(self, stack: tuple[str, ...]) -> None:
        """Drop rolled-back groups and fold released savepoints' groups into their parents."""
        groups = self.groups
        groups[:] = [group for group in groups if self._alive(group)]
        while groups:
            top = groups[-1]
            if stack[: len(top.stack)] == top.stack:
                return  # its savepoint is still open
            # Its innermost savepoint was left and, since the marker is alive, released:
            # from now on the group shares the fate of the enclosing level.
            groups.pop()
            parent = top.stack[:-1]
            if groups and groups[-1].stack == parent:
                groups[-1].events.extend(top.events)
                top.events = []  # its marker still runs at commit; it must send nothing
            else:
                top.stack = parent
                groups.append(top)

    def _committed(self, group: _Group) -> None:
        """Marker callback: the group's work is committed; publish its events."""
        if group in self.groups:
            self.groups.remove(group)
        events, group.events = group.events, []
        deliver(_encoded(events))


#: The connection attribute that holds its buffer: connection objects are per thread
#: (and per async context), and so are the buffers; the buffer lives as long as its
#: connection, and a plain attribute is the cheapest lookup on every save.
_PENDING_ATTR = "_redis_broker_pending_events"


def _pending_for(connection: BaseDatabaseWrapper) -> _PendingEvents:
    pending = connection.__dict__.get(_PENDING_ATTR)
    if pending is None:
        pending = _PendingEvents(connection)
        setattr(connection, _PENDING_ATTR, pending)
    return pending
