"""``manage.py relayoutbox``: publish the model events waiting in the database outbox.

    python manage.py relayoutbox            # relay until SIGINT/SIGTERM
    python manage.py relayoutbox --burst    # relay what is there, then exit

``runconsumers`` relays the outbox too; use this command where no consumers run.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...exceptions import BrokerUnavailable
from ...outbox import OutboxRelay
from ..verbosity import configure_logging


class Command(BaseCommand):
    """Thin shell over :class:`redis_broker.outbox.OutboxRelay`."""

    help = "Publish the model events waiting in the database outbox to their Redis streams."
    relay_class = OutboxRelay

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Relay every waiting event, then exit (exit 1 when Redis is unreachable "
            "or refuses an entry).",
        )

    def handle(self, *args: Any, burst: bool = False, **options: Any) -> None:
        configure_logging(options["verbosity"])
        relay = self.relay_class()
        if burst:
            try:
                relayed = relay.drain()
            except (BrokerUnavailable, redis.ResponseError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"Relayed {relayed} outbox event(s).")
            return
        asyncio.run(self._run(relay))

    async def _run(self, relay: OutboxRelay) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await relay.run(stop)
