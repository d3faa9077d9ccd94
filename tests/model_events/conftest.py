"""Fixtures of the model-event tests (their plain helpers are in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redis_broker import publishing


@pytest.fixture
def publish_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Spy on the real ``publish_encoded``: record how many entries each round trip carried."""
    calls: list[int] = []
    real: Callable[..., list[str]] = publishing.publish_encoded

    def spy(entries: Any, **kwargs: Any) -> list[str]:
        calls.append(len(entries))
        return real(entries, **kwargs)

    monkeypatch.setattr(publishing, "publish_encoded", spy)
    yield calls
