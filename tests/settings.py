"""Settings of the test suite: the demo site plus a test app.

SQLite test databases live in a file, not in memory, so that subprocesses started by
tests (runconsumers, daphne, relayoutbox) can open the same database: they receive
its URL through ``tests.helpers.subprocess_env()``.
"""

import os

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DATABASES, INSTALLED_APPS, REDIS_BROKER, VAR_DIR

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One file per test run, so concurrent runs never share (and destroy) a database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

REDIS_BROKER = {
    **REDIS_BROKER,
    "CONSUMERS": {"STATUS_INTERVAL": 1.0},
    # The demo's model events plus those of tests/model_events (tests override stream,
    # fields and delivery).
    "MODEL_EVENTS": {
        **REDIS_BROKER.get("MODEL_EVENTS", {}),
        "testapp.Order": {"stream": "shop.orders"},
        "testapp.Invoice": {"stream": "billing.invoices", "delivery": "outbox"},
        "testapp.Note": {"fields": ["title"], "actions": ["created", "deleted"]},
        "testapp.Preference": {"stream": "prefs"},
    },
    "OUTBOX": {"POLL_MS": 50},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"redis_broker": {"handlers": ["null"], "level": "DEBUG", "propagate": True}},
}
