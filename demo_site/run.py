"""Run the demo: a private Redis when REDIS_URL is unset, migrations, demo users,
daphne on http://127.0.0.1:8000 and ``runconsumers``, until Ctrl-C.

Used by ``make demo``; run it as ``python -m demo_site.run``. ``DEMO_CONSUMERS`` (names
separated by spaces) runs only those consumers, e.g. all but ``price_quote`` to see the
quote page without a pricing service.

One Ctrl-C (or one SIGTERM) is a warm stop: each child is asked to stop exactly once,
finishes what it is doing, and the script exits 0. See :func:`take_the_terminal`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = os.environ.get("DEMO_HOST", "127.0.0.1")
PORT = os.environ.get("DEMO_PORT", "8000")
CONSUMERS = os.environ.get("DEMO_CONSUMERS", "").split()  # none: all of them
#: How long a stopping child may take before it is killed (runconsumers' grace is 30 s).
STOP_TIMEOUT = 35


@contextlib.contextmanager
def take_the_terminal() -> Iterator[None]:
    """Make a terminal's Ctrl-C reach this process only, then give the terminal back.

    A terminal sends Ctrl-C's SIGINT to its whole foreground process group: ``make``,
    this script, daphne and runconsumers. Each child would stop on its own and again
    when this script passes the stop on (a second signal is runconsumers' cold stop),
    and ``make`` would die of the signal with status 2 however cleanly the demo ended.
    So, when this script runs in the terminal's foreground, it moves into a process
    group of its own and makes that the foreground group, and the children start in
    sessions of their own: one Ctrl-C reaches this script alone, which stops each child
    once. Without a terminal (CI, a service manager, ``&``) nothing changes.
    """
    try:
        tty = sys.stdin.fileno()
        foreground = os.isatty(tty) and os.tcgetpgrp(tty) == os.getpgrp()
    except (OSError, ValueError):
        foreground = False
    if not foreground:
        yield
        return
    previous = os.getpgrp()
    # A background group that sets the terminal's foreground group gets SIGTTOU.
    ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(tty, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, ttou)
    try:
        yield
    finally:
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, previous)


def main() -> int:
    """Start everything the demo needs and stop it all on Ctrl-C or SIGTERM."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with take_the_terminal():
        return run(lambda: stopping)


def run(stopping: Callable[[], bool]) -> int:
    """Run Redis, migrations, daphne and runconsumers until ``stopping()`` holds."""
    server = None
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="demo_site.settings")
    if not env.get("REDIS_URL"):
        from redis_broker.testing import RedisServer

        server = RedisServer()
        env["REDIS_URL"] = server.start()
        print(f"Started a private Redis at {env['REDIS_URL']}", flush=True)
    python = sys.executable
    manage = [python, str(BASE_DIR / "manage.py")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
        print("Demo logins:", flush=True)
        subprocess.run([*manage, "seed_demo"], env=env, check=True)
        daphne = [python, "-m", "daphne", "-b", HOST, "-p", PORT, "demo_site.asgi:application"]
        for command in (daphne, [*manage, "runconsumers", *CONSUMERS]):
            # A session of its own: no terminal signal reaches the child directly.
            procs.append(subprocess.Popen(command, env=env, cwd=BASE_DIR, start_new_session=True))
        print(f"Demo on http://{HOST}:{PORT}/ (admin at /admin/). Ctrl-C stops it.", flush=True)
        while not stopping() and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # once: a warm stop
        for p in procs:
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if server is not None:
            server.close()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    if stopping() and not failed:
        print("Demo stopped.", flush=True)
    return 1 if failed or not stopping() else 0


if __name__ == "__main__":
    sys.exit(main())
