"""Who may subscribe or publish to which channel from a browser.

An authorizer is any callable ``(user, channel, action) -> bool`` (sync or async),
named by ``REDIS_BROKER["WEBSOCKET"]["AUTHORIZER"]``; ``action`` is ``"subscribe"`` or
``"publish"``. The relay asks it on every subscribe and publish frame.
"""

from __future__ import annotations

from typing import Any

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
