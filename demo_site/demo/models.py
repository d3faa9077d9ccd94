"""The demo's models: a support ticket whose changes notify its owner, and the e-mails sent."""

from django.conf import settings
from django.db import models


class Ticket(models.Model):
    """A support ticket; ``MODEL_EVENTS`` publishes its changes to the ``demo.tickets`` stream."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        IN_PROGRESS = "in_progress", "In progress"
        RESOLVED = "resolved", "Resolved"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tickets"
    )
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"


class SentEmail(models.Model):
    """An e-mail the demo sent: its ``EMAIL_BACKEND`` (``mail.OutboxBackend``) keeps them here."""

    to = models.CharField(max_length=254)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"{self.subject} (to {self.to})"
