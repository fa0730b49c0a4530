"""Fixtures for every test: settings on a private data directory, the app, a client, users.

Real PostgreSQL and Redis (`postgres_url`, `fresh_postgres_url`, `redis_url`,
`redis_server_factory`, the SQLite/PostgreSQL-parametrised `database_url`) come from
tests/services.py, loaded here as a plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.store.models import User
from panda.store.users import create_user
from tests.helpers import DEFAULT_PASSWORD, free_port

ROOT = Path(__file__).resolve().parents[1]
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"

pytest_plugins = ["tests.services"]


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Path) -> Settings:
    """Settings on a private data directory with a freshly migrated database: SQLite, or
    PostgreSQL for tests marked `@pytest.mark.parametrize("settings", ["sqlite", "postgresql"],
    indirect=True)` (a fresh database each)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        database_url = request.getfixturevalue("fresh_postgres_url")
    elif backend == "sqlite":
        db_path = tmp_path / "panda.sqlite3"
        shutil.copy(migrated_sqlite, db_path)
        database_url = f"sqlite+aiosqlite:///{db_path}"
    else:
        raise ValueError(f"unknown settings backend {backend!r}")
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key=TEST_SECRET,
        base_url="http://127.0.0.1:8080",
        ice_loopback=True,
        # PANDA_RELAY_PATH=frame runs the browser call tests on the frame-level relay instead
        relay_path=os.environ.get("PANDA_RELAY_PATH", "").strip() or "packet",
    )


@pytest.fixture
def app(settings: Settings) -> web.Application:
    """The application under test (started by the `client` fixture)."""
    return create_app(settings)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], app: web.Application
) -> TestClient:
    """An HTTP client talking to the started app."""
    return await aiohttp_client(app)


@pytest.fixture
async def db(client: TestClient) -> AsyncIterator[AsyncSession]:
    """A database session on the app's engine (the app must be started: depends on client)."""
    async with client.app[keys.sessionmaker]() as session:
        yield session


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
def make_user(client: TestClient) -> UserFactory:
    """Create a user directly in the database: `await make_user("tutor", email=...)`."""
    counter = {"n": 0}

    async def factory(role: str = "student", **kw: Any) -> User:
        counter["n"] += 1
        kw.setdefault("email", f"{role}{counter['n']}@example.test")
        kw.setdefault("name", f"{role.title()} {counter['n']}")
        kw.setdefault("password", DEFAULT_PASSWORD)
        kw.setdefault("verified", True)
        if role == "tutor":
            kw.setdefault("tutor_status", "approved")
        async with client.app[keys.sessionmaker]() as session:
            user = await create_user(session, role=role, **kw)
            await session.commit()
            return user

    return factory


class LiveServer:
    """A real `panda serve` process on a free loopback port."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The developer's own PANDA_* settings must never reach a test server (their database!).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PANDA_")}
        self.env = {
            **inherited,
            "PANDA_DATA_DIR": str(data_dir),
            "PANDA_PORT": str(self.port),
            "PANDA_HOST": "127.0.0.1",
            "PANDA_BASE_URL": self.url,
            "PANDA_SECRET_KEY": TEST_SECRET,
            "PANDA_ICE_LOOPBACK": "1",
            # the relay path under test is the one setting passed on (see `settings`)
            "PANDA_RELAY_PATH": os.environ.get("PANDA_RELAY_PATH", "").strip() or "packet",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    def run_cli(self, *args: str, input_text: str | None = None) -> str:
        """Run a `panda` subcommand against this server's data directory."""
        out = subprocess.run(
            [sys.executable, "-m", "panda", *args],
            env=self.env,
            cwd=ROOT,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until /healthz answers."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panda", "serve"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int | None = None) -> None:
        """Stop the server (SIGTERM, or the given signal) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig is None:
            self.proc.terminate()
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers: `live_server_factory(PANDA_X="1")`; stopped after the test."""
    servers: list[LiveServer] = []

    def factory(data_dir: Path | None = None, **env: str) -> LiveServer:
        folder = data_dir or tmp_path / f"server{len(servers)}"
        folder.mkdir(parents=True, exist_ok=True)
        server = LiveServer(folder, env)
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def processes(
    live_server_factory: Callable[..., LiveServer], fresh_postgres_url: str, fresh_redis_url: str
) -> tuple[LiveServer, LiveServer, dict[str, Any]]:
    """Two server processes (own ports, same PostgreSQL and Redis) and a demo session now."""
    env = {"PANDA_DATABASE_URL": fresh_postgres_url, "PANDA_REDIS_URL": fresh_redis_url}
    a = live_server_factory(**env)
    b = live_server_factory(**env)
    return a, b, json.loads(a.run_cli("demo", "--json"))


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """One real server with SQLite on a private data directory."""
    return live_server_factory()


# Tests that drive real browsers, several server processes or real network timing can lose a
# race on a loaded machine. They get one retry (reported as "rerun" in the summary), so a
# genuine failure still fails twice and shows; make any test listed here robust rather than
# adding to the list.
_TIMING_SENSITIVE = ("/e2e/", "/multiproc/", "/media/test_ice_tcp_call", "/media/test_chromium_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give browser, multi-process and network-timing tests one retry."""
    for item in items:
        path = str(item.fspath)
        if any(part in path for part in _TIMING_SENSITIVE) or item.name.startswith(
            "test_periodic_work_runs_in_one_process"
        ):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
