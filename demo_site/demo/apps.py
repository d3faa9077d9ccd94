"""The demo app: pages that show the broker working end to end."""

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo pages, models and consumers."""

    name = "demo_site.demo"
    label = "demo"
    verbose_name = "Demo"
