"""Health that means progress: a worker's ``/livez``, ``/readyz`` and ``/metrics``.

A PING says Redis answers, not that a consumer works: a consumer stuck in one ``await``
for hours passes it. So liveness here is progress. Each consumer's worker stamps a
monotonic clock whenever a read returns (entries, or an empty block) and whenever
outcomes come in (``ConsumerWorker.progress_at``). ``/livez`` answers 503 when

* a consumer has had work waiting (entries handed out and not settled, or its last
  read filled a whole batch) without progress for ``CONSUMERS["LIVENESS_TIMEOUT"]``;
* a handler call has been running longer than that (a handler stuck forever);
* the runner's event loop has not ticked for that long (a loop blocked by a sync call,
  a deadlock): the loop stamps ``loop_at``, and this server reads it from its own thread.

``/readyz`` answers 503 while Redis does not answer a PING (sent from the server's
thread, with a short timeout, so a stuck loop cannot hide it), while a consumer's
group is missing (NOGROUP seen, not yet created again), or before the runner has
created its groups. Both answer JSON naming each consumer and why.

The server is ``wsgiref`` on a daemon thread: a loop that stopped cannot stop the probe
from answering 503, and a process that exits does not wait for it. ``/metrics`` is
``prometheus_client``'s own WSGI exposition of its default registry.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from .conf import BrokerConfig
from .connection import build_client, explain, mask_url

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from .consumers.worker import ConsumerWorker

#: Seconds the readiness PING may take (connect and reply) before Redis counts as down.
PING_TIMEOUT = 1.0
#: Paths the server answers.
LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One reason a probe fails: which consumer ("" for the process) and why."""

    consumer: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What a probe answers: ok, or the problems found."""

    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """Return True when nothing is wrong."""
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """Return the JSON body of the answer."""
        return {
            "status": "ok" if self.ok else "failing",
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }

    def line(self) -> str:
        """Return the verdict as one line (for the probe command and logs)."""
        if self.ok:
            return "ok"
        return "; ".join(
            f"{p.consumer}: {p.reason}" if p.consumer else p.reason for p in self.problems
        )


class ProcessHealth:
    """The liveness and readiness of one ``runconsumers`` process.

    ``workers`` are read at each probe. ``tick()`` is called from the event loop (the
    runner's watch task, about once a second); the probes are called from any thread.
    """

    def __init__(self, workers: Sequence[ConsumerWorker], config: BrokerConfig) -> None:
        self.workers = workers
        self.config = config
        self.timeout = config.consumers.liveness_timeout
        self.loop_at = time.monotonic()
        self.started = False  # groups created, workers running
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        """Stamp the event loop as running (call it from the loop)."""
        self.loop_at = time.monotonic()

    def liveness(self) -> Verdict:
        """Return whether every consumer makes progress and the loop runs."""
        now = time.monotonic()
        problems = []
        stalled = now - self.loop_at
        if stalled > self.timeout:
            problems.append(
                Problem(
                    "",
                    f"the event loop has not run for {stalled:.1f} s "
                    f"(LIVENESS_TIMEOUT {self.timeout:g} s)",
                )
            )
        problems += _problems(self.workers, lambda w: w.liveness_problem(now))
        return Verdict(tuple(problems))

    def readiness(self, *, ping: bool = True) -> Verdict:
        """Return whether Redis answers and every consumer can work.

        ``ping=False`` skips the PING (the heartbeat, written over Redis anyway).
        """
        problems = []
        if not self.started:
            problems.append(Problem("", "starting: the consumer groups are not created yet"))
        if ping and (down := self.ping()) is not None:
            problems.append(Problem("", down))
        problems += _problems(self.workers, lambda w: w.readiness_problem())
        return Verdict(tuple(problems))

    def ping(self) -> str | None:
        """PING Redis with a short timeout; return why it failed, or None."""
        with self._lock:  # one client, built on first use, shared by the server's threads
            if self._client is None:
                quick = dataclasses.replace(
                    self.config,
                    socket_timeout=PING_TIMEOUT,
                    socket_connect_timeout=PING_TIMEOUT,
                    retries=0,
                )
                self._client = build_client(quick)
            client = self._client
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return (
                f"Redis at {mask_url(self.config.url)} does not answer: "
                f"{explain(exc, self.config.url)}"
            )
        return None

    def close(self) -> None:
        """Close the PING client."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _problems(
    workers: Iterable[ConsumerWorker], check: Callable[[ConsumerWorker], str | None]
) -> list[Problem]:
    return [Problem(str(w), reason) for w in workers if (reason := check(w)) is not None]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe stuck on a slow client never holds the process
    allow_reuse_address = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: probes come every few seconds."""


class HealthServer:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` from a daemon thread.

    ``port=0`` picks a free port; ``start()`` returns the port bound.
    """

    def __init__(
        self,
        health: ProcessHealth,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health
        self.host = host
        self.port = port
        self.metrics_app = make_wsgi_app(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving; return the port. Raises ``OSError`` when it cannot bind."""
        server_class = _IPv6Server if ":" in self.host else _Server
        self._server = make_server(
            self.host, self.port, self.app, server_class=server_class, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="redis-broker-health",
            daemon=True,
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.health.close()

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: the three paths, 404 for anything else."""
        path = environ.get("PATH_INFO", "")
        if path == METRICS:
            return self.metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path in (LIVEZ, READYZ):
            verdict = self.health.liveness() if path == LIVEZ else self.health.readiness()
            body = json.dumps(verdict.as_json()).encode()
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            start_response(
                status,
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]
        body = b"Not found: try /metrics, /livez or /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [body]
