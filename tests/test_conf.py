"""Settings: lazy reading, defaults, nested merging and cache invalidation."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from redis_broker import conf
from redis_broker.connection import get_redis
from redis_broker.exceptions import ConfigurationError
from tests.helpers import broker_url


def test_absent_setting_gives_the_documented_defaults() -> None:
    """Tests that without REDIS_BROKER the URL is redis://127.0.0.1:6379/0 and limits default."""
    with override_settings(REDIS_BROKER=None):
        config = conf.get_config()
    assert config.url == "redis://127.0.0.1:6379/0"
    assert config.stream_maxlen == 100_000
    assert config.consumers.max_deliveries == 5
    assert config.consumers.dead_letter_suffix == ":dlq"
    assert config.websocket.durable_channels == ("user.*",)


def test_nested_groups_merge_one_level_deep() -> None:
    """Tests that overriding one CONSUMERS key keeps the other defaults."""
    with override_settings(REDIS_BROKER={"CONSUMERS": {"BATCH_SIZE": 7}}):
        consumers = conf.get_config().consumers
    assert consumers.batch_size == 7
    assert consumers.block_ms == 1000


def test_override_settings_is_seen_at_once(redis_broker_url: str) -> None:
    """Tests that the cached config and client are rebuilt when REDIS_BROKER changes."""
    before = conf.get_config()
    client_before = get_redis()
    with override_settings(REDIS_BROKER={**broker_url(redis_broker_url), "KEY_PREFIX": "t1:"}):
        assert conf.get_config().key_prefix == "t1:"
        assert get_redis() is not client_before
    assert conf.get_config() == before


def test_runtime_raises_the_same_error_as_the_check() -> None:
    """Tests that get_config() raises a ConfigurationError carrying the check id."""
    with (
        override_settings(REDIS_BROKER={"URL": "http://x"}),
        pytest.raises(ImproperlyConfigured) as info,
    ):
        conf.get_config()
    assert isinstance(info.value, ConfigurationError)
    assert info.value.check_id == "redis_broker.E004"
    assert "REDIS_BROKER['URL']" in str(info.value)


def test_model_events_get_their_defaults() -> None:
    """Tests that a MODEL_EVENTS entry defaults its stream, fields, actions and delivery."""
    config, errors = conf.validate({"MODEL_EVENTS": {"auth.User": {}}})
    assert errors == []
    spec = config.model_events["auth.user"]
    assert spec.stream == "auth.user"
    assert spec.fields is None
    assert spec.actions == frozenset({"created", "updated", "deleted"})
    assert spec.delivery == "on_commit"


def test_metrics_token_defaults_to_none_and_keeps_a_str() -> None:
    """Tests that METRICS_TOKEN is None unless set, and the configured str is kept as is."""
    assert conf.validate({})[0].metrics_token is None
    config, errors = conf.validate({"METRICS_TOKEN": "s3cret-metrics-token"})
    assert errors == []
    assert config.metrics_token == "s3cret-metrics-token"


def test_runtime_refuses_a_metrics_token_of_the_wrong_type() -> None:
    """Tests that get_config() raises the check's E003 for a METRICS_TOKEN that is no str."""
    with (
        override_settings(REDIS_BROKER={"METRICS_TOKEN": 12345678901234567}),
        pytest.raises(ConfigurationError) as info,
    ):
        conf.get_config()
    assert info.value.check_id == "redis_broker.E003"
    assert "REDIS_BROKER['METRICS_TOKEN']" in str(info.value)
