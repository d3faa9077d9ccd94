"""Helpers of the browser tests."""

from __future__ import annotations

from typing import Any


def wait_subscribed(page: Any, channel: str) -> None:
    """Wait until the page's socket has the server's confirmation for ``channel``."""
    page.wait_for_function("(c) => window.broker && window.broker.isSubscribed(c)", arg=channel)


def open_page(page: Any, server: Any, path: str) -> Any:
    """Open ``path`` of the live ``server`` in ``page``; return the HTTP response."""
    return page.goto(server.url + path)


def document_width(page: Any) -> int:
    """Return how wide the page's content is (wider than the viewport: it scrolls sideways)."""
    return int(page.evaluate("document.documentElement.scrollWidth"))
