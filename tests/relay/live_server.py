"""A real daphne process serving the demo's ASGI application, for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from typing import Any

from redis_broker.testing import free_port, stop_process, wait_for
from tests.helpers import ROOT

#: The README's uvicorn command, less the address: WebSockets through websockets' sans-I/O
#: protocol (uvicorn's default when websockets is installed); frames over 1 MiB closed with
#: 1009 before they are read whole (daphne's limit; uvicorn's own is 16 MiB); no
#: per-message deflate (a zlib context per socket, and every broadcast frame compressed
#: once per socket: see bench/relay.py); no lifespan (Channels' router has no
#: ``lifespan`` application).
UVICORN_COMMAND = (
    "--ws",
    "websockets-sansio",
    "--ws-max-size",
    "1048576",
    "--ws-per-message-deflate",
    "false",
    "--lifespan",
    "off",
)


def server_command(server: str, port: int) -> list[str]:
    """Return the command that serves the demo's ASGI application with ``server`` (daphne
    or uvicorn, as the README runs each) on 127.0.0.1:``port``."""
    if server == "uvicorn":
        address = ["--host", "127.0.0.1", "--port", str(port), *UVICORN_COMMAND]
    else:
        address = ["-b", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", server, *address, "demo_site.asgi:application"]


class LiveServer:
    """``python -m daphne`` (or ``server="uvicorn"``) on a free port; ``url``, ``ws_url``
    and ``stop()``."""

    def __init__(self, env: Mapping[str, str], server: str = "daphne") -> None:
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/broker/"
        # A file, not a pipe: nobody reads the server's access log while it runs, and a
        # full pipe would block the server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            server_command(server, self.port),
            env=dict(env),
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._answers, timeout=30, message=f"{server} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.server} exited:\n{self.output()}")
        try:
            with urllib.request.urlopen(self.url + "/login/", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        stop_process(self.process)

    def output(self) -> str:
        """Return what the server printed (after it stopped)."""
        self.stop()
        self.log.seek(0)
        return self.log.read()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.log.close()


def session_cookie(user: Any) -> str:
    """Return a ``Cookie`` header value that logs ``user`` in on the live server."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
