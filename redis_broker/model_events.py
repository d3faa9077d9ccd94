"""Model events: publish configured models' saves and deletes after the transaction commits.

For every model in ``REDIS_BROKER["MODEL_EVENTS"]``, ``post_save`` and ``post_delete``
take the event's values and ``published_at`` when the change happens (its ``event_id``
is drawn once, when it is encoded, at the latest at commit) and then, depending on
``delivery``:

* ``"on_commit"`` (default): the event waits in the connection's ``CommitBuffer`` and
  is published when the transaction commits, together with the transaction's other
  events in one pipelined round trip; outside a transaction it is published at once.
  If Redis cannot take it then, it is written to the outbox (``OutboxEvent``) with a
  warning on the ``redis_broker.outbox`` logger, and the relay publishes it later.
* ``"outbox"``: the event row is written to the outbox inside the change's own
  transaction (a transactional outbox: the change and its event commit or roll back
  together) and only the relay publishes it. Inside ``atomic()`` the transaction's rows
  go in together, just before it commits (``outbox_rows.store_one``). Outside one, Django
  sends ``post_save`` once the save has committed, so the row follows in a transaction
  of its own: only ``atomic()`` around the save makes the two one.

Rolled-back work publishes nothing: the buffer drops what a rolled-back transaction or
savepoint recorded (see ``commit_buffer``).

This module records; it neither buffers nor stores nor sends. One save takes this path:
the receiver (``_post_save``, ``_post_delete``) finds the model's cached ``_Recorder``,
whose ``record`` (also what ``publish_model_event`` calls) hands the event to exactly
one place: the ``CommitBuffer`` (``on_commit`` inside a transaction; at commit it passes
the transaction's events to ``outbox.deliver``), ``outbox.deliver`` (``on_commit``
outside one) or ``outbox_rows.store_one`` (``outbox``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.apps import apps
from django.core.signals import setting_changed
from django.db import connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import outbox, outbox_rows, tracing, wire
from .commit_buffer import CommitBuffer
from .conf import MODEL_EVENT_ACTIONS, SETTING_NAME, ModelEventSettings, get_config, validate
from .conf import raw_setting as _raw_setting
from .outbox_rows import Event

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
        # Speed (bench/model_events.py, on_commit ratio): every attribute in one C call.
        # It always returns a tuple (note the "pk").
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
        """Hand ``action`` on ``instance`` to its one destination per ``delivery``.

        The receivers' and ``publish_model_event``'s common path, and this module's only
        way out: ``outbox`` delivery writes the outbox row at once, ``on_commit`` delivery
        buffers the event until the commit inside a transaction and delivers it at once
        outside one.
        """
        connection = connections[using]
        if not self.buffered:
            # Same connection, so the row commits or rolls back with the change itself.
            outbox_rows.store_one(self.encode(instance, action), connection)
        elif connection.in_atomic_block:
            _buffer_for(connection).add(self.capture(instance, action))
        else:
            outbox.deliver([self.encode(instance, action)])

    def capture(self, instance: models.Model, action: str) -> Pending:
        """Take the event of ``action`` on ``instance`` as it is now, to send at the commit.

        An event whose values (and pk) are all immutable scalars is kept as they are and
        encoded at commit, in one tight loop with the transaction's other events; they
        cannot fail to encode, and a later change to the instance cannot reach them.
        Anything else (a JSONField's dict or list) is encoded now, so it is frozen as it
        was saved.
        """
        pk, *read = self.read_all(instance)
        # Speed (bench/model_events.py, on_commit ratio): all scalars, read in one call, no loop.
        if _SCALAR_TYPES.issuperset(map(type, read)) and type(pk) in _SCALAR_TYPES:
            values = dict(zip(self.keys, read, strict=True))
            return _Deferred(self, action, pk, values, wire.now_iso())
        values, immutable = self.values(instance)
        pending = _Deferred(self, action, pk, values, wire.now_iso())
        return pending if immutable and type(pk) in _SCALAR_TYPES else pending.encode()


class _Deferred:
    """An event's values, taken when the change happened, not yet encoded.

    Its ``published_at`` is the time of the change; its ``event_id`` is drawn when it is
    encoded, once, before it is first sent or stored, so it never changes either. Its
    ``trace`` is the context of the span current at the change (a view's), so the row and
    whatever publishes it later continue that trace.
    """

    __slots__ = ("recorder", "action", "pk", "values", "published_at", "trace")

    def __init__(
        self, recorder: _Recorder, action: str, pk: Any, values: dict[str, Any], published_at: str
    ) -> None:
        self.recorder = recorder
        self.action = action
        self.pk = pk
        self.values = values
        self.published_at = published_at
        self.trace = tracing.current_carrier()

    def encode(self) -> Event:
        fields = {
            wire.TYPE: self.recorder.types[self.action],
            wire.DATA: wire.dumps({"pk": self.pk, "fields": self.values}),
            wire.EVENT_ID: wire.new_event_id(),
            wire.PUBLISHED_AT: self.published_at,
        }
        if self.trace is not None:
            fields[wire.HEADERS] = wire.dumps(self.trace, what="headers")
        return self.recorder.spec.stream, fields


#: An event in a transaction's buffer: encoded, or waiting to be encoded at commit.
Pending = Event | _Deferred


def _encoded(events: Sequence[Pending]) -> list[Event]:
    """Return ``events`` encoded, in order, each deferred one encoded now."""
    return [event.encode() if isinstance(event, _Deferred) else event for event in events]


# Speed (bench/model_events.py, both ratios): one recorder per model, built on first save.
_recorders: dict[type[models.Model], _Recorder | None] = {}
_UNSET: Any = object()


def _recorder_for(model: type[models.Model]) -> _Recorder | None:
    """Return the model's recorder (None when it is not in ``MODEL_EVENTS``), cached."""
    recorder: _Recorder | None = _recorders.get(model, _UNSET)
    if recorder is _UNSET:
        spec = get_config().model_events.get(model._meta.label_lower)
        recorder = _recorders[model] = None if spec is None else _Recorder(spec, model)
    return recorder


# --- Handing over at commit -------------------------------------------------------------


def _deliver_committed(events: list[Pending]) -> None:
    """The commit buffer's flush: encode what waited unencoded, then deliver it all."""
    outbox.deliver(_encoded(events))


#: The connection attribute that holds its buffer: connection objects are per thread
#: (and per async context), and so are the buffers; the buffer lives as long as its
#: connection.
_BUFFER_ATTR = "_redis_broker_pending_events"


def _buffer_for(connection: BaseDatabaseWrapper) -> CommitBuffer[Pending]:
    """Return the connection's commit buffer of model events, created on first use."""
    # Speed (bench/model_events.py, on_commit ratio): a plain attribute, the cheapest lookup.
    buffer: CommitBuffer[Pending] | None = connection.__dict__.get(_BUFFER_ATTR)
    if buffer is None:
        buffer = CommitBuffer(connection, _deliver_committed)
        setattr(connection, _BUFFER_ATTR, buffer)
    return buffer


# --- The events' JSON Schema (the AsyncAPI document) -------------------------------------

# What ``_Recorder.values`` writes for each kind of field, as DjangoJSONEncoder encodes it:
# numbers as numbers, Decimals, dates, times, durations and UUIDs as ISO / plain text
# (``format`` names which), a file by its name, bytes by ``value_to_string`` (base64). Checked
# in order, so subclasses (EmailField is a CharField) come first.
_FIELD_SCHEMAS: tuple[tuple[type[models.Field[Any, Any]], dict[str, Any]], ...] = (
    (models.BooleanField, {"type": "boolean"}),
    (models.PositiveBigIntegerField, {"type": "integer", "minimum": 0}),
    (models.PositiveIntegerField, {"type": "integer", "minimum": 0}),
    (models.PositiveSmallIntegerField, {"type": "integer", "minimum": 0}),
    (models.IntegerField, {"type": "integer"}),  # Big, Small and the AutoFields too
    (models.FloatField, {"type": "number"}),
    # Text, as the encoder writes a Decimal; a number while the instance still holds what
    # was assigned (``default=0`` before the row is read back), which is saved unconverted.
    (models.DecimalField, {"type": ["string", "number"], "format": "decimal"}),
    (models.DateTimeField, {"type": "string", "format": "date-time"}),
    (models.DateField, {"type": "string", "format": "date"}),
    (models.TimeField, {"type": "string", "format": "time"}),
    (models.DurationField, {"type": "string", "format": "duration"}),
    (models.UUIDField, {"type": "string", "format": "uuid"}),
    (models.EmailField, {"type": "string", "format": "email"}),
    (models.URLField, {"type": "string", "format": "uri"}),
    (models.GenericIPAddressField, {"type": "string"}),
    (models.BinaryField, {"type": "string", "contentEncoding": "base64"}),
    (models.FileField, {"type": "string"}),  # the file's name; ImageField too
    (models.FilePathField, {"type": "string"}),
    (models.CharField, {"type": "string"}),  # SlugField too
    (models.TextField, {"type": "string"}),
    (models.JSONField, {}),  # any JSON, as stored
)
#: Foreign keys followed at most this deep to their target's type (a key to a key...).
_MAX_KEY_DEPTH = 5


def field_schema(field: models.Field[Any, Any], depth: int = 0) -> dict[str, Any]:
    """Return the JSON Schema of the value a model event carries for ``field``.

    A foreign key carries its target's value (the related primary key); ``null=True``
    adds ``null``; ``choices`` become an ``enum``; ``max_length`` a ``maxLength``;
    ``help_text`` the description. A field this table does not know (a custom or
    third-party one) is any JSON: its value is written as is or by ``value_to_string``.
    """
    if field.is_relation and (field.many_to_one or field.one_to_one):
        target = getattr(field, "target_field", None)
        schema = field_schema(target, depth + 1) if target and depth < _MAX_KEY_DEPTH else {}
        schema = {key: value for key, value in schema.items() if key != "description"}
    else:
        schema = next((dict(s) for kind, s in _FIELD_SCHEMAS if isinstance(field, kind)), {})
        max_length = getattr(field, "max_length", None)
        if schema.get("type") == "string" and "format" not in schema and max_length:
            schema["maxLength"] = max_length
        values = [value for value, _label in field.flatchoices] if field.choices else []
        if values and all(type(v) in (str, int, float, bool) for v in values):
            schema["enum"] = values
    if field.null and schema:
        if "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            schema["type"] = [*kinds, "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    if field.help_text and depth == 0:
        schema["description"] = str(field.help_text)
    return schema


def event_schema(model: type[models.Model], spec: ModelEventSettings) -> dict[str, Any]:
    """Return the JSON Schema of ``model``'s event ``data``: ``{"pk": ..., "fields": {...}}``.

    ``fields`` holds the fields ``spec`` names (all concrete ones when it names none),
    keyed as ``_Recorder`` keys them: by the name written in ``MODEL_EVENTS``, or the
    field's name. Every key is always present, so every one is required.
    """
    concrete = model._meta.concrete_fields
    if spec.fields is None:
        chosen = [(field.name, field) for field in concrete]
    else:
        by_name = {f.name: f for f in concrete} | {f.attname: f for f in concrete}
        chosen = [(name, by_name[name]) for name in spec.fields if name in by_name]
    pk = model._meta.pk
    return {
        "title": model._meta.label,
        "description": f"A {model._meta.label} was created, updated or deleted; "
        "the values are those of the saved (or deleted) row.",
        "type": "object",
        "properties": {
            "pk": field_schema(pk) if pk is not None else {},
            "fields": {
                "type": "object",
                "properties": {key: field_schema(field) for key, field in chosen},
                "required": [key for key, _field in chosen],
            },
        },
        "required": ["pk", "fields"],
    }


def event_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema of each ``MODEL_EVENTS`` model's event data, by its key
    there (``"app_label.modelname"``), skipping entries that name no installed model."""
    found = {}
    for key, spec in get_config().model_events.items():
        try:
            model = apps.get_model(spec.label)
        except (LookupError, ValueError):
            continue  # redis_broker.E006 says so
        found[key] = event_schema(model, spec)
    return found
