"""`panda serve` with PANDA_WORKERS=N: N server processes on one machine, one port each.

Worker i listens on PANDA_PORT + i. Each has its own address because a call's media lives in
one process: the room→process map (leases in the bus) sends participants to the owner's
address. Put a proxy in front (see the nginx example in the README) for the public site.
Several workers need the shared bus: PANDA_REDIS_URL must be set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from panda.config import Settings

RESTART_DELAY = 1.0
MAX_RESTARTS_PER_MINUTE = 5


def worker_env(settings: Settings, index: int, base_env: dict[str, str]) -> dict[str, str]:
    """The environment of worker `index`: its own port, marked as a child (no recursion)."""
    env = dict(base_env)
    port = settings.port + index
    env.update(
        {
            "PANDA_PORT": str(port),
            "PANDA_HOST": settings.host,
            "PANDA_WORKERS": "1",
            "PANDA_WORKER_INDEX": str(index),
            "PANDA_WORKER_COUNT": str(settings.workers),
        }
    )
    if not base_env.get("PANDA_BASE_URL"):
        env["PANDA_BASE_URL"] = f"http://{settings.host}:{port}"
    return env


def check_workers(settings: Settings) -> str | None:
    """Why these settings cannot run several workers, or None."""
    if settings.workers > 1 and not settings.redis_url:
        return (
            "PANDA_WORKERS > 1 needs PANDA_REDIS_URL: processes share chat, presence and the "
            "room map through Redis"
        )
    if settings.port + settings.workers - 1 > 65535:
        return "PANDA_PORT + PANDA_WORKERS - 1 must be a valid port"
    return None


def run_workers(settings: Settings) -> int:
    """Start `settings.workers` servers, restart any that crash, stop them all on SIGTERM/SIGINT."""
    problem = check_workers(settings)
    if problem:
        print(f"panda: {problem}", file=sys.stderr)
        return 2
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = [sys.executable, "-m", "panda", "serve", "--no-migrate"]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    restarts: dict[int, list[float]] = {i: [] for i in range(settings.workers)}

    def spawn(index: int) -> None:
        procs[index] = subprocess.Popen(command, env=worker_env(settings, index, dict(os.environ)))

    for index in range(settings.workers):
        spawn(index)
    print(
        f"Panda Professor: {settings.workers} workers on ports "
        f"{settings.port}-{settings.port + settings.workers - 1}",
        flush=True,
    )
    exit_code = 0
    try:
        while not stopping:
            time.sleep(0.5)
            for index, proc in list(procs.items()):
                if proc.poll() is None or stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in restarts[index] if now - t < 60]
                if len(recent) >= MAX_RESTARTS_PER_MINUTE:
                    print(f"panda: worker {index} keeps failing; stopping", file=sys.stderr)
                    exit_code = 1
                    stopping = True
                    break
                print(f"panda: worker {index} exited ({proc.returncode}); restarting", flush=True)
                restarts[index] = [*recent, now]
                time.sleep(RESTART_DELAY)
                spawn(index)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return exit_code
