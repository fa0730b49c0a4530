"""Real PostgreSQL and Redis for the tests: the servers named by PANDA_TEST_DATABASE_URL /
PANDA_TEST_REDIS_URL when set, otherwise private instances on free loopback ports.

Fixtures (a pytest plugin loaded by tests/conftest.py):

- `postgres_url` (session): URL of a PostgreSQL maintenance database on the test server.
- `postgres_databases` (session): creates and drops throwaway databases on that server.
- `fresh_postgres_url`: a new database migrated to head, dropped after the test.
- `redis_url` (session): URL of a Redis server; `fresh_redis_url` is the same, emptied first.
- `redis_server_factory`: private Redis servers a test may kill and restart (never a shared one).
- `migrated_sqlite` (session): a SQLite file migrated once; tests copy it.
- `database_url` / `empty_database_url`: parametrised over SQLite and PostgreSQL, a fresh
  database per test (migrated to head, or empty), so a store test runs on both;
  `store_engine` / `store_db` are an engine and an AsyncSession on `database_url`.

In CI (CI=true) a server that cannot start fails the tests that need it; elsewhere they are
skipped with the reason (run `make test`, which installs the servers, to run them).
PostgreSQL's initdb refuses to run as root, so as root the private server runs as an
unprivileged user (PANDA_TEST_SERVICE_USER, default `nobody`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from panda.store.db import create_engine, create_sessionmaker
from panda.store.migrate import upgrade

T = TypeVar("T")

START_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1


def in_ci() -> bool:
    """True when running under CI, where a missing service must fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def unavailable(reason: str) -> None:
    """Fail (in CI) or skip (elsewhere) a test whose service cannot be had."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: tests needing it fail instead of skipping)", False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous fixture code.

    It runs in a worker thread with its own event loop, so the loop pytest-asyncio keeps for the
    test in this thread is left alone.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, factory()).result()


def _preexec(sig: int) -> Callable[[], None] | None:
    """A child setup that sends `sig` to the server when this process dies (Linux only).

    Keeps a killed test run (timeout -s ABRT) from leaving servers behind. The kernel sends it when
    the forking *thread* exits, so only servers started from the main thread get it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return setup


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PANDA_TEST_SERVICE_USER", "").strip() or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and user {name!r} does not exist "
            "(set PANDA_TEST_SERVICE_USER to an unprivileged user)"
        ) from None
    if entry.pw_uid == 0:
        raise RuntimeError(f"PANDA_TEST_SERVICE_USER={name!r} is root; PostgreSQL refuses root")
    return entry.pw_uid, entry.pw_gid


