"""Database models: the outbox that keeps model events Redis could not take, and the
table-less ``Broker`` model that carries the admin inspector's permissions."""

from __future__ import annotations

from django.db import models


class OutboxEvent(models.Model):
    """An event waiting to be appended to its stream.

    Rows hold the encoded entry fields, so an event keeps its ``event_id`` and
    ``published_at`` however late it is relayed. The relay publishes in ``id`` order
    per stream and deletes a row only after Redis accepted it.
    """

    id = models.BigAutoField(primary_key=True)
    stream = models.CharField(max_length=255, help_text="Stream name, without KEY_PREFIX.")
    fields = models.JSONField(help_text="Encoded stream entry fields (wire format).")
    # Not indexed: every outbox-delivered save inserts a row, and the oldest waiting row
    # is the one with the lowest id, found through the primary key.
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]
        # The relay reads each stream's oldest row, and every commit asks whether its
        # streams have rows waiting: both walk this index.
        indexes = [models.Index(fields=["stream", "id"], name="redis_broker_outbox_stream")]
        verbose_name = "outbox event"
        verbose_name_plural = "outbox events"

    def __str__(self) -> str:
        return f"{self.stream} #{self.pk} ({self.fields.get('type', '')})"


class Broker(models.Model):
    """No table: exists so that ``view_broker`` and ``change_broker`` permissions exist.

    Grant ``redis_broker.view_broker`` to let staff read the admin inspector and
    ``redis_broker.change_broker`` to let them act (ack, claim, requeue, delete, trim).
    """

    class Meta:
        managed = False
        default_permissions = ("view", "change")
        verbose_name = "Redis broker"
        verbose_name_plural = "Redis broker"

    def __str__(self) -> str:
        return "Redis broker"
