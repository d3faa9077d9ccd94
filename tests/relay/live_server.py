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


class LiveServer:
    """``python -m daphne`` on a free port; ``url``, ``ws_url`` and ``stop()``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/broker/"
        # A file, not a pipe: nobody reads daphne's access log while it runs, and a full
        # pipe would block the server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "demo_site.asgi:application"],
            env=dict(env),
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(self._answers, timeout=30, message=f"daphne on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"daphne exited:\n{self.output()}")
        try:
            with urllib.request.urlopen(self.url + "/login/", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop daphne (SIGTERM, then SIGKILL)."""
        stop_process(self.process)

    def output(self) -> str:
        """Return what daphne printed (after it stopped)."""
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
