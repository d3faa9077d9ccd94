"""A test-only app: models for model events and consumers for the runner tests."""

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    """Test models and consumers."""

    name = "tests.testapp"
    label = "testapp"
