"""The browser relay: a Channels WebSocket consumer fed by one Pub/Sub connection per process.

(Being built in issue 5.)
"""

from __future__ import annotations


def connect_signals() -> None:
    """Connect Django's ``user_logged_out`` to :func:`disconnect_user`."""
