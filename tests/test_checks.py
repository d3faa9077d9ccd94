"""System checks: every configuration mistake is an error with a stable id naming its key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from redis_broker import checks, conf
from redis_broker.testing import free_port


def run_check(value: Any) -> list[Any]:
    with override_settings(REDIS_BROKER=value):
        return checks.check_settings()


def only(messages: list[Any]) -> Any:
    assert len(messages) == 1, messages
    return messages[0]


def test_default_settings_pass_the_checks() -> None:
    """Tests that an absent REDIS_BROKER (all defaults) raises no check message."""
    assert run_check(None) == []


# Django 6.x's `check` runs the model checks against every database (#36663; the JSONField
# check opens a connection), so the command needs database access in tests.
@pytest.mark.django_db
def test_demo_settings_pass_manage_py_check() -> None:
    """Tests that `manage.py check` is clean for the project's own settings."""
    call_command("check", "--fail-level", "WARNING")


def test_setting_that_is_not_a_dict_is_e001() -> None:
    """Tests that a REDIS_BROKER that is not a dict is reported as E001."""
    error = only(run_check("redis://localhost"))
    assert error.id == "redis_broker.E001"
    assert error.msg == "REDIS_BROKER must be a dict, not str."


def test_unknown_key_is_e002_and_named() -> None:
    """Tests that a misspelt key is reported as E002 with its path and the known keys."""
    error = only(run_check({"KEY_PREFIXX": "shop:"}))
    assert error.id == "redis_broker.E002"
    assert error.msg == "REDIS_BROKER['KEY_PREFIXX'] is not a known key."
    assert "KEY_PREFIX" in error.hint


def test_unknown_nested_key_is_e002_and_named() -> None:
    """Tests that an unknown key inside CONSUMERS names the nested path."""
    error = only(run_check({"CONSUMERS": {"BATCH": 10}}))
    assert error.id == "redis_broker.E002"
    assert error.msg == "REDIS_BROKER['CONSUMERS']['BATCH'] is not a known key."


def test_wrong_type_is_e003() -> None:
    """Tests that a value of the wrong type is E003 naming the key and both types."""
    error = only(run_check({"CONSUMERS": {"BATCH_SIZE": "100"}}))
    assert error.id == "redis_broker.E003"
    assert error.msg == "REDIS_BROKER['CONSUMERS']['BATCH_SIZE'] must be int, not str."


def test_boolean_where_a_number_belongs_is_e003() -> None:
    """Tests that True is not accepted as a number even though bool subclasses int."""
    error = only(run_check({"STREAM_MAXLEN": True}))
    assert error.id == "redis_broker.E003"


def test_bad_url_scheme_is_e004() -> None:
    """Tests that an unsupported URL scheme is E004 with a hint on what to write."""
    error = only(run_check({"URL": "http://127.0.0.1:6379/0"}))
    assert error.id == "redis_broker.E004"
    assert error.msg == "REDIS_BROKER['URL'] scheme 'http' is not supported."
    assert "rediss://" in error.hint


def test_url_with_a_bad_port_is_e004() -> None:
    """Tests that a URL whose port is not a number is E004."""
    error = only(run_check({"URL": "redis://localhost:port/0"}))
    assert error.id == "redis_broker.E004"


def test_out_of_range_value_is_e005() -> None:
    """Tests that a zero batch size is E005 naming the key and the minimum."""
    error = only(run_check({"CONSUMERS": {"BATCH_SIZE": 0}}))
    assert error.id == "redis_broker.E005"
    assert error.msg == "REDIS_BROKER['CONSUMERS']['BATCH_SIZE'] must be at least 1, not 0."


def test_unknown_model_is_e006() -> None:
    """Tests that MODEL_EVENTS naming a model that is not installed is E006."""
    error = only(run_check({"MODEL_EVENTS": {"shop.Order": {"stream": "orders"}}}))
    assert error.id == "redis_broker.E006"
    assert error.msg == (
        "REDIS_BROKER['MODEL_EVENTS']['shop.Order'] no installed model is called 'shop.Order'."
    )


def test_bad_channel_pattern_is_e007() -> None:
    """Tests that a pattern with spaces or brackets is E007."""
    error = only(run_check({"WEBSOCKET": {"PUBLIC_CHANNELS": ["chat [all]"]}}))
    assert error.id == "redis_broker.E007"
    assert error.msg == (
        "REDIS_BROKER['WEBSOCKET']['PUBLIC_CHANNELS'] 'chat [all]' is not a channel pattern."
    )


def test_unimportable_authorizer_is_e008() -> None:
    """Tests that an AUTHORIZER path that cannot be imported is E008."""
    error = only(run_check({"WEBSOCKET": {"AUTHORIZER": "myproject.nowhere.allow"}}))
    assert error.id == "redis_broker.E008"
    assert error.msg.startswith("REDIS_BROKER['WEBSOCKET']['AUTHORIZER'] 'myproject.nowhere")


def test_sentinels_without_service_is_e009() -> None:
    """Tests that SENTINELS without SENTINEL_SERVICE is E009."""
    error = only(run_check({"SENTINELS": [("sentinel-1", 26379)]}))
    assert error.id == "redis_broker.E009"
    assert error.msg == "REDIS_BROKER['SENTINEL_SERVICE'] is required when SENTINELS is set."


def test_malformed_sentinel_is_e009() -> None:
    """Tests that a sentinel that is not a (host, port) pair is E009."""
    messages = run_check({"SENTINELS": ["sentinel-1:26379"], "SENTINEL_SERVICE": "mymaster"})
    assert [m.id for m in messages] == ["redis_broker.E009"]