def _postgres_bindir() -> Path | None:
    """The directory holding initdb and postgres (Debian keeps them off PATH)."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists() and (path / "postgres").exists():
            return path
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    for cand in candidates:
        if Path(cand, "initdb").exists() and Path(cand, "postgres").exists():
            return Path(cand)
    initdb = shutil.which("initdb")
    if initdb:
        path = Path(os.path.realpath(initdb)).parent
        if (path / "postgres").exists():
            return path
    return None


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll `check` until it is true; raise if the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {START_TIMEOUT:.0f} s")


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port: int = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the maintenance database `postgres` (superuser, trust auth)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def log_tail(self) -> str:
        """The end of the server log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> None:
        """initdb, then start the server; raise RuntimeError saying why when that fails."""
        bindir = _postgres_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found (Debian: apt-get install postgresql); "
                "or set PANDA_TEST_DATABASE_URL"
            )
        user = _service_user()
        # A fresh directory under the system temp dir: pytest's own tmp dirs are private to us,
        # and the unprivileged server user must reach its data directory.
        # (/tmp itself when root: a private TMPDIR would keep that user out.)
        parent = "/tmp" if user is not None and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="panda-pg-", dir=parent))
        ids: dict[str, Any] = {}
        if user is not None:
            os.chown(self.root, *user)
            ids = {"user": user[0], "group": user[1], "extra_groups": []}
        data = self.root / "data"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **ids,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout[-1000:]}{init.stderr[-1500:]}")
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            log = self.log_path.open("ab")
            if user is not None:
                os.chown(self.log_path, *user)
            self.proc = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # A throwaway cluster: durability buys nothing and costs time.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                ],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec(signal.SIGQUIT),
                **ids,
            )
            log.close()

            def ready(isready: str = str(bindir / "pg_isready")) -> bool:
                probe = subprocess.run(
                    [isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                    capture_output=True,
                    check=False,
                )
                return probe.returncode == 0

            try:
                _wait_for(ready, self.proc, "PostgreSQL")
                return
            except RuntimeError as exc:
                last_error = f"{exc}: {self.log_tail()}"
                _stop_process(self.proc, signal.SIGQUIT)
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster's directory."""
        _stop_process(self.proc, signal.SIGINT)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def asyncpg_dsn(url: str) -> str:
    """A plain libpq-style DSN for asyncpg from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_pg_url(url: str) -> str:
    """Normalise postgres:// and postgresql:// URLs to the asyncpg dialect we use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {url}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class PostgresDatabases:
    """Create and drop uniquely named databases on one server (private or external)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"panda_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.created: list[str] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._template: str | None = None
        self.version = run_async(self._server_version)

    async def _server_version(self) -> int:
        import asyncpg

        conn = await asyncpg.connect(asyncpg_dsn(self.server_url), timeout=10)
        try:
            return int(await conn.fetchval("SHOW server_version_num"))
        finally:
            await conn.close()

    def url_of(self, name: str) -> str:
        """SQLAlchemy URL of database `name` on this server."""
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def _next_name(self, label: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{self.prefix}_{label}{self._counter}"

    async def _execute(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(asyncpg_dsn(self.server_url), timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create(self, template: str | None = None, label: str = "db") -> str:
        """A new database (a copy of `template` when given); returns its URL."""
        name = self._next_name(label)
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            sql += f' TEMPLATE "{template}"'
            if self.version >= 150000:
                # For a small database a file copy is much faster than WAL-logged copying.
                sql += " STRATEGY FILE_COPY"
        run_async(lambda: self._execute(sql))
        self.created.append(name)
        return self.url_of(name)

    def create_migrated(self) -> str:
        """A new database migrated to head (a copy of a template migrated once per run)."""
        return self.create(template=self.template_name(), label="t")

    def template_name(self) -> str:
        """Name of the database migrated to head once per run; copies are made of it."""
        if self._template is None:
            url = self.create(label="template")
            name = make_url(url).database
            assert name is not None
            run_async(lambda: asyncio.to_thread(upgrade, url))
            self._template = name
        return self._template

    def drop(self, url_or_name: str) -> None:
        """Drop a database made here (connections to it are ended first)."""
        name = make_url(url_or_name).database if "://" in url_or_name else url_or_name
        assert name is not None
        force = " WITH (FORCE)" if self.version >= 130000 else ""
        run_async(lambda: self._execute(f'DROP DATABASE IF EXISTS "{name}"{force}'))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        """Drop every database still left from this run."""
        for name in list(reversed(self.created)):
            try:
                self.drop(name)
            except Exception:  # cleanup must go on; the server is throwaway or shared
                pass


class RedisServer:
    """A private redis-server on a loopback port; can be killed and started again (same port)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or 0
        self.root = Path(tempfile.mkdtemp(prefix="panda-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process lives."""
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start (or restart on the same port); raise RuntimeError saying why when it fails."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found (Debian: apt-get install redis-server); "
                "or set PANDA_TEST_REDIS_URL"
            )
        fixed_port = self.port != 0
        last_error = ""
        for _attempt in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = free_port()
            log = (self.root / "redis.log").open("ab")
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.root),
                    "--daemonize",
                    "no",
                ],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec(signal.SIGTERM),
            )
            log.close()
            try:
                _wait_for(self.ping, self.proc, "redis-server")
                return
            except RuntimeError as exc:
                tail = (self.root / "redis.log").read_text(errors="replace")[-1500:]
                last_error = f"{exc}: {tail}"
                _stop_process(self.proc, signal.SIGKILL)
            if not fixed_port:
                self.port = 0
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would; `start()` brings it back."""
        _stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        """Shut the server down cleanly."""
        _stop_process(self.proc, signal.SIGTERM)

    def cleanup(self) -> None:
        """Stop and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def _postgres_server_url() -> Iterator[str | None]:
    """The PostgreSQL server URL, or None with the reason kept for `postgres_url`."""
    external = os.environ.get("PANDA_TEST_DATABASE_URL", "").strip()
    if external:
        yield sqlalchemy_pg_url(external)
        return
    server = PostgresServer()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.stop()
        _START_ERRORS["postgres"] = str(exc)
        yield None
        return
    try:
        yield server.url
    finally:
        server.stop()


