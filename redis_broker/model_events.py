"""Model events: publish configured models' saves and deletes after the transaction commits.

For every model in ``REDIS_BROKER["MODEL_EVENTS"]``, ``post_save`` and ``post_delete``
encode an event at once (so its ``event_id`` and ``published_at`` are fixed when the
change happens) and then, depending on ``delivery``:

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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
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

# Values DjangoJSONEncoder writes as they are; anything else (a FieldFile, a geometry,
# a custom field's object) goes through the field's own value_to_string(), as in
# Django's serializers.
_PLAIN_TYPES = frozenset(
    {str, int, float, bool, type(None), Decimal, datetime, date, time, timedelta, UUID}
    | {dict, list}
)


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
    """Connect receivers for models that an ``override_settings`` adds to MODEL_EVENTS."""
    if setting == SETTING_NAME and apps.ready:
        connect_receivers()


def _spec_for(model: type[models.Model]) -> ModelEventSettings | None:
    return get_config().model_events.get(model._meta.label_lower)


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
    spec = _spec_for(sender)
    action = "created" if created else "updated"
    if spec is not None and action in spec.actions:
        record(spec, instance, action, using)


def _post_delete(
    sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any
) -> None:
    spec = _spec_for(sender)
    if spec is not None and "deleted" in spec.actions:
        record(spec, instance, "deleted", using)


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
    spec = _spec_for(type(instance))
    if spec is None:
        raise ValueError(
            f"{instance._meta.label} is not in REDIS_BROKER['MODEL_EVENTS']; add it there "
            "to choose its stream and fields."
        )
    if action in spec.actions:
        db = using or instance._state.db or router.db_for_write(type(instance), instance=instance)
        record(spec, instance, action, db)


# --- Encoding ---------------------------------------------------------------------------


@functools.cache
def _getters(
    model: type[models.Model], names: tuple[str, ...] | None
) -> tuple[tuple[str, str, models.Field[Any, Any]], ...]:
    """Return (key in ``fields``, attribute, field) for the fields an event carries."""
    concrete = model._meta.concrete_fields
    if names is None:
        return tuple((f.name, f.attname, f) for f in concrete)
    by_name = {f.name: f for f in concrete} | {f.attname: f for f in concrete}
    return tuple((name, by_name[name].attname, by_name[name]) for name in names)


def encode_event(spec: ModelEventSettings, instance: models.Model, action: str) -> Event:
    """Return the stream and the encoded entry of ``action`` on ``instance``.

    ``data`` is ``{"pk": ..., "fields": {...}}``; a foreign key appears under its field
    name with the related object's primary key, as in Django's serializers. Raises
    ``TypeError`` (before anything is stored or sent) when a value cannot be encoded.
    """
    values: dict[str, Any] = {}
    for key, attname, model_field in _getters(type(instance), spec.fields):
        value = getattr(instance, attname)
        if type(value) not in _PLAIN_TYPES:
            value = model_field.value_to_string(instance)
        values[key] = value
    fields = wire.encode_entry(
        {"pk": instance.pk, "fields": values},
        type=f"{instance._meta.label_lower}.{action}",
        event_id=wire.new_event_id(),
        published_at=wire.now_iso(),
    )
    return spec.stream, fields


# --- Recording and delivery --------------------------------------------------------


def record(spec: ModelEventSettings, instance: models.Model, action: str, using: str) -> None:
    """Encode the event now and deliver it per ``spec.delivery`` (the receivers' common path)."""
    event = encode_event(spec, instance, action)
    connection = connections[using]
    if spec.delivery == "outbox":
        # Same connection, so the row commits or rolls back with the change itself.
        store_one(event, connection)
    elif connection.in_atomic_block:
        _pending_for(connection).add(event)
    else:
        deliver([event])


def store(events: Sequence[Event], using: str | None = None) -> None:
    """Write ``events`` to the outbox in order, in one INSERT, on database ``using``."""
    db = using or router.db_for_write(OutboxEvent)
    OutboxEvent.objects.using(db).bulk_create(
        [OutboxEvent(stream=stream, fields=fields) for stream, fields in events]
    )


_insert_sql: dict[str, str] = {}  # vendor -> INSERT statement


def _insert_sql_for(connection: BaseDatabaseWrapper) -> str:
    sql = _insert_sql.get(connection.vendor)
    if sql is None:
        meta, quote = OutboxEvent._meta, connection.ops.quote_name
        column = {f.name: str(f.column) for f in meta.concrete_fields}
        columns = ", ".join(quote(column[name]) for name in _ROW_FIELDS)
        placeholders = ", ".join(["%s"] * len(_ROW_FIELDS))
        sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders})"
        _insert_sql[connection.vendor] = sql
    return sql


_ROW_FIELDS = ("stream", "fields", "created_at", "attempts", "last_error")


def store_one(event: Event, connection: BaseDatabaseWrapper) -> None:
    """Write one outbox row on ``connection``, inside whatever transaction is open there.

    ``outbox`` delivery does this on every save, so it skips the model layer (an ORM
    ``save()`` would double the cost of a small model's save) but still adapts values
    with the fields' own ``get_db_prep_save``.
    """
    stream, fields = event
    meta = OutboxEvent._meta
    params = [
        stream,
        meta.get_field("fields").get_db_prep_save(fields, connection),
        meta.get_field("created_at").get_db_prep_save(timezone.now(), connection),
        0,
        "",
    ]
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
        direct = [event for event in events if event[0] not in waiting]
        queued: Sequence[Event] = [event for event in events if event[0] in waiting]
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
    events: list[Event] = field(default_factory=list)


class _PendingEvents:
    """The events of one connection's open transaction, grouped by savepoint.

    Invariant after ``_reconcile``: every group's marker is still registered, and the
    groups' stacks form a chain (each the prefix of the next), oldest first, which is
    also the order their markers run in at commit.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.groups: list[_Group] = []

    def add(self, event: Event) -> None:
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
        deliver(events)


_pending: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _PendingEvents] = (
    weakref.WeakKeyDictionary()
)


def _pending_for(connection: BaseDatabaseWrapper) -> _PendingEvents:
    # Connection objects are per thread (and per async context), so are the buffers.
    pending = _pending.get(connection)
    if pending is None:
        pending = _pending[connection] = _PendingEvents(connection)
    return pending
