"""Tests of ``@stream_consumer`` registration, validation, selection and discovery."""

from __future__ import annotations

import pytest

import redis_broker
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import (
    ConsumerDefinitionError,
    ConsumerRegistry,
    StreamConsumerSpec,
    autodiscover,
)


def handler(message: StreamMessage) -> None:
    """A sync handler for registration tests."""


async def ahandler(message: StreamMessage) -> None:
    """An async handler for registration tests."""


def test_decorator_returns_the_function_and_registers_a_spec() -> None:
    """Tests that decorating leaves the function untouched and records its options."""
    registry = ConsumerRegistry()
    decorated = registry.stream_consumer("orders", group="billing", batch_size=10)(ahandler)
    assert decorated is ahandler
    (spec,) = registry.all()
    assert spec.path == f"{__name__}.ahandler"
    assert (spec.stream, spec.group, spec.name, spec.batch_size) == (
        "orders",
        "billing",
        "ahandler",
        10,
    )
    assert spec.is_async and spec.concurrency is None and spec.start == "0"


def test_public_names_are_exported_lazily() -> None:
    """Tests that ``redis_broker`` exports the decorator and the message class of this package."""
    from redis_broker.consumers import registry

    assert redis_broker.stream_consumer is registry.stream_consumer
    assert redis_broker.StreamMessage is StreamMessage


def test_second_consumer_in_the_same_group_is_an_error_naming_both() -> None:
    """Tests that two handlers cannot share a stream's group: each would miss entries."""
    registry = ConsumerRegistry()
    registry.stream_consumer("orders", group="billing")(handler)
    with pytest.raises(ConsumerDefinitionError) as caught:
        registry.stream_consumer("orders", group="billing")(ahandler)
    assert str(caught.value).startswith(f"{__name__}.ahandler:")
    assert f"{__name__}.handler" in str(caught.value)


def test_duplicate_name_is_an_error() -> None:
    """Tests that names stay unique, since the command selects consumers by name."""
    registry = ConsumerRegistry()
    registry.stream_consumer("orders", group="a", name="same")(handler)
    with pytest.raises(ConsumerDefinitionError, match="already used"):
        registry.stream_consumer("invoices", group="b", name="same")(ahandler)


def test_registering_the_same_function_again_replaces_it() -> None:
    """Tests that a re-imported module does not trip the duplicate check."""
    registry = ConsumerRegistry()
    registry.stream_consumer("orders", group="billing")(handler)
    registry.stream_consumer("orders", group="billing", batch_size=5)(handler)
    assert [spec.batch_size for spec in registry.all()] == [5]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"stream": "bad name"}, "stream"),
        ({"group": ""}, "group"),
        ({"batch_size": 0}, "batch_size"),
        ({"concurrency": "4"}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"start": "yesterday"}, "start"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_arguments_are_errors_naming_the_function(
    options: dict[str, object], complaint: str
) -> None:
    """Tests that each bad argument is refused with the handler's dotted path and the key."""
    arguments: dict[str, object] = {"stream": "orders", "group": "billing", **options}
    stream = arguments.pop("stream")
    registry = ConsumerRegistry()
    with pytest.raises(ConsumerDefinitionError) as caught:
        registry.stream_consumer(stream, **arguments)(handler)  # type: ignore[arg-type]
    assert str(caught.value).startswith(f"{__name__}.handler: {complaint}")
    assert registry.all() == []


def test_handler_that_cannot_take_the_message_is_refused() -> None:
    """Tests that a handler with the wrong signature fails at import, not at the first entry."""

    def two(message: StreamMessage, extra: int) -> None:
        """Needs two arguments."""

    with pytest.raises(ConsumerDefinitionError, match="one positional argument"):
        StreamConsumerSpec(func=two, stream="orders", group="g", name="two")


