"""Settings of ``runconsumers`` subprocesses in the consumer tests.

The test settings, with ``CONSUMERS`` overridden from the ``TEST_CONSUMERS`` environment
variable (JSON) so each test can shorten timeouts, and ``redis_broker`` warnings printed
to stdout so tests can read them.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import REDIS_BROKER

REDIS_BROKER = {
    **REDIS_BROKER,
    "CONSUMERS": {
        **REDIS_BROKER.get("CONSUMERS", {}),
        **json.loads(os.environ.get("TEST_CONSUMERS", "{}")),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain",
        }
    },
    "loggers": {"redis_broker": {"handlers": ["stdout"], "level": "WARNING"}},
}
