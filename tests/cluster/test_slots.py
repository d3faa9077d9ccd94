"""Keys that one script, MULTI or multi-key command touches share a Redis Cluster slot.

Pure tests of the naming rules (no Redis): for any stream or list name, ``KEY_PREFIX``
included, the keys each of the app's scripts and transactions declares hash alike, and
the system check names a consumer whose own choice (an ``output=``, a pattern) cannot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_broker import checks, conf
from redis_broker.conf import validate
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.naming import (
    dead_letter_name,
    dead_letter_source,
    deliveries_name,
    derived_source,
    hash_tag,
    is_valid_key_name,
    key_slot,
    list_consumers_name,
    prefixed,
    processing_list_name,
    unprefixed,
)

NAME_CHARS = "abcXYZ019_.:-"
plain_names = st.text(NAME_CHARS, min_size=1, max_size=40)
tagged_names = st.builds(
    lambda before, tag, after: f"{before}{{{tag}}}{after}",
    st.text(NAME_CHARS, max_size=10),
    st.text(NAME_CHARS, min_size=1, max_size=10),
    st.text(NAME_CHARS, max_size=10),
)
# A name that is nothing but a hash tag ("{orders}") derives the same keys as the name
# inside it ("orders") on a cluster: the README says not to use both.
names = st.one_of(plain_names, tagged_names).filter(
    lambda name: not (name.startswith("{") and name.endswith("}"))
)
prefixes = st.sampled_from(["", "app:", "shop.eu-1:", "x"])
suffixes = st.sampled_from([":dlq", ".dead", ":dead-letters"])


@pytest.fixture(autouse=True)
def _cluster_settings(redis_broker_url: str) -> Iterator[None]:
    with override_settings(REDIS_BROKER={"URL": redis_broker_url, "CLUSTER": True}):
        yield


def slots(*keys: str) -> set[int]:
    return {key_slot(key) for key in keys}


@settings(max_examples=300, deadline=None)
@given(names, prefixes, suffixes)
def test_a_stream_and_its_dead_letters_share_a_slot(name: str, prefix: str, suffix: str) -> None:
    """Tests the dead-letter MULTI (XADD dead letter + XACK) and bulk requeue keys."""
    assert is_valid_key_name(name)
    stream = prefixed(prefix, name)
    dead = prefixed(prefix, dead_letter_name(name, suffix))
    assert len(slots(stream, dead)) == 1, (stream, dead)
    assert dead != stream
    assert unprefixed(prefix, dead) == dead_letter_name(name, suffix)
    assert dead_letter_source(unprefixed(prefix, dead), suffix) == name


@settings(max_examples=300, deadline=None)
@given(names, prefixes, st.text(NAME_CHARS, min_size=1, max_size=30))
def test_a_list_and_every_key_its_scripts_touch_share_a_slot(
    name: str, prefix: str, consumer: str
) -> None:
    """Tests _TAKE (list, processing, deliveries), _SETTLE, _RETURN and the requeue of a
    dead worker's processing list (processing, list, consumers set)."""
    keys = [
        prefixed(prefix, name),
        prefixed(prefix, processing_list_name(name, consumer)),
        prefixed(prefix, deliveries_name(name)),
        prefixed(prefix, list_consumers_name(name)),
        prefixed(prefix, dead_letter_name(name, ":dlq")),
    ]
    assert len(slots(*keys)) == 1, keys
    assert len(set(keys)) == len(keys)
    processing = unprefixed(prefix, keys[1])
    assert derived_source(processing, ":processing:" + consumer) == name


@settings(max_examples=200, deadline=None)
@given(names, prefixes)
def test_an_output_named_as_the_check_hints_shares_its_inputs_slot(name: str, prefix: str) -> None:
    """Tests the hint the check gives: the input's name with its tag, or in one."""
    config, _ = validate({"URL": "redis://127.0.0.1:1/0", "CLUSTER": True, "KEY_PREFIX": prefix})
    spec = StreamConsumerSpec(func=_handler, name="h", stream=name, group="g", output="out")
    messages = checks.cluster_problems(config, [spec])
    if not messages:  # "out" happens to hash like the input: nothing to fix
        assert len(slots(prefixed(prefix, name), prefixed(prefix, "out"))) == 1
        return
    hint = messages[0].hint or ""
    output = hint.split("output='")[1].rstrip("'.")
    if hash_tag(name) is None:
        assert output == f"{{{name}}}.out"
    assert len(slots(prefixed(prefix, name), prefixed(prefix, output))) == 1


