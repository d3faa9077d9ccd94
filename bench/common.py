"""What the consumer benchmarks share: Django configured for the app alone, and a stream
filled in our wire format, so that each script holds only its own contenders.

Nothing is imported at module level: ``bench/consume.py --no-hiredis`` hides hiredis before
redis-py is first imported.
"""

from __future__ import annotations

from typing import Any


def configure_consumers(url: str, **broker: Any) -> None:
    """Configure Django minimally: the app, its Redis at ``url`` (``broker`` adds or
    overrides ``REDIS_BROKER`` keys), no database, no stream trimming, a worker status
    every minute at most (not inside a measured run), and no "stopping" chatter."""
    import logging

    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["redis_broker"],
        REDIS_BROKER={
            "URL": url,
            "STREAM_MAXLEN": None,
            "CONSUMERS": {"STATUS_INTERVAL": 60.0},
            **broker,
        },
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()
    logging.getLogger("redis_broker").setLevel(logging.ERROR)


def fill_stream(
    client: Any,
    stream: str,
    count: int,
    payload: dict[str, Any],
    *,
    type: str,
    headers: dict[str, str] | None = None,
) -> int:
    """Append ``count`` entries of ``payload`` (``order_id`` numbered from 0) in our wire
    format to ``stream`` through ``client``, 1,000 per pipeline; return the size of one
    entry's ``data`` field."""
    from redis_broker import wire

    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 1000)):
            pipe.xadd(
                stream,
                wire.encode_entry({**payload, "order_id": n}, type=type, headers=headers),
            )
        pipe.execute()
    return len(wire.dumps(payload))
