"""Run the demo: a private Redis when REDIS_URL is unset, migrations, demo users,
daphne on http://127.0.0.1:8000 and ``runconsumers``, until Ctrl-C.

Used by ``make demo``; run it as ``python -m demo_site.run``. ``DEMO_CONSUMERS`` (names
separated by spaces) runs only those consumers, e.g. all but ``price_quote`` to see the
quote page without a pricing service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = os.environ.get("DEMO_HOST", "127.0.0.1")
PORT = os.environ.get("DEMO_PORT", "8000")
CONSUMERS = os.environ.get("DEMO_CONSUMERS", "").split()  # none: all of them


def main() -> int:
    """Start everything the demo needs and stop it all on Ctrl-C or SIGTERM."""
    server = None
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="demo_site.settings")
    if not env.get("REDIS_URL"):
        from redis_broker.testing import RedisServer

        server = RedisServer()
        env["REDIS_URL"] = server.start()
        print(f"Started a private Redis at {env['REDIS_URL']}", flush=True)
    python = sys.executable
    manage = [python, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
    print("Demo logins:", flush=True)
    subprocess.run([*manage, "seed_demo"], env=env, check=True)
    procs = [
        subprocess.Popen(
            [python, "-m", "daphne", "-b", HOST, "-p", PORT, "demo_site.asgi:application"],
            env=env,
            cwd=BASE_DIR,
        ),
        subprocess.Popen([*manage, "runconsumers", *CONSUMERS], env=env, cwd=BASE_DIR),
    ]
    print(f"Demo on http://{HOST}:{PORT}/ (admin at /admin/). Ctrl-C stops it.", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()
        if server is not None:
            server.close()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM, None)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