def test_a_single_redis_keeps_the_names_it_always_had(redis_broker_url: str) -> None:
    """Tests that nothing is renamed until CLUSTER is on."""
    with override_settings(REDIS_BROKER={"URL": redis_broker_url, "KEY_PREFIX": "app:"}):
        assert prefixed("app:", dead_letter_name("orders", ":dlq")) == "app:orders:dlq"
        assert processing_list_name("jobs", "w1") == "jobs:processing:w1"
        assert dead_letter_source("{orders}:dlq", ":dlq") == "{orders}"
    assert prefixed("app:", dead_letter_name("orders", ":dlq")) == "{app:orders}:dlq"
    assert dead_letter_source("{orders}:dlq", ":dlq") == "orders"


def _handler(message: object) -> None:
    """A consumer for the specs below."""


def test_the_check_names_a_consumer_whose_output_is_in_another_slot(redis_broker_url: str) -> None:
    """Tests W006 with the keys, their slots and a hint that fixes it."""
    config, errors = validate({"URL": redis_broker_url, "CLUSTER": True, "KEY_PREFIX": "app:"})
    assert errors == []
    bad = StreamConsumerSpec(func=_handler, name="a", stream="orders", group="g", output="invoices")
    good = StreamConsumerSpec(
        func=_handler, name="b", stream="orders", group="g", output="{orders}.invoices"
    )
    listed = ListConsumerSpec(func=_handler, name="c", list="{shop}jobs", output="{shop}done")
    messages = checks.cluster_problems(config, [bad, good, listed])
    assert [m.id for m in messages] == [conf.W_CROSS_SLOT]
    assert "'app:orders'" in messages[0].msg and "'app:invoices'" in messages[0].msg
    assert "output='{orders}.invoices'" in (messages[0].hint or "")


def test_the_check_refuses_a_pattern_consumer_on_a_cluster(redis_broker_url: str) -> None:
    """Tests W006 for a pattern: sharded Pub/Sub has none."""
    config, _ = validate({"URL": redis_broker_url, "CLUSTER": True})
    pattern = ChannelConsumerSpec(func=_handler, name="d", pattern="chat.*")
    plain = ChannelConsumerSpec(func=_handler, name="e", pattern="chat.lobby")
    messages = checks.cluster_problems(config, [pattern, plain])
    assert len(messages) == 1 and "'chat.*'" in messages[0].msg
    assert checks.cluster_problems(validate({"URL": redis_broker_url})[0], [pattern]) == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"SENTINELS": [("127.0.0.1", 26379)], "SENTINEL_SERVICE": "m"}, "SENTINELS"),
        ({"URL": "unix:///tmp/redis.sock"}, "unix socket"),
        ({"URL": "redis://127.0.0.1:7000/3"}, "database 3"),
        ({"STARTUP_NODES": [("127.0.0.1", "7001")]}, "(host, port)"),
    ],
)
def test_cluster_settings_a_cluster_cannot_honour_are_errors(
    redis_broker_url: str, extra: dict[str, object], words: str
) -> None:
    """Tests E012: Sentinel, a unix socket, a database other than 0, a bad startup node."""
    _config, errors = validate({"URL": redis_broker_url, "CLUSTER": True, **extra})
    assert [e.check_id for e in errors] == [conf.E_BAD_CLUSTER]
    assert words in errors[0].detail


def test_startup_nodes_accept_pairs_and_host_port_text(redis_broker_url: str) -> None:
    """Tests STARTUP_NODES as (host, port) pairs or "host:port" strings."""
    config, errors = validate(
        {
            "URL": redis_broker_url,
            "CLUSTER": True,
            "STARTUP_NODES": [("127.0.0.1", 7001), "[::1]:7002"],
        }
    )
    assert errors == []
    assert config.startup_nodes == (("127.0.0.1", 7001), ("::1", 7002))
