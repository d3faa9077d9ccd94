"""Back-off between attempts of a loop that must survive Redis or database outages.

Every long-running loop of the app (the consumer workers, the outbox relay, the relay
hub's connection and its replays) retries the same way: an exponential delay from a
base, capped, optionally with full jitter so that many clients do not reconnect in
step; and one warning when trouble starts, then DEBUG lines while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """The retry timing of one loop: ``base * 2**n`` seconds, at most ``cap``.

    ``jitter`` draws each delay uniformly between 0 and that value ("full jitter").
    ``remind_every`` repeats the warning every that many failures in a row (0: never).
    """

    base: float
    cap: float
    jitter: bool = False
    remind_every: int = 0
    failures: int = 0

    def next_delay(self) -> float:
        """Count a failure; return how long to wait before the next attempt."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, delay) if self.jitter else delay

    def level(self) -> int:
        """Return the log level for the failure just counted: WARNING once, then DEBUG."""
        if self.failures == 1 or (self.remind_every and self.failures % self.remind_every == 0):
            return logging.WARNING
        return logging.DEBUG

    def reset(self) -> int:
        """Forget the failures after a success; return how many there were in a row."""
        failures, self.failures = self.failures, 0
        return failures


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set."""
    if seconds <= 0 or stop.is_set():
        return
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
