"""App configuration: registers system checks and model-event receivers, nothing more."""

from __future__ import annotations

from django.apps import AppConfig


class RedisBrokerConfig(AppConfig):
    """Wire the app up without any Redis I/O, so importing Django never needs Redis."""

    name = "redis_broker"
    verbose_name = "Redis broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, as Django asks: these modules use models and settings.
        from . import (
            checks,  # noqa: F401 - registers the system checks
            model_events,
            relay,
        )

        model_events.connect_receivers()
        relay.connect_signals()
