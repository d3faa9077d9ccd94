"""Helpers of the AsyncAPI tests: the official schema, documents built from given parts,
payload checks against a document's message schemas."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
from django.conf import settings

from redis_broker import asyncapi, conf
from redis_broker.consumers.registry import ConsumerSpec
from redis_broker.publishers import Publisher

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data"
SCHEMA = DATA / "asyncapi-3.0.0-schema.json"
SNAPSHOT = DATA / "demo_asyncapi.json"
#: The URL the demo's committed document names (its ``servers``).
DEMO_URL = "redis://127.0.0.1:6379/0"


@functools.cache
def official_validator() -> jsonschema.Draft7Validator:
    """Return a validator of the official AsyncAPI 3.0.0 JSON Schema (tests/data)."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def asyncapi_errors(document: Mapping[str, Any]) -> list[str]:
    """Return why ``document`` is not valid AsyncAPI 3.0.0 (empty when it is)."""
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
        for error in official_validator().iter_errors(document)
    ]


def config(**raw: Any) -> conf.BrokerConfig:
    """Return the validated config of the test settings' ``REDIS_BROKER`` with the demo's
    URL and ``raw`` over it (failing on any error)."""
    built, errors = conf.validate({**settings.REDIS_BROKER, "URL": DEMO_URL, **raw})
    assert errors == [], errors
    return built


def build(
    consumers: Sequence[ConsumerSpec] = (),
    publishers: Sequence[Publisher] = (),
    model_events: Mapping[str, Mapping[str, Any]] | None = None,
    **raw: Any,
) -> dict[str, Any]:
    """Return the document of exactly these parts under the test settings and ``raw``."""
    return asyncapi.build(config(**raw), consumers, publishers, model_events or {})


def payload_errors(
    document: Mapping[str, Any], channel: str, message: str, value: Any
) -> list[str]:
    """Return why ``value`` (an envelope: type, data, event_id, ...) does not match the
    payload schema of ``message`` in ``channel`` (empty when it does)."""
    schema = {
        **document["channels"][channel]["messages"][message]["payload"],
        "components": document["components"],
    }
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(value)
    ]


def demo_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py asyncapi *args`` with the demo's own settings, as a developer would."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "REDIS_CLUSTER", "DATABASE_URL")
    }
    env.update(DJANGO_SETTINGS_MODULE="demo_site.settings", REDIS_URL=DEMO_URL)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "asyncapi", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
