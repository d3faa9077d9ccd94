"""The database outbox: model events waiting for Redis.

(Relay being built in issue 4.) ``backlog()`` is what the admin inspector and the
``runconsumers`` status line show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min
from django.utils import timezone

from .models import OutboxEvent


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """How many events wait in the outbox and since when."""

    count: int
    oldest: datetime | None

    @property
    def oldest_age_seconds(self) -> float | None:
        """Return the age of the oldest waiting event, or None when the outbox is empty."""
        if self.oldest is None:
            return None
        return max(0.0, (timezone.now() - self.oldest).total_seconds())


def backlog() -> OutboxBacklog:
    """Return the outbox backlog in one query (sync: call it from a thread in async code)."""
    row = OutboxEvent.objects.aggregate(count=Count("id"), oldest=Min("created_at"))
    return OutboxBacklog(count=row["count"] or 0, oldest=row["oldest"])
