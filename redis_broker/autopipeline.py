"""Auto-pipelining for the asyncio client: concurrent calls share one write.

A hundred tasks each awaiting ``apublish()`` would otherwise make a hundred round
trips, each paying redis-py's per-command work and a system call on both sides. As in
ioredis and Lettuce, the commands issued on one event loop during one pass of the
loop are coalesced: the first caller yields to the loop once (unless nothing else is
ready to run, when no one could join), callers that run meanwhile (the same pass) join
it, and it packs them all (with hiredis when installed) into one write on one pooled
connection and reads the replies in order. No caller waits for a timer: a batch leaves
on the very next pass, and batches do not wait for one another (each has its own
connection), so coalescing never adds a round trip. Order is kept per connection, hence
per stream for the callers of one pass.

Scripts go the same way (``evalsha``: durable broadcasts, requests). When Redis answers
NOSCRIPT (it restarted, failed over, or was told ``SCRIPT FLUSH``), the batch sends
``SCRIPT LOAD`` once per script followed by the EVALSHAs that were refused, in their
order, on one connection: a refused EVALSHA did not run, so each of those callers still
gets one reply, one round trip later, as ``LuaScript.arun``'s EVAL would give it (and
after the batch's other commands, which had run).

Each caller gets its own reply or its own error: a ``ResponseError`` (WRONGTYPE, OOM)
is raised to that caller alone. When the connection is lost (a Redis restart leaves
idle pooled connections dead), the commands whose replies had not arrived are sent
once more on a new connection, as redis-py's own retry would; a command that had run
before the loss then runs twice, and both entries carry the caller's one
``event_id``. A second loss, or a timeout (Redis already took ``SOCKET_TIMEOUT``),
fails each of those callers once.

On a cluster client ``acall`` and ``arun_script`` send each call on its own, routed
by its key: one write can only go to one node.

Measured by ``bench/publish.py`` (``apublish``, durable ``abroadcast``) and
``bench/rpc.py`` (``arequest``), each against the uncoalesced path.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from .connection import LuaScript, is_cluster, pack_commands

#: A command and the future of the caller waiting for its reply; None for a command
#: the pipeline sends for itself (``SCRIPT LOAD``), whose reply nobody awaits.
_Waiter = tuple[tuple[Any, ...], "asyncio.Future[Any] | None"]
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
        #: The source of each script sent by its SHA1, to load it again after NOSCRIPT.
        self._sources: dict[str, str] = {}
        #: Batches sent and commands in them, for tests and benchmarks.
        self.batches = 0
        self.commands = 0

    async def execute(self, *command: Any) -> Any:
        """Send ``command`` with the other commands of this pass; return its raw reply.

        The first caller of a pass leads: it lets the loop run once (every task ready
        in this pass adds its command meanwhile), then sends the batch and settles the
        others. A lone caller pays no task, and no pass of the loop when nothing else
        is ready to run.
        """
        loop = asyncio.get_running_loop()
        if self._waiting:  # a leader is collecting this pass: join it
            future: asyncio.Future[Any] = loop.create_future()
            self._waiting.append((command, future))
            return await future
        mine: asyncio.Future[Any] = loop.create_future()
        batch: list[_Waiter] = [(command, mine)]
        if not _alone(loop):
            self._waiting = batch
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
            return mine.result()
        # A task sends the batch, so cancelling the leader strands no one; the leader
        # waits for its own reply only, not for the others' resends.
        self._spawn(batch)
        return await mine

    async def evalsha(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` by its SHA1 with the other commands of this pass; return its reply.

        After NOSCRIPT the batch loads the script once and sends the refused calls again.
        """
        self._sources[script.sha] = script.source
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def _spawn(self, batch: list[_Waiter]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return task

    async def _send(self, batch: Sequence[_Waiter]) -> None:
        """Send ``batch`` and settle each caller.

        After a lost connection, the commands whose replies had not come go once more on
        a new connection; after NOSCRIPT, the refused scripts are loaded and their calls
        sent again, once.
        """
        remaining = list(batch)
        lost = reloaded = False
        while remaining:
            try:
                refused, unanswered = await self._exchange(remaining, reload=not reloaded)
            except asyncio.CancelledError as exc:  # a lone caller's, or the loop's end
                _fail(remaining, exc)
                raise
            except BaseException as exc:
                _fail(remaining, exc)
                return
            if unanswered and lost:
                _fail(unanswered, redis.ConnectionError("the connection was lost twice"))
                unanswered = []
            lost = lost or bool(unanswered)
            if refused:
                reloaded = True
                shas = dict.fromkeys(command[1] for command, _ in refused)
                loads: list[_Waiter] = [(("SCRIPT", "LOAD", self._sources[s]), None) for s in shas]
                refused = loads + refused
            remaining = refused + unanswered

    async def _exchange(
        self, batch: list[_Waiter], *, reload: bool
    ) -> tuple[list[_Waiter], list[_Waiter]]:
        """Send ``batch`` on one pooled connection and settle the callers whose replies
        arrive; return the script calls refused with NOSCRIPT (when ``reload``), and
        the commands left unanswered when the connection was lost."""
        pool: Any = self.client.connection_pool
        conn: Any = await pool.get_connection()
        try:
            await conn.send_packed_command(pack_commands(conn, [command for command, _ in batch]))
            # One deadline for the batch's replies (each read_response() would arm a
            # timer of its own otherwise: a tenth of the cost of a coalesced call).
            async with asyncio.timeout(conn.socket_timeout):
                return await self._replies(conn, batch, reload=reload)
        except _TIMEOUTS:
            await conn.disconnect()
            raise
        except _LOST:
            await conn.disconnect()  # nothing was read: the whole batch goes again
            return [], batch
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _replies(
        self, conn: Any, batch: list[_Waiter], *, reload: bool
    ) -> tuple[list[_Waiter], list[_Waiter]]:
        """Read the replies of ``batch`` and settle each caller; return the refused
        script calls and the commands left unanswered when the connection was lost."""
        refused: list[_Waiter] = []
        for index, waiter in enumerate(batch):
            command, future = waiter
            try:
                reply = await conn.read_response(timeout=math.inf)
            except redis.exceptions.NoScriptError as exc:
                if reload and command[0] == "EVALSHA" and command[1] in self._sources:
                    refused.append(waiter)  # it did not run: it goes again, after a load
                else:
                    _settle(future, exc=exc)
                continue
            except redis.ResponseError as exc:
                _settle(future, exc=exc)
                continue
            except _TIMEOUTS:
                raise  # Redis took SOCKET_TIMEOUT already: waiting again doubles it
            except _LOST:
                await conn.disconnect()
                return refused, batch[index:]
            _settle(future, reply=reply)
        return refused, []


def _alone(loop: asyncio.AbstractEventLoop) -> bool:
    """Return True when no other callback is ready in this pass of ``loop``: no caller
    can join the batch, and yielding would only cost a pass (3 us, 7 % of a lone durable
    ``abroadcast()``'s client time: bench/publish.py's lone rows). An event loop without
    asyncio's ready queue (uvloop) always yields."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _settle(future: asyncio.Future[Any] | None, *, reply: Any = None, exc: Any = None) -> None:
    if future is None or future.done():  # ours, or the caller was cancelled: it ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(reply)


def _fail(batch: Sequence[_Waiter], exc: BaseException) -> None:
    for _command, future in batch:
        if future is None or future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):  # cancelled with the sender
            future.cancel()
        else:
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(exc))


def autopipeline(client: redis.asyncio.Redis) -> AutoPipeline:
    """Return ``client``'s coalescing queue, creating it on first use."""
    pipeline = _pipelines.get(client)
    if pipeline is None:
        pipeline = _pipelines[client] = AutoPipeline(client)
    return pipeline


async def acall(client: Any, *command: Any) -> Any:
    """Send ``command`` with the other calls of this pass of the loop (one write, one
    round trip); a cluster client routes it by its key instead."""
    if is_cluster(client):
        return await client.execute_command(*command)
    return await autopipeline(client).execute(*command)


async def arun_script(
    client: Any, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """Run ``script`` with the other calls of this pass of the loop; a cluster client
    routes it by its keys instead (``LuaScript.arun``)."""
    if is_cluster(client):
        return await script.arun(client, keys, args)
    return await autopipeline(client).evalsha(script, keys, args)
