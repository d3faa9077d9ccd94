"""Helpers of the browser tests."""

from __future__ import annotations

from typing import Any


def wait_subscribed(page: Any, channel: str) -> None:
    """Wait until the page's socket has the server's confirmation for ``channel``."""
    page.wait_for_function("(c) => window.broker && window.broker.isSubscribed(c)", arg=channel)
