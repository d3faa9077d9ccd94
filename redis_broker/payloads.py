"""Typed payloads: the type a handler declares, how data becomes it, and its JSON Schema.

A handler declares its payload type with its annotation, ``message: StreamMessage[T]``,
or with ``schema=T`` on the decorator; its reply (or ``output=`` entry) type with its
return annotation. ``T`` may be a dataclass, a ``TypedDict`` or a pydantic model (any
type msgspec converts to works too: ``list[int]``, an ``Enum``...).

Conversion checks and builds in one step, before the handler runs: pydantic models are
validated by pydantic; everything else by msgspec (``msgspec.convert``: a small,
maintained C library that knows dataclasses and TypedDicts, so no hand-written checks).
It is strict, as JSON is: ``"3"`` is not an ``int``; ISO 8601 strings become datetimes,
dates, times, UUIDs and Decimals, the forms ``wire.dumps`` writes them in. A payload that
does not convert raises :class:`PayloadInvalid`, a ``Reject``: it is dead-lettered at
once, since no retry can make it valid, with an error that starts with ``validation:``
and names the field (``validation: $.lines[0].qty: Expected `int`, got `str```).

The same types give the JSON Schemas of the AsyncAPI document (``asyncapi.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgspec

from .exceptions import ConsumerDefinitionError, Reject

#: Where the document's shared schemas live; ``{name}`` is each type's title.
REF_TEMPLATE = "#/components/schemas/{name}"


class PayloadInvalid(Reject):
    """A payload that does not convert to its handler's declared type (dead-lettered)."""

    def __init__(self, where: str, why: str) -> None:
        self.where, self.why = where, why
        super().__init__(f"validation: {where}: {why}" if where else f"validation: {why}")


