"""`panda serve` with PANDA_WORKERS=2: two processes, one port each, sharing Redis and the DB."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from panda.config import Settings
from panda.workers import check_workers, worker_env
from tests.conftest import ROOT, TEST_SECRET

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


def _two_free_ports() -> int:
    """A port p with p and p+1 both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def test_worker_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="sqlite+aiosqlite://",
        secret_key="x" * 40,
        port=9000,
        workers=3,
    )
    assert "PANDA_REDIS_URL" in (check_workers(settings) or "")
    ok = settings.with_(redis_url="redis://127.0.0.1:1/0")
    assert check_workers(ok) is None
    env = worker_env(ok, 2, {})
    assert env["PANDA_PORT"] == "9002" and env["PANDA_WORKERS"] == "1"
    assert env["PANDA_BASE_URL"] == "http://127.0.0.1:9002"
    assert worker_env(ok, 2, {"PANDA_BASE_URL": "https://x.test"})["PANDA_BASE_URL"] == (
        "https://x.test"
    )


def test_two_workers_serve_and_stop(tmp_path: Path, fresh_redis_url: str) -> None:
    port = _two_free_ports()
    env = {
        "PATH": "/usr/bin:/bin",
        "PANDA_DATA_DIR": str(tmp_path),
        "PANDA_PORT": str(port),
        "PANDA_HOST": "127.0.0.1",
        "PANDA_SECRET_KEY": TEST_SECRET,
        "PANDA_WORKERS": "2",
        "PANDA_REDIS_URL": fresh_redis_url,
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "panda", "serve"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (_health(port) and _health(port + 1)):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        assert _health(port) and _health(port + 1), (tmp_path / "serve.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert _health(port) is None and _health(port + 1) is None


def test_workers_need_redis(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PANDA_DATA_DIR": str(tmp_path),
        "PANDA_SECRET_KEY": TEST_SECRET,
        "PANDA_WORKERS": "2",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-m", "panda", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "PANDA_REDIS_URL" in out.stderr