def test_select_matches_name_stream_and_stream_group() -> None:
    """Tests that the command's NAME arguments pick consumers three ways."""
    registry = ConsumerRegistry()
    registry.stream_consumer("orders", group="billing")(handler)
    registry.stream_consumer("orders", group="mailer")(ahandler)
    assert [s.name for s in registry.select([])] == ["handler", "ahandler"]
    assert [s.name for s in registry.select(["ahandler"])] == ["ahandler"]
    assert [s.name for s in registry.select(["orders"])] == ["handler", "ahandler"]
    assert [s.name for s in registry.select(["orders:billing", "handler"])] == ["handler"]
    with pytest.raises(LookupError, match="No consumer is called 'nope'"):
        registry.select(["nope"])


def test_autodiscover_imports_consumers_modules_of_installed_apps() -> None:
    """Tests that discovery finds ``tests/testapp/consumers.py`` without an explicit import."""
    paths = {spec.path for spec in autodiscover()}
    assert "tests.testapp.consumers.scripted" in paths
    assert "tests.testapp.consumers.scripted_sync" in paths


def test_channel_consumer_reads_its_pattern_and_its_parameters() -> None:
    """Tests ``{name}`` parts: PSUBSCRIBEd as ``*`` and named as the handler's keywords."""
    registry = ConsumerRegistry()

    def on_price(message: StreamMessage, symbol: str, venue: str) -> None:
        """A handler taking two parameters."""

    registry.channel_consumer("prices.{venue}.{symbol}")(on_price)
    registry.channel_consumer("audit.*", name="audit")(handler)
    registry.channel_consumer("news", name="news")(ahandler)
    prices, audit, news = registry.all()
    assert (prices.subscription, prices.is_pattern, prices.keywords()) == (
        "prices.*.*",
        True,
        ("venue", "symbol"),
    )
    assert (audit.subscription, audit.is_pattern) == ("audit.*", True)
    assert (news.subscription, news.is_pattern) == ("news", False)
    assert registry.select(["prices.{venue}.{symbol}"]) == [prices]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("prices.{symbol}", "keyword arguments symbol"),
        ("bad pattern", "not a channel name or pattern"),
        ("a.{x}.{x}", "repeats a name"),
    ],
)
def test_channel_consumer_mistakes_are_errors_naming_the_handler(pattern: str, why: str) -> None:
    """Tests that a bad pattern, or a handler missing a parameter, fails at import."""
    with pytest.raises(ConsumerDefinitionError, match=why) as raised:
        ConsumerRegistry().channel_consumer(pattern)(handler)
    assert f"{__name__}.handler" in str(raised.value)


def test_two_consumers_of_one_list_are_an_error_naming_both() -> None:
    """Tests that a list has one consumer: two would each see part of its items."""
    registry = ConsumerRegistry()
    registry.list_consumer("jobs", output="done")(handler)
    with pytest.raises(ConsumerDefinitionError, match="already has a consumer") as raised:
        registry.list_consumer("jobs")(ahandler)
    assert f"{__name__}.handler" in str(raised.value)
    (spec,) = registry.all()
    assert (spec.kind, spec.list, spec.output) == ("list", "jobs", "done")
    assert registry.select(["jobs"]) == [spec]


def test_an_invalid_output_name_is_an_error() -> None:
    """Tests that ``output=`` is validated like a stream name."""
    with pytest.raises(ConsumerDefinitionError, match="output 'no spaces' is not a valid"):
        ConsumerRegistry().stream_consumer("orders", group="g", output="no spaces")(handler)


def test_decorators_are_exported_from_the_package() -> None:
    """Tests the contract's names: channel_consumer, list_consumer, push and apush."""
    from redis_broker.consumers import registry
    from redis_broker.publishing import apush, push

    assert redis_broker.channel_consumer is registry.channel_consumer
    assert redis_broker.list_consumer is registry.list_consumer
    assert (redis_broker.push, redis_broker.apush) == (push, apush)