_START_ERRORS: dict[str, str] = {}


@pytest.fixture(scope="session")
def postgres_url(_postgres_server_url: str | None) -> str:
    """URL of a PostgreSQL maintenance database (PANDA_TEST_DATABASE_URL or a private server)."""
    if _postgres_server_url is None:
        unavailable(f"PostgreSQL unavailable: {_START_ERRORS.get('postgres', 'unknown error')}")
    assert _postgres_server_url is not None
    return _postgres_server_url


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    """Creates throwaway databases on the test server; all dropped at the end of the run."""
    try:
        manager = PostgresDatabases(postgres_url)
    except Exception as exc:
        unavailable(f"PostgreSQL at {postgres_url} unusable: {exc}")
        raise
    try:
        yield manager
    finally:
        manager.drop_all()


@pytest.fixture
def fresh_postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped after the test."""
    url = postgres_databases.create_migrated()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture(scope="session")
def _redis_server_url() -> Iterator[str | None]:
    external = os.environ.get("PANDA_TEST_REDIS_URL", "").strip()
    if external:
        yield external
        return
    server = RedisServer()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.cleanup()
        _START_ERRORS["redis"] = str(exc)
        yield None
        return
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_url(_redis_server_url: str | None) -> str:
    """URL of a Redis server (PANDA_TEST_REDIS_URL or a private one) shared by the run."""
    if _redis_server_url is None:
        unavailable(f"Redis unavailable: {_START_ERRORS.get('redis', 'unknown error')}")
    assert _redis_server_url is not None
    return _redis_server_url


@pytest.fixture
def fresh_redis_url(redis_url: str) -> str:
    """`redis_url` with its database emptied before the test (FLUSHDB)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
    """Start private Redis servers (`server = redis_server_factory()`); each is started, may be
    killed (`server.kill()`) and started again on the same port (`server.start()`), and is
    stopped after the test. Always private, even when PANDA_TEST_REDIS_URL is set."""
    servers: list[RedisServer] = []

    def factory() -> RedisServer:
        server = RedisServer()
        servers.append(server)
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            unavailable(f"Redis unavailable: {exc}")
        return server

    yield factory
    for server in servers:
        server.cleanup()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "panda.sqlite3"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


DATABASE_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=DATABASE_PARAMS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite")
        path = tmp_path / "store.sqlite3"
        shutil.copy(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    yield request.getfixturevalue("fresh_postgres_url")


@pytest.fixture(params=DATABASE_PARAMS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database (no tables), once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create(label="e")
    try:
        yield url
    finally:
        databases.drop(url)


@pytest.fixture
async def store_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on `database_url` (SQLite, then PostgreSQL), disposed after the test."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def store_db(store_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """An AsyncSession on a fresh migrated database, once per database backend."""
    async with create_sessionmaker(store_engine)() as session:
        yield session
