"""The browser relay: a Channels WebSocket consumer fed by one Pub/Sub connection per process.

``consumer.py`` translates the JSON frames, ``hub.py`` owns the process's Redis Pub/Sub
connection. This module holds the cross-process control: :func:`disconnect_user`.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

logger = logging.getLogger("redis_broker.relay")

__all__ = ["adisconnect_user", "connect_signals", "disconnect_user"]

DISCONNECT_EVENT = "redis_broker.disconnect"


async def adisconnect_user(user: Any) -> None:
    """Close every open socket of ``user`` on every server process (async twin).

    The message travels through the Channels layer (``CHANNEL_LAYERS``), to the group
    each authenticated socket joined on connect. Without a channel layer nothing can
    reach other processes; this is logged and ignored.
    """
    # Imported on use: this package is loaded by AppConfig.ready() in every process, and
    # only a logout or a revocation needs the Channels layer and the socket consumer.
    from channels.layers import get_channel_layer

    from .consumer import user_group

    pk = getattr(user, "pk", None)
    if pk is None:
        return
    layer = get_channel_layer()
    if layer is None:
        logger.warning("disconnect_user(%r) needs CHANNEL_LAYERS; no socket was closed", pk)
        return
    await layer.group_send(user_group(pk), {"type": DISCONNECT_EVENT})


def disconnect_user(user: Any) -> None:
    """Close every open socket of ``user`` on every server process.

    Call it when a user is deactivated or loses access; logging out calls it already.
    Sockets close with code 4001 within a moment, and ``broker.js`` does not reconnect.
    """
    async_to_sync(adisconnect_user)(user)


def _on_logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    if user is None:
        return
    try:
        disconnect_user(user)
    except Exception:
        # A logout must not fail because Redis is away; the sockets still close when
        # their session is gone and the page reloads.
        logger.exception("Could not close the sockets of user %r on logout", user.pk)


def connect_signals() -> None:
    """Connect Django's ``user_logged_out`` to :func:`disconnect_user` (idempotent)."""
    from django.contrib.auth.signals import user_logged_out

    user_logged_out.connect(_on_logged_out, dispatch_uid="redis_broker.relay.disconnect_user")
