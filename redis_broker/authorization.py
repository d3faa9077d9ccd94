"""Who may subscribe or publish to which channel from a browser.

An authorizer is any callable ``(user, channel, action) -> bool`` (sync or async),
named by ``REDIS_BROKER["WEBSOCKET"]["AUTHORIZER"]``; ``action`` is ``"subscribe"`` or
``"publish"``. The relay asks it on every subscribe and publish frame.
"""

from __future__ import annotations

import inspect
from typing import Any

from channels.db import database_sync_to_async

from .conf import get_config
from .naming import is_valid_channel, matches_any

SUBSCRIBE = "subscribe"
PUBLISH = "publish"


def default_authorizer(user: Any, channel: str, action: str) -> bool:
    """Allow logged-in users the public patterns and their own ``user.<pk>`` channel.

    Subscribing needs a match in ``PUBLIC_CHANNELS`` or the user's own channel;
    publishing needs a match in ``BROWSER_PUBLISH_CHANNELS``. Anonymous and inactive
    users get nothing, and so does any action this function does not know.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if not getattr(user, "is_active", True) or not is_valid_channel(channel):
        return False
    websocket = get_config().websocket
    if action == SUBSCRIBE:
        return channel == f"user.{user.pk}" or matches_any(websocket.public_channels, channel)
    if action == PUBLISH:
        return matches_any(websocket.browser_publish_channels, channel)
    return False


async def authorize(user: Any, channel: str, action: str) -> bool:
    """Ask the configured ``AUTHORIZER`` whether ``user`` may ``action`` on ``channel``.

    Async authorizers are awaited. Sync ones run in a worker thread (they may use the
    ORM), except the default policy, which only reads settings and is called inline.
    A falsy answer is a refusal, and so is an invalid channel name.
    """
    if not is_valid_channel(channel):
        return False
    authorizer = get_config().websocket.authorizer
    if authorizer is default_authorizer:
        return bool(default_authorizer(user, channel, action))
    if inspect.iscoroutinefunction(authorizer):
        result = await authorizer(user, channel, action)
    else:
        result = await database_sync_to_async(authorizer)(user, channel, action)
        if inspect.isawaitable(result):
            result = await result
    return bool(result)
