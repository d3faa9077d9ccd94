"""Helpers of the inspector tests: the seeded names, every page, URLs, Redis snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from django.urls import reverse

STREAM = "orders"
GROUP = "billing"
DLQ = "orders:dlq"


#: Every read-only inspector page, as (URL name, kwargs).
PAGES = [
    ("broker_changelist", {}),
    ("stream", {"stream": STREAM}),
    ("groups", {"stream": STREAM}),
    ("pending", {"stream": STREAM, "group": GROUP}),
    ("dead_letters", {"stream": STREAM}),
    ("pubsub", {}),
    ("outbox", {}),
]


def url(name: str, **kwargs: str) -> str:
    """Return the URL of an inspector view on the default admin site."""
    return reverse(f"admin:redis_broker_{name}", kwargs=kwargs or None)


@dataclass
class Seeded:
    """What the ``seeded`` fixture put in Redis."""

    ids: list[str]  # entries of STREAM, oldest first
    pending: list[str]  # ids pending in GROUP (delivered to consumer "c1")
    dead: list[str]  # ids of DLQ entries, oldest first
    dead_event_ids: list[str]  # their event_id fields


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Return everything the inspector's actions could change, for before/after equality."""
    state: dict[str, Any] = {}
    for key in sorted(client.scan_iter(_type="stream")):
        groups = client.xinfo_groups(key)
        state[key] = {
            "entries": client.xrange(key),
            "groups": {
                g["name"]: {
                    "last": g["last-delivered-id"],
                    "pending": [
                        (p["message_id"], p["consumer"], p["times_delivered"])
                        for p in client.xpending_range(key, g["name"], "-", "+", 1000)
                    ],
                    "consumers": sorted(c["name"] for c in client.xinfo_consumers(key, g["name"])),
                }
                for g in groups
            },
        }
    return state
