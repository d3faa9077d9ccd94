"""``manage.py probeconsumers live|ready``: an exit-code probe of ``runconsumers`` workers.

For exec-style checks (Kubernetes ``exec`` probes, Docker ``HEALTHCHECK``, cron, Nagios):
exit 0 when healthy, 1 otherwise, with one line saying why.

python manage.py probeconsumers live --port 9108      # ask the local worker's /livez
python manage.py probeconsumers ready --port 9108     # ... its /readyz
python manage.py probeconsumers live                  # every live worker's heartbeat in Redis
python manage.py probeconsumers ready --consumer-name web-1-worker

With ``--port`` it asks the worker's own health server (``runconsumers --metrics-port``),
which answers from the worker's memory: use it for a liveness probe, since it does not
depend on Redis. Without ``--port`` it reads the workers' heartbeats in Redis (one
worker with ``--consumer-name``, else every live one), each carrying the worker's own
live/ready verdict at its last beat: this works from any host, but needs Redis, and a
worker whose event loop stopped shows up as a missing heartbeat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import get_config
from ...connection import REDIS_ERRORS, build_async_client, explain, mask_url
from ...heartbeat import WorkerInfo, live_workers


class Command(BaseCommand):
    """Exit 0 when the consumers are live (or ready), 1 with the reason otherwise."""

    help = "Probe runconsumers workers: exit 0 when live/ready, 1 (with the reason) otherwise."

    def add_arguments(self, parser: CommandParser) -> None:
        add = parser.add_argument
        add("probe", choices=["live", "ready"], help="live: making progress; ready: can work")
        add("--port", type=int, help="ask the worker's health server on this port")
        add("--host", default="127.0.0.1", help="the health server's address")
        add("--consumer-name", help="without --port: the worker to check (default: all live)")
        add("--timeout", type=float, default=3.0, help="seconds to wait for an answer")

    def handle(self, *args: str, **options: Any) -> None:
        probe: str = options["probe"]
        if options["port"] is not None:
            ok, line = ask_server(options["host"], options["port"], probe, options["timeout"])
        else:
            ok, line = asyncio.run(
                read_heartbeats(probe, options["consumer_name"], wait=options["timeout"])
            )
        if not ok:
            raise CommandError(line, returncode=1)
        self.stdout.write(line)


def ask_server(host: str, port: int, probe: str, timeout: float) -> tuple[bool, str]:
    """GET ``/livez`` or ``/readyz``; return (healthy, one line)."""
    url = f"http://{host}:{port}/{probe}z"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, f"{probe}: {_reasons(response.read()) or 'ok'}"
    except urllib.error.HTTPError as exc:
        return False, f"not {probe}: {_reasons(exc.read()) or exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not {probe}: no answer from {url} ({reason})"


def _reasons(body: bytes) -> str:
    """Return the problems of a health answer as one line ("" when none)."""
    try:
        problems = json.loads(body).get("problems", [])
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:200]
    return "; ".join(
        f"{p['consumer']}: {p['reason']}" if p.get("consumer") else str(p.get("reason"))
        for p in problems
    )


async def read_heartbeats(probe: str, name: str | None, *, wait: float) -> tuple[bool, str]:
    """Judge the workers by their heartbeats in Redis (each command waits at most
    ``wait`` seconds); return (healthy, one line)."""
    config = get_config()
    quick = dataclasses.replace(config, socket_timeout=wait, socket_connect_timeout=wait, retries=0)
    client = build_async_client(quick, retries=False)
    try:
        workers = await live_workers(client, config.key_prefix)
    except REDIS_ERRORS as exc:
        return False, (
            f"not {probe}: Redis at {mask_url(config.url)} does not answer "
            f"({explain(exc, config.url)})"
        )
    finally:
        await client.aclose()
    if name is not None:
        workers = [w for w in workers if w.name == name]
        if not workers:
            return False, f"not {probe}: no heartbeat from worker {name!r} (stopped, or stuck)"
    if not workers:
        return False, f"not {probe}: no live runconsumers worker has a heartbeat"
    failing = [w for w in workers if not _passes(w, probe)]
    if failing:
        return False, f"not {probe}: " + "; ".join(_why(w) for w in failing)
    names = ", ".join(w.name for w in workers)
    return True, f"{probe}: {len(workers)} worker(s) ({names})"


def _passes(worker: WorkerInfo, probe: str) -> bool:
    verdict = worker.live if probe == "live" else worker.ready
    return verdict is not False  # None: a worker that predates the verdicts; it beats


def _why(worker: WorkerInfo) -> str:
    return f"{worker.name} ({'; '.join(worker.problems) or 'no reason given'})"
