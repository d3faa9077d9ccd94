"""Models used by the tests."""
