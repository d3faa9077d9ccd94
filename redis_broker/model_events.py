"""Model events: publish configured models' saves and deletes after commit.

(Being built in issue 4; the receivers are connected from ``AppConfig.ready``.)
"""

from __future__ import annotations

from typing import Any


def connect_receivers() -> None:
    """Connect post_save/post_delete receivers for the models in ``MODEL_EVENTS``."""


def publish_model_event(instance: Any, action: str) -> None:
    """Publish an event for ``instance`` (for paths that fire no signals)."""
    raise NotImplementedError("model events arrive with issue 4")
