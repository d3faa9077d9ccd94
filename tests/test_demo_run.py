"""``make demo`` stops cleanly on one Ctrl-C typed in a terminal.

A terminal's Ctrl-C is SIGINT to every process of its foreground group. These tests
give ``make demo`` a real pseudo-terminal and type Ctrl-C into it, as a user does.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_broker.testing import free_port, wait_for
from tests.helpers import ROOT


class Terminal:
    """A pseudo-terminal running one command as its session's foreground job."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()

        def become_the_terminals_session() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
            preexec_fn=become_the_terminals_session,  # this test starts no threads before
        )
        os.close(slave)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has gone
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)
        os.close(self.master)


@pytest.fixture
def demo_terminal(tmp_path: Path) -> Iterator[tuple[Terminal, int]]:
    """Run ``make demo`` in a pseudo-terminal, on its own Redis, database and port.

    ``-o install`` keeps make from reinstalling into the virtualenv running this test.
    """
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
    }
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}", DEMO_PORT=str(port))
    terminal = Terminal(["make", "-o", "install", "demo", f"VENV={sys.prefix}"], env)
    try:
        yield terminal, port
    finally:
        print(terminal.output)
        terminal.close()


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_one_ctrl_c_stops_make_demo_warmly_with_status_0(
    demo_terminal: tuple[Terminal, int],
) -> None:
    """One Ctrl-C reaches each child once: runconsumers stops warm and make exits 0.

    Before, the terminal's SIGINT reached every child and run.py passed a second stop
    on, which runconsumers takes for a cold stop; make itself died of the signal.
    """
    terminal, port = demo_terminal
    wait_for(lambda: _serving(port), timeout=90, message="the demo serves /login/")
    wait_for(
        lambda: "consumer(s) as" in terminal.output,
        timeout=60,
        message="runconsumers started",
    )
    terminal.type(b"\x03")
    assert terminal.process.wait(timeout=60) == 0
    output = terminal.output
    assert "Demo stopped." in output
    assert "Cold stop" not in output
    assert "CommandError" not in output
    assert "Traceback" not in output
    assert "Interrupt" not in output  # make's "*** [demo] Interrupt"
    # The private Redis outlives the consumers' warm stop (it ignored the Ctrl-C too).
    assert "unreachable" not in output
    assert "lost Redis" not in output
