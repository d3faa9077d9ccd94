"""Fixtures of the test suite; the Redis ones come from the redis_broker.testing plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def artifacts_dir() -> Path:
    """Return the folder where browser tests write screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
