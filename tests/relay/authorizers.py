"""Authorizers used by the relay tests through the AUTHORIZER setting."""

from __future__ import annotations

from typing import Any


async def async_open_only(user: Any, channel: str, action: str) -> bool:
    """Allow anyone on ``open.*`` channels; an async authorizer."""
    return channel.startswith("open.")


def staff_only_orm(user: Any, channel: str, action: str) -> bool:
    """Allow only users the database says are staff; a sync authorizer that queries."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(pk=getattr(user, "pk", None), is_staff=True).exists()
