"""Tests of payload conversion itself (``Payload.convert``): the same instances and errors
as msgspec's own dataclass conversion, whichever path builds them."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Annotated, Any

import msgspec
import pytest

from redis_broker.consumers.registry import StreamConsumerSpec
from redis_broker.exceptions import ConsumerDefinitionError
from redis_broker.payloads import Payload, PayloadInvalid


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    """A nested, frozen, slotted dataclass with a constrained field."""

    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1)]


@dataclasses.dataclass
class Order:
    """A dataclass with nested, parsed, optional and defaulted fields."""

    id: int
    total: float
    placed: datetime.datetime
    lines: list[Line]
    note: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Positive:
    """A dataclass whose ``__post_init__`` refuses values."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


@dataclasses.dataclass(kw_only=True)
class KeywordOnly:
    """A dataclass whose ``__init__`` takes keywords only."""

    a: int


@dataclasses.dataclass
class Derived:
    """A dataclass with a field ``__init__`` does not take."""

    a: int
    doubled: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.doubled = self.a * 2


@dataclasses.dataclass
class WithInitVar:
    """A dataclass with an ``InitVar``, which msgspec cannot build."""

    a: int
    scale: dataclasses.InitVar[int] = 1


PLACED = "2024-05-01T12:00:00Z"
CASES: list[Any] = [
    {"id": 1, "total": 2, "placed": PLACED, "lines": [{"sku": "A", "qty": 2}]},
    {"id": 1, "total": 2.5, "placed": PLACED, "lines": [], "note": "n", "tags": ["x"], "more": 1},
    {"id": 1, "total": "2", "placed": PLACED, "lines": []},
    {"id": 1, "total": 2.5, "placed": "yesterday", "lines": []},
    {"id": 1, "total": 2.5, "placed": PLACED, "lines": [{"sku": "A", "qty": 0}]},
    {"id": 1, "total": 2.5, "placed": PLACED},
    "text",
    None,
]


def msgspec_outcome(data: Any, kind: Any) -> Any:
    """Return what msgspec's own conversion gives: the instance, or the error's text."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        why, _, where = str(exc).partition(" - at `")
        return f"validation: {where.rstrip('`')}: {why}" if where else f"validation: {why}"


def our_outcome(data: Any, kind: Any) -> Any:
    """Return what ``Payload.convert`` gives: the instance, or the error's text."""
    try:
        return Payload(kind).convert(data)
    except PayloadInvalid as exc:
        return str(exc)


@pytest.mark.parametrize("data", CASES)
def test_a_dataclass_converts_exactly_as_msgspec_converts_it(data: Any) -> None:
    """Tests instances and error texts against ``msgspec.convert`` (nested, constrained,
    parsed, defaulted and unknown fields)."""
    ours = our_outcome(data, Order)
    assert ours == msgspec_outcome(data, Order)
    if isinstance(ours, Order):
        assert all(isinstance(line, Line) for line in ours.lines)


def test_an_error_from_post_init_makes_the_payload_invalid() -> None:
    """Tests that ``__post_init__`` raising ValueError is a validation error, as in msgspec,
    not a handler failure that would be retried."""
    assert Payload(Positive).convert({"n": 3}) == Positive(3)
    with pytest.raises(PayloadInvalid, match="^validation: n must not be negative$"):
        Payload(Positive).convert({"n": -1})


def test_dataclasses_with_unusual_constructors_still_convert() -> None:
    """Tests keyword-only fields and an ``init=False`` field (msgspec's own path)."""
    assert Payload(KeywordOnly).convert({"a": 1}) == KeywordOnly(a=1)
    converted = Payload(Derived).convert({"a": 2})
    assert (converted.a, converted.doubled) == (2, 4)
    with pytest.raises(PayloadInvalid, match=r"^validation: \$\.a: Expected `int`"):
        Payload(KeywordOnly).convert({"a": "1"})


def test_a_type_nothing_can_convert_to_is_refused_at_decoration() -> None:
    """Tests ``schema=`` naming a dataclass with an ``InitVar``: an error naming the
    handler when the consumer is declared, not a failure on every message."""

    def handler(message: Any) -> None:
        pass

    with pytest.raises(ConsumerDefinitionError, match="cannot be checked.*InitVar"):
        StreamConsumerSpec(func=handler, stream="s", group="g", name="n", schema=WithInitVar)
