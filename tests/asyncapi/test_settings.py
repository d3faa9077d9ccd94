"""``REDIS_BROKER["ASYNCAPI"]``: the document's info, and the checks on it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from redis_broker.checks import check_settings
from redis_broker.conf import (
    E_BAD_VALUE,
    E_UNKNOWN_KEY,
    E_WRONG_TYPE,
    ConfigurationError,
    get_config,
)

from .helpers import build


def check_ids(value: Any, settings: Any) -> list[tuple[str, str]]:
    """Return (id, message) of each system check error with ``ASYNCAPI = value``."""
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "ASYNCAPI": value}):
        return [(m.id or "", m.msg) for m in check_settings()]


def test_the_setting_gives_the_documents_info() -> None:
    """Tests that TITLE, VERSION and DESCRIPTION become ``info``; defaults fill the rest."""
    document = build(ASYNCAPI={"TITLE": "Shop events", "DESCRIPTION": "What the shop sends."})
    assert document["info"] == {
        "title": "Shop events",
        "version": "1.0.0",
        "description": "What the shop sends.",
    }
    assert build()["info"] == {"title": "Redis messaging", "version": "1.0.0"}


def test_each_mistake_is_a_check_error_naming_the_key(settings: Any) -> None:
    """Tests the check errors: a value of the wrong type (E003), an empty title or version
    (E005), an unknown key (E002), and a non-dict (E003), each naming its key."""
    assert check_ids({"VERSION": 2}, settings) == [
        (E_WRONG_TYPE, "REDIS_BROKER['ASYNCAPI']['VERSION'] must be str, not int.")
    ]
    assert check_ids({"TITLE": "  "}, settings) == [
        (
            E_BAD_VALUE,
            "REDIS_BROKER['ASYNCAPI']['TITLE'] must not be empty: the AsyncAPI document "
            "requires it.",
        )
    ]
    assert check_ids({"AUTHOR": "me"}, settings) == [
        (E_UNKNOWN_KEY, "REDIS_BROKER['ASYNCAPI']['AUTHOR'] is not a known key.")
    ]
    assert check_ids("Shop", settings) == [
        (E_WRONG_TYPE, "REDIS_BROKER['ASYNCAPI'] must be a dict, not str.")
    ]
    assert check_ids({"TITLE": "Shop", "VERSION": "2.1.0", "DESCRIPTION": ""}, settings) == []


def test_the_runtime_raises_the_checks_error(settings: Any) -> None:
    """Tests that ``get_config()`` raises the same error the check reports."""
    with override_settings(REDIS_BROKER={**settings.REDIS_BROKER, "ASYNCAPI": {"VERSION": ""}}):
        with pytest.raises(ConfigurationError) as raised:
            get_config()
    assert raised.value.check_id == E_BAD_VALUE
    assert "['ASYNCAPI']['VERSION']" in str(raised.value)