def test_block_longer_than_socket_timeout_is_e010() -> None:
    """Tests that a blocking read longer than the socket timeout is E010."""
    error = only(run_check({"SOCKET_TIMEOUT": 1.0, "CONSUMERS": {"BLOCK_MS": 2000}}))
    assert error.id == "redis_broker.E010"
    assert error.msg.startswith("REDIS_BROKER['CONSUMERS']['BLOCK_MS'] (2000 ms) must be shorter")


def test_unknown_model_field_is_e011() -> None:
    """Tests that MODEL_EVENTS listing a field the model lacks is E011."""
    error = only(run_check({"MODEL_EVENTS": {"auth.User": {"fields": ["username", "shoe_size"]}}}))
    assert error.id == "redis_broker.E011"
    assert error.msg == (
        "REDIS_BROKER['MODEL_EVENTS']['auth.User']['fields'] auth.User has no concrete "
        "field 'shoe_size'."
    )


def test_every_mistake_is_reported_at_once() -> None:
    """Tests that several mistakes give several errors, not just the first."""
    messages = run_check({"URL": "ftp://x", "KEY_PREFIXX": "", "CONSUMERS": {"BLOCK_MS": -1}})
    assert sorted(m.id for m in messages) == [
        "redis_broker.E002",
        "redis_broker.E004",
        "redis_broker.E005",
    ]
    assert all(isinstance(m, Error) for m in messages)


# Django 6.x's `check` runs the model checks against every database (#36663; the JSONField
# check opens a connection), so the command needs database access in tests.
@pytest.mark.django_db
def test_manage_py_check_fails_on_a_bad_setting() -> None:
    """Tests that `manage.py check` itself fails and names the key."""
    with (
        override_settings(REDIS_BROKER={"URL": "memcached://x"}),
        pytest.raises(SystemCheckError, match=r"redis_broker\.E004"),
    ):
        call_command("check")


def deploy(value: dict[str, Any]) -> list[Any]:
    with override_settings(REDIS_BROKER=value):
        return checks.check_deployment()


def url_warning_ids(url: str) -> list[str]:
    config, errors = conf.validate({"URL": url})
    assert errors == []
    return [m.id for m in checks.url_warnings(config)]


def test_remote_url_without_password_warns_w001() -> None:
    """Tests that a non-loopback host without a password is W001 (deploy only)."""
    assert url_warning_ids("rediss://redis.internal:6379/0") == ["redis_broker.W001"]


def test_remote_url_without_tls_warns_w002() -> None:
    """Tests that a non-loopback host reached over plain redis:// is W002."""
    assert url_warning_ids("redis://app:secret@redis.internal:6379/0") == ["redis_broker.W002"]


def test_loopback_and_unix_urls_raise_no_url_warning() -> None:
    """Tests that loopback and unix-socket URLs need neither password nor TLS."""
    assert url_warning_ids("redis://127.0.0.1:6379/0") == []
    assert url_warning_ids("redis://[::1]:6379/0") == []
    assert url_warning_ids("unix:///run/redis.sock") == []


def test_evicting_maxmemory_policy_warns_w003(redis_client: Any, redis_broker_url: str) -> None:
    """Tests that a Redis that may evict keys is W003, and noeviction is not."""
    original = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        redis_client.config_set("maxmemory-policy", "allkeys-lru")
        assert [m.id for m in deploy({"URL": redis_broker_url})] == ["redis_broker.W003"]
        redis_client.config_set("maxmemory-policy", "noeviction")
        assert deploy({"URL": redis_broker_url}) == []
    finally:
        redis_client.config_set("maxmemory-policy", original)


def test_unreachable_redis_warns_w004() -> None:
    """Tests that the deploy check reports a Redis that does not answer as W004."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    messages = deploy({"URL": url, "RETRIES": 0})
    assert [m.id for m in messages] == ["redis_broker.W004"]
    assert url in messages[0].msg


def test_metrics_token_that_is_not_a_str_is_e003() -> None:
    """Tests that a METRICS_TOKEN of another type (bytes, a number) is E003 naming the key."""
    error = only(run_check({"METRICS_TOKEN": b"s3cret-metrics-token"}))
    assert error.id == "redis_broker.E003"
    assert error.msg == "REDIS_BROKER['METRICS_TOKEN'] must be str, not bytes."


def test_empty_or_spaced_metrics_token_is_e005() -> None:
    """Tests that an empty token (which "Bearer " would match) or one with spaces is E005."""
    for token in ("", "two words-of-token-text"):
        error = only(run_check({"METRICS_TOKEN": token}))
        assert error.id == "redis_broker.E005"
        assert error.msg == "REDIS_BROKER['METRICS_TOKEN'] must not be empty or contain whitespace."


def metrics_token_warning_ids(token: str | None) -> list[str]:
    config, errors = conf.validate({"METRICS_TOKEN": token})
    assert errors == []
    return [m.id for m in checks.metrics_token_warnings(config)]


def test_short_metrics_token_warns_w005_and_a_long_or_absent_one_does_not() -> None:
    """Tests that a token under 16 characters is W005 (deploy), and 16 or None is quiet."""
    assert metrics_token_warning_ids("x" * 15) == ["redis_broker.W005"]
    assert metrics_token_warning_ids("x" * 16) == []
    assert metrics_token_warning_ids(None) == []


def test_deploy_check_reports_a_short_metrics_token(redis_broker_url: str) -> None:
    """Tests that manage.py check --deploy includes the W005 warning."""
    messages = deploy({"URL": redis_broker_url, "METRICS_TOKEN": "short"})
    assert [m.id for m in messages] == ["redis_broker.W005"]
    assert "5 characters" in messages[0].msg