def _pydantic_model(kind: Any) -> bool:
    """True for a pydantic model class; pydantic is never imported for this."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(kind, type) and issubclass(kind, pydantic.BaseModel)


@dataclass(frozen=True, eq=False)
class Payload:
    """A declared payload type: converts data to it and describes it."""

    type: Any

    @property
    def name(self) -> str:
        """The type's name, as the document and error messages show it."""
        return getattr(self.type, "__name__", None) or repr(self.type)

    @cached_property
    def convert(self) -> Callable[[Any], Any]:
        """Return the function that turns decoded JSON into ``type`` (or raises)."""
        kind = self.type
        if _pydantic_model(kind):
            return _pydantic_converter(kind)
        fast = _dataclass_converter(kind)
        if fast is not None:
            return fast

        def convert(data: Any, to_type: Callable[..., Any] = msgspec.convert) -> Any:
            try:
                return to_type(data, kind)
            except msgspec.ValidationError as exc:
                raise _invalid(exc) from None

        return convert

    def schema(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return (the payload's schema, the named schemas it refers to)."""
        (found,), components = schemas([self.type])
        return found, components


def _invalid(exc: Exception) -> PayloadInvalid:
    """Return msgspec's ``why - at `$.where``` error as ``PayloadInvalid(where, why)``."""
    why, _, where = str(exc).partition(" - at `")
    return PayloadInvalid(where.rstrip("`"), why)


def _dataclass_converter(kind: Any) -> Callable[[Any], Any] | None:
    """Return a converter to the dataclass ``kind`` that checks with a msgspec ``Struct``
    of the same fields and then calls ``kind``'s own constructor; None when ``kind`` is
    not a dataclass whose ``__init__`` takes exactly its fields, positionally.

    msgspec's dataclass path sets each attribute on an empty instance, which costs twice
    a Struct's conversion plus the generated ``__init__`` (bench/typed.py: 10 fields,
    1.0 against 0.6 us). The Struct converts each field as the dataclass path would (the
    same types, nested dataclasses included), then ``__init__`` builds the instance, and
    runs ``__post_init__``, whose ``ValueError``/``TypeError`` counts as invalid, as in
    msgspec. Anything unusual (``kw_only``, ``InitVar``, a hand-written ``__init__`` with
    other parameters, names a Struct refuses) keeps msgspec's own path.
    """
    if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return None
    try:
        fields = dataclasses.fields(kind)
        names = [field.name for field in fields]
        parameters = inspect.signature(kind).parameters.values()
        if [p.name for p in parameters] != names or any(
            p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters
        ):
            return None
        hints = typing.get_type_hints(kind, include_extras=True)
        mirror = msgspec.defstruct(
            kind.__name__,
            [(field.name, hints[field.name], _struct_default(field)) for field in fields],
            module=kind.__module__,
            gc=False,  # a throwaway, never in a cycle: skip the collector's bookkeeping
        )
    except Exception:  # an annotation that does not resolve, a field a Struct refuses
        return None
    to_struct, values = msgspec.convert, msgspec.structs.astuple

    def convert(data: Any) -> Any:
        try:
            return kind(*values(to_struct(data, mirror)))
        except msgspec.ValidationError as exc:
            raise _invalid(exc) from None
        except (TypeError, ValueError) as exc:  # from __post_init__
            raise PayloadInvalid("", str(exc)) from None

    return convert


def _struct_default(field: dataclasses.Field[Any]) -> Any:
    """Return a dataclass field's default as a Struct field's (``NODEFAULT``: required)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return msgspec.field(default_factory=field.default_factory)
    return msgspec.NODEFAULT


def _pydantic_converter(model: Any) -> Callable[[Any], Any]:
    import pydantic

    def convert(data: Any) -> Any:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = "$" + "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
            )
            raise PayloadInvalid(where, first["msg"]) from None

    return convert


def schemas(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return each type's JSON Schema and the components they share (by title)."""
    plain = [kind for kind in types if not _pydantic_model(kind)]
    found: dict[int, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    if plain:
        refs, shared = msgspec.json.schema_components(plain, ref_template=REF_TEMPLATE)
        found.update({id(kind): ref for kind, ref in zip(plain, refs, strict=True)})
        components.update(shared)
    for kind in types:
        if _pydantic_model(kind):
            # pydantic names the referenced model ``{model}`` in its template.
            schema = kind.model_json_schema(ref_template=REF_TEMPLATE.format(name="{model}"))
            components.update(schema.pop("$defs", {}))
            components[kind.__name__] = schema
            found[id(kind)] = {"$ref": REF_TEMPLATE.format(name=kind.__name__)}
    return [found[id(kind)] for kind in types], _clean_descriptions(components)


def declared_payload(func: Callable[..., Any], schema: Any, path: str) -> Payload | None:
    """Return the payload type ``func`` declares: ``schema=``, else its first parameter's
    ``StreamMessage[T]`` annotation; None when it declares none (plain JSON data).

    A type nothing can convert to (a name in quotes that does not resolve) is a
    ``ConsumerDefinitionError`` here, at decoration, rather than a failure per message.
    """
    if schema is not None:
        return _checked(Payload(schema), path, "schema=")
    parameters = _parameters(func)
    if not parameters:
        return None
    annotation = _hints(func, path, parameters[0]).get(parameters[0])
    from .consumers.message import StreamMessage

    if typing.get_origin(annotation) is StreamMessage:
        (kind,) = typing.get_args(annotation)
        return None if kind is Any else _checked(Payload(kind), path, "its annotation")
    return None


def _checked(payload: Payload, path: str, where: str) -> Payload:
    """Return ``payload`` once msgspec (or pydantic) knows how to convert to its type."""
    if _pydantic_model(payload.type):
        return payload
    try:
        msgspec.inspect.type_info(payload.type)
    except TypeError as exc:
        raise ConsumerDefinitionError(
            path,
            f"{where} names a payload type that cannot be checked ({exc}); use a "
            "dataclass, a TypedDict or a pydantic model.",
        ) from exc
    return payload


def declared_reply(func: Callable[..., Any], path: str) -> Payload | None:
    """Return the type ``func``'s return annotation gives its replies and outputs."""
    returns = _hints(func, path, "return").get("return")
    if returns is None or returns is type(None) or returns is Any:
        return None
    return Payload(returns)  # ``T | None`` too: None appends or answers nothing


def _parameters(func: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # some builtins have no signature
        return []


def _hints(func: Callable[..., Any], path: str, name: str) -> dict[str, Any]:
    """Return ``func``'s resolved annotations.

    An annotation that names something undefined at run time (imported only under
    ``TYPE_CHECKING``) is fine where it declares no type here; it is an error only when
    ``name``'s annotation subscripts a message class (``StreamMessage[Order]``), since
    that handler means its payloads to be checked.
    """
    try:
        return typing.get_type_hints(func)
    except Exception as exc:
        raw = getattr(func, "__annotations__", {}).get(name)
        # A string under ``from __future__ import annotations``; without it, the class
        # subscripted with a quoted name (``StreamMessage["Order"]``).
        if isinstance(raw, str):
            typed = "Message[" in raw
        else:
            from .consumers.message import StreamMessage

            typed = typing.get_origin(raw) is StreamMessage
        if name != "return" and typed:
            raise ConsumerDefinitionError(
                path,
                f"its annotation {raw!r} cannot be resolved ({exc}); import the type where "
                "the handler is defined, or pass schema=.",
            ) from exc
        return {}


def to_builtins(value: Any) -> Any:
    """Return a typed payload (a dataclass or pydantic model) as JSON-ready builtins, for
    ``wire.dumps``; raise TypeError for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if _pydantic_model(type(value)):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _clean_descriptions(schema: Any) -> Any:
    """Return ``schema`` with every ``description`` (a type's docstring) cleaned as
    ``inspect.cleandoc`` does: Python 3.13 strips docstrings' indentation when it
    compiles them and 3.11 does not, and the document must read the same on both."""
    if isinstance(schema, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_clean_descriptions(item) for item in schema]
    return schema
