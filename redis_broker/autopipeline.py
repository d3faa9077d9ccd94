"""Auto-pipelining for the asyncio client: concurrent calls share one write.

A hundred tasks each awaiting ``apublish()`` would otherwise make a hundred round
trips, each paying redis-py's per-command work and a system call on both sides. As in
ioredis and Lettuce, the commands issued on one event loop during one pass of the
loop are coalesced: the first caller yields to the loop once, callers that run
meanwhile (the same pass) join it, and it packs them all (with hiredis when
installed) into one write on one pooled connection and reads the replies in order. No
caller waits for a timer: a batch leaves on the very next pass, and batches do not
wait for one another (each has its own connection), so coalescing never adds a round
trip. Order is kept per connection, hence per stream for the callers of one pass.

Each caller gets its own reply or its own error: a ``ResponseError`` (WRONGTYPE, OOM)
is raised to that caller alone. When the connection is lost (a Redis restart leaves
idle pooled connections dead), the commands whose replies had not arrived are sent
once more on a new connection, as redis-py's own retry would; a command that had run
before the loss then runs twice, and both entries carry the caller's one
``event_id``. A second loss, or a timeout (Redis already took ``SOCKET_TIMEOUT``),
fails each of those callers once.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # the hiredis extra is optional
    _hiredis_pack = None  # type: ignore[assignment]

_Waiter = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
_TIMEOUTS = (redis.TimeoutError, TimeoutError)
_LOST = (redis.ConnectionError, OSError)
_pipelines: weakref.WeakKeyDictionary[redis.asyncio.Redis, AutoPipeline] = (
    weakref.WeakKeyDictionary()
)


class AutoPipeline:
    """The coalescing queue of one asyncio client (one per client, hence per loop)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._waiting: list[_Waiter] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Batches sent and commands in them, for tests and benchmarks.
        self.batches = 0
        self.commands = 0

    async def execute(self, *command: Any) -> Any:
        """Send ``command`` with the other commands of this pass; return its raw reply.

        The first caller of a pass leads: it lets the loop run once (every task ready
        in this pass adds its command meanwhile), then sends the batch and settles the
        others. A lone caller pays one pass of the loop, and no task.
        """
        loop = asyncio.get_running_loop()
        if self._waiting:  # a leader is collecting this pass: join it
            future: asyncio.Future[Any] = loop.create_future()
            self._waiting.append((command, future))
            return await future
        mine: asyncio.Future[Any] = loop.create_future()
        self._waiting = batch = [(command, mine)]
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._waiting = []
            if len(batch) > 1:  # the others still go
                self._spawn(batch[1:])
            raise
        self._waiting = []
        self.batches += 1
        self.commands += len(batch)
        if len(batch) == 1:
            await self._send(batch)
        else:  # cancelling the leader must not strand the others
            await asyncio.shield(self._spawn(batch))
        return mine.result()

    def _spawn(self, batch: list[_Waiter]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return task

    async def _send(self, batch: Sequence[_Waiter]) -> None:
        """Send ``batch`` and settle each caller; after a lost connection, send the
        commands whose replies had not come once more, on a new connection."""
        remaining = list(batch)
        for attempt in (1, 2):
            try:
                remaining = await self._exchange(remaining)
            except BaseException as exc:
                _fail(remaining, exc)
                return
            if not remaining:
                return
            if attempt == 2:
                _fail(remaining, redis.ConnectionError("the connection was lost twice"))

    async def _exchange(self, batch: list[_Waiter]) -> list[_Waiter]:
        """Send ``batch`` on one pooled connection and settle the callers whose replies
        arrive; return those left unanswered when the connection was lost."""
        pool: Any = self.client.connection_pool
        conn: Any = await pool.get_connection()
        try:
            await conn.send_packed_command(_pack(conn, [command for command, _ in batch]))
            # One deadline for the batch's replies (each read_response() would arm a
            # timer of its own otherwise: a tenth of the cost of a coalesced call).
            async with asyncio.timeout(conn.socket_timeout):
                return await self._replies(conn, batch)
        except _TIMEOUTS:
            await conn.disconnect()
            raise
        except _LOST:
            await conn.disconnect()  # nothing was read: the whole batch goes again
            return batch
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _replies(self, conn: Any, batch: list[_Waiter]) -> list[_Waiter]:
        """Read the replies of ``batch`` and settle each caller; return those left
        unanswered when the connection was lost."""
        for index, (_command, future) in enumerate(batch):
            try:
                reply = await conn.read_response(timeout=math.inf)
            except redis.ResponseError as exc:
                _settle(future, exc=exc)
                continue
            except _TIMEOUTS:
                raise  # Redis took SOCKET_TIMEOUT already: waiting again doubles it
            except _LOST:
                await conn.disconnect()
                return batch[index:]
            _settle(future, reply=reply)
        return []


def _pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    if _hiredis_pack is not None:
        return b"".join([_hiredis_pack(command) for command in commands])
    return conn.pack_commands(commands)


def _settle(future: asyncio.Future[Any], *, reply: Any = None, exc: Any = None) -> None:
    if future.done():  # the caller was cancelled: its command ran all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(reply)


def _fail(batch: Sequence[_Waiter], exc: BaseException) -> None:
    for _command, future in batch:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(exc))


def autopipeline(client: redis.asyncio.Redis) -> AutoPipeline:
    """Return ``client``'s coalescing queue, creating it on first use."""
    pipeline = _pipelines.get(client)
    if pipeline is None:
        pipeline = _pipelines[client] = AutoPipeline(client)
    return pipeline
