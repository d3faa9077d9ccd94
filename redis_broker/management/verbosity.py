"""The one mapping from a management command's ``--verbosity`` to the app's log level."""

from __future__ import annotations

import logging

#: ``-v 0/1/2/3`` -> the level of the ``redis_broker`` logger.
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def configure_logging(verbosity: int) -> None:
    """Set the ``redis_broker`` level from ``verbosity``; add a handler only if none is set up."""
    broker_logger = logging.getLogger("redis_broker")
    broker_logger.setLevel(LOG_LEVELS.get(verbosity, logging.DEBUG))
    if not broker_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        broker_logger.addHandler(handler)
