"""Models used by the tests (see ``MODEL_EVENTS`` in ``tests/settings.py``)."""

from __future__ import annotations

from django.db import models


class Customer(models.Model):
    """A plain model, no events: the target of ``Order.customer``."""

    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    """Publishes every action of every concrete field after commit (``on_commit``)."""

    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE)
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    placed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.status})"


class Invoice(models.Model):
    """Publishes through the transactional outbox (``"delivery": "outbox"``)."""

    number = models.CharField(max_length=20)
    amount = models.DecimalField(max_digits=10, decimal_places=2, default=0)

    def __str__(self) -> str:
        return self.number


class Note(models.Model):
    """Publishes only ``title``, and only creations and deletions."""

    title = models.CharField(max_length=100)
    body = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.title


class Tick(models.Model):
    """A small model for the model-events benchmark (events configured per run)."""

    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.name


class Preference(models.Model):
    """Has a JSONField, whose dict a caller may change in place after saving."""

    name = models.CharField(max_length=50)
    data = models.JSONField(default=dict)

    def __str__(self) -> str:
        return self.name
