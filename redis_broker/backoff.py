"""Back-off between attempts of a loop that must survive Redis or database outages.

Every long-running loop of the app (the consumer workers, the outbox relay, the relay
hub's connection and its replays) retries the same way: an exponential delay from a
base, capped, optionally with full jitter so that many clients do not reconnect in
step; and one warning when trouble starts (or changes), then DEBUG lines while it
lasts, with an optional reminder.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """The retry timing of one loop: ``base * 2**n`` seconds, at most ``cap``.

    ``jitter`` draws each delay uniformly between 0 and that value ("full jitter").
    ``remind_every`` repeats the warning every that many failures in a row, and
    ``remind_after`` at most every that many seconds (0: never).
    """

    base: float
    cap: float
    jitter: bool = False
    remind_every: int = 0
    remind_after: float = 0.0
    failures: int = 0
    failure: str | None = None  # what the last failure was, when the caller says
    warned_at: float = 0.0

    def next_delay(self) -> float:
        """Count a failure; return how long to wait before the next attempt."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, delay) if self.jitter else delay

    def level(self, failure: str | None = None, loud: int = logging.WARNING) -> int:
        """Return the log level for the failure just counted: ``loud`` or DEBUG.

        ``loud`` for the first failure in a row, for a ``failure`` other than the last
        one (a new cause deserves its own line), and for a reminder; DEBUG otherwise, so
        a cause that lasts hours costs a line per ``remind_after``, not per attempt.
        """
        now = time.monotonic()
        changed, self.failure = failure != self.failure, failure
        if (
            self.failures == 1
            or changed
            or (self.remind_every and self.failures % self.remind_every == 0)
            or (self.remind_after and now - self.warned_at >= self.remind_after)
        ):
            self.warned_at = now
            return loud
        return logging.DEBUG

    def reset(self) -> int:
        """Forget the failures after a success; return how many there were in a row."""
        failures, self.failures, self.failure = self.failures, 0, None
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
