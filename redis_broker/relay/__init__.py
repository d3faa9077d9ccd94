"""The browser relay: a Channels WebSocket consumer fed by one Pub/Sub connection per process.

``consumer.py`` translates the JSON frames, ``hub.py`` owns the process's Redis Pub/Sub
connection, ``status.py`` the record each process keeps in Redis for the admin. This
module holds the cross-process control, :func:`disconnect_user`, which travels over the
Channels layer, and names that layer's own Pub/Sub channels
(:func:`channel_layer_prefixes`).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

logger = logging.getLogger("redis_broker.relay")

__all__ = ["adisconnect_user", "channel_layer_prefixes", "connect_signals", "disconnect_user"]

DISCONNECT_EVENT = "redis_broker.disconnect"


async def adisconnect_user(user: Any) -> bool:
    """Close every open socket of ``user`` on every server process (async twin).

    The message travels through the Channels layer (``CHANNEL_LAYERS``), to the group
    each authenticated socket joined on connect. Without a channel layer nothing can
    reach other processes; this is logged and ignored. Return whether it was sent.
    """
    # Imported on use: this package is loaded by AppConfig.ready() in every process, and
    # only a logout or a revocation needs the Channels layer and the socket consumer.
    from channels.layers import get_channel_layer

    from .consumer import user_group

    pk = getattr(user, "pk", None)
    if pk is None:
        return False
    layer = get_channel_layer()
    if layer is None:
        logger.warning("disconnect_user(%r) needs CHANNEL_LAYERS; no socket was closed", pk)
        return False
    await layer.group_send(user_group(pk), {"type": DISCONNECT_EVENT})
    return True


def disconnect_user(user: Any) -> bool:
    """Close every open socket of ``user`` on every server process.

    Call it when a user is deactivated or loses access; logging out calls it already.
    Sockets close with code 4001 within a moment, and ``broker.js`` does not reconnect.
    Return False when there is no Channels layer to send it through (nothing closed).
    """
    return async_to_sync(adisconnect_user)(user)


def channel_layer_prefixes() -> tuple[str, ...]:
    """Return the ``prefix`` of each channels_redis layer in ``CHANNEL_LAYERS``.

    channels_redis's Pub/Sub layer names its Redis channels ``<prefix>__group__<group>``
    and ``<prefix>specific.<id>`` (``prefix`` defaults to ``"asgi"``); the inspector uses
    these to tell the layer's channels from the application's.
    """
    from django.conf import settings

    prefixes: list[str] = []
    for layer in getattr(settings, "CHANNEL_LAYERS", {}).values():
        if str(layer.get("BACKEND", "")).startswith("channels_redis."):
            prefixes.append(str(layer.get("CONFIG", {}).get("prefix", "asgi")))
    return tuple(dict.fromkeys(prefixes))


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
