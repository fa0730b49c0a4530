"""The `panda` command line: migrate, create-admin, demo and serve, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from alembic.script import ScriptDirectory
from sqlalchemy import select, update

from panda.app import create_app
from panda.config import Settings
from panda.passwords import verify_password
from panda.store.db import create_engine, create_sessionmaker
from panda.store.migrate import alembic_config
from panda.store.models import Booking, User
from panda.store.types import utcnow
from tests.conftest import ROOT, LiveServer
from tests.helpers import login
from tests.services import PostgresDatabases

ADMIN_PASSWORD = "a sturdy admin passphrase"


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no PANDA_* of the developer's leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDA_")}
    env.update({"PANDA_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **extra})
    return env


def panda(
    data_dir: Path, *args: str, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m panda ARGS` and return the finished process (never raises on failure)."""
    return subprocess.run(
        [sys.executable, "-m", "panda", *args],
        env=cli_env(data_dir, **extra),
        cwd=ROOT,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()
    assert head is not None
    return head


def sqlite_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "panda.sqlite3") as conn:
        return conn.execute(sql).fetchall()


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["panda"] == "panda.cli:main"


def test_no_command_shows_usage() -> None:
    out = panda(Path("/nonexistent"))
    assert out.returncode == 2
    assert "usage: panda" in out.stderr


# --------------------------------------------------------------------------- migrate


def test_migrate_creates_the_schema_and_can_run_again(tmp_path: Path) -> None:
    first = panda(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert "up to date" in first.stdout
    assert sqlite_rows(tmp_path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    tables = {r[0] for r in sqlite_rows(tmp_path, "SELECT name FROM sqlite_master")}
    assert {"users", "bookings", "user_sessions"} <= tables
    again = panda(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr


@pytest.mark.postgres
def test_migrate_on_postgresql(tmp_path: Path, postgres_databases: PostgresDatabases) -> None:
    url = postgres_databases.create(label="cli")
    out = panda(tmp_path, "migrate", PANDA_DATABASE_URL=url)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "panda.sqlite3").exists()


def test_migrate_reports_an_unreachable_database_clearly(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        out = panda(
            tmp_path,
            "migrate",
            PANDA_DATABASE_URL=f"postgresql://panda@127.0.0.1:{closed_port}/panda",
        )
    assert out.returncode == 1
    assert out.stderr.startswith("panda: cannot migrate the database")
    assert "Traceback" not in out.stderr


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    for command in ("migrate", "serve", "demo"):
        out = panda(tmp_path, command, PANDA_PORT="eighty")
        assert out.returncode == 2
        assert "PANDA_PORT" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- create-admin


def test_create_admin_with_password_from_stdin(tmp_path: Path) -> None:
    out = panda(
        tmp_path,
        "create-admin",
        "--email",
        " Root@Example.TEST ",
        "--name",
        "Rosa Root",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert out.returncode == 0, out.stderr
    assert "root@example.test" in out.stdout
    rows = sqlite_rows(
        tmp_path,
        "SELECT email, name, role, email_verified_at IS NOT NULL, password_hash FROM users",
    )
    assert len(rows) == 1
    email, name, role, verified, password_hash = rows[0]
    assert (email, name, role, verified) == ("root@example.test", "Rosa Root", "admin", 1)
    assert verify_password(password_hash, ADMIN_PASSWORD)
    assert ADMIN_PASSWORD not in out.stdout + out.stderr

    again = panda(
        tmp_path,
        "create-admin",
        "--email",
        "root@example.test",
        "--name",
        "Rosa",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert len(sqlite_rows(tmp_path, "SELECT id FROM users")) == 1


@pytest.mark.parametrize(
    ("email", "name", "password", "message"),
    [
        ("root@example.test", "Rosa", "short", "at least 10"),
        ("root@example.test", "Rosa", "password123", "too common"),
        ("root@example.test", "Rosa", "", "at least 10"),
        ("not-an-address", "Rosa", ADMIN_PASSWORD, "not an e-mail address"),
        ("root@example.test", "   ", ADMIN_PASSWORD, "--name"),
    ],
)
def test_create_admin_refuses_bad_input(
    tmp_path: Path, email: str, name: str, password: str, message: str
) -> None:
    out = panda(
        tmp_path,
        "create-admin",
        "--email",
        email,
        "--name",
        name,
        "--password-stdin",
        stdin=password + "\n",
    )
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    db = tmp_path / "panda.sqlite3"
    assert not db.exists() or sqlite_rows(tmp_path, "SELECT id FROM users") == []


def test_create_admin_without_a_terminal_asks_for_password_stdin(tmp_path: Path) -> None:
    out = panda(tmp_path, "create-admin", "--email", "r@example.test", "--name", "R")
    assert out.returncode == 1
    assert "--password-stdin" in out.stderr


# --------------------------------------------------------------------------- demo


def demo_json(data_dir: Path, **extra: str) -> dict[str, Any]:
    out = panda(data_dir, "demo", "--json", **extra)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def check_demo_shape(result: dict[str, Any], base_url: str) -> None:
    assert set(result) == {"admin", "tutor", "student", "session_id", "call_url"}
    for role in ("admin", "tutor", "student"):
        assert set(result[role]) == {"email", "password"}
        assert "@" in result[role]["email"] and len(result[role]["password"]) >= 10
    assert isinstance(result["session_id"], int)
    assert result["call_url"] == f"{base_url}/sessions/{result['session_id']}/call"


async def test_demo_json_is_idempotent_and_its_logins_work(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]
) -> None:
    first = demo_json(tmp_path)
    check_demo_shape(first, "http://127.0.0.1:8080")
    logins_file = tmp_path / "demo-logins.json"
    assert stat.S_IMODE(logins_file.stat().st_mode) == 0o600
    second = demo_json(tmp_path)
    assert second == first  # same logins, same session while it is current

    settings = Settings.from_env(cli_env(tmp_path))
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            users = {u.role: u for u in (await db.execute(select(User))).scalars()}
            assert set(users) == {"admin", "tutor", "student"}
            assert all(u.is_verified and u.is_active for u in users.values())
            assert users["tutor"].tutor_status == "approved"
            booking = await db.get_one(Booking, first["session_id"])
            assert booking.status == "scheduled"
            assert (booking.student_id, booking.tutor_id) == (
                users["student"].id,
                users["tutor"].id,
            )
            now = utcnow()
            assert booking.start_at <= now < booking.end_at
    finally:
        await engine.dispose()

    client = await aiohttp_client(create_app(settings))
    for role in ("admin", "tutor", "student"):
        await login(client, first[role]["email"], first[role]["password"])
        resp = await client.get("/dashboard")
        assert resp.status == 200
        client.session.cookie_jar.clear()


async def test_demo_books_a_new_session_when_the_old_one_is_over(tmp_path: Path) -> None:
    first = demo_json(tmp_path)
    settings = Settings.from_env(cli_env(tmp_path))
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            past = utcnow() - timedelta(days=1)
            await db.execute(
                update(Booking)
                .where(Booking.id == first["session_id"])
                .values(start_at=past, end_at=past + timedelta(hours=1), status="completed")
            )
            await db.commit()
    finally:
        await engine.dispose()
    second = demo_json(tmp_path)
    assert second["session_id"] != first["session_id"]
    assert {r: second[r] for r in ("admin", "tutor", "student")} == {
        r: first[r] for r in ("admin", "tutor", "student")
    }


def test_demo_repairs_a_changed_demo_password(tmp_path: Path) -> None:
    first = demo_json(tmp_path)
    with sqlite3.connect(tmp_path / "panda.sqlite3") as conn:
        conn.execute("UPDATE users SET password_hash = 'x', is_active = 0 WHERE role = 'tutor'")
    demo_json(tmp_path)
    ((password_hash, active),) = sqlite_rows(
        tmp_path, "SELECT password_hash, is_active FROM users WHERE role = 'tutor'"
    )
    assert active == 1 and verify_password(password_hash, first["tutor"]["password"])


def test_demo_text_output_prints_the_logins(tmp_path: Path) -> None:
    out = panda(tmp_path, "demo")
    assert out.returncode == 0, out.stderr
    logins = json.loads((tmp_path / "demo-logins.json").read_text())
    for role in ("admin", "tutor", "student"):
        assert f"{role}@demo.panda.test" in out.stdout
        assert logins[role] in out.stdout
    assert "/sessions/" in out.stdout and "/login" in out.stdout


def test_demo_is_refused_in_production(tmp_path: Path) -> None:
    out = panda(tmp_path, "demo", "--json", PANDA_ENV="production", PANDA_SECRET_KEY="p" * 40)
    assert out.returncode == 2
    assert "production" in out.stderr
    assert out.stdout == ""
    assert not (tmp_path / "panda.sqlite3").exists()
    assert not (tmp_path / "demo-logins.json").exists()
    # `make run` passes --if-empty: in production it says why and goes on to serve.
    quiet = panda(tmp_path, "demo", "--if-empty", PANDA_ENV="production", PANDA_SECRET_KEY="p" * 40)
    assert quiet.returncode == 0
    assert "production" in quiet.stdout
    assert not (tmp_path / "demo-logins.json").exists()


def test_demo_if_empty_leaves_a_site_in_use_alone(tmp_path: Path) -> None:
    made = panda(
        tmp_path,
        "create-admin",
        "--email",
        "owner@example.test",
        "--name",
        "Owner",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    out = panda(tmp_path, "demo", "--if-empty")
    assert out.returncode == 0, out.stderr
    assert "already has accounts" in out.stdout
    assert sqlite_rows(tmp_path, "SELECT email FROM users") == [("owner@example.test",)]
    assert not (tmp_path / "demo-logins.json").exists()


def test_demo_if_empty_on_a_new_data_directory_creates_the_demo(tmp_path: Path) -> None:
    out = panda(tmp_path, "demo", "--if-empty", "--json")
    assert out.returncode == 0, out.stderr
    check_demo_shape(json.loads(out.stdout), "http://127.0.0.1:8080")
    # A second `make run` prints the same logins again.
    again = panda(tmp_path, "demo", "--if-empty", "--json")
    assert json.loads(again.stdout) == json.loads(out.stdout)


@pytest.mark.postgres
def test_demo_on_postgresql(tmp_path: Path, postgres_databases: PostgresDatabases) -> None:
    url = postgres_databases.create(label="demo")
    base = "http://127.0.0.1:9999"
    first = demo_json(tmp_path, PANDA_DATABASE_URL=url, PANDA_BASE_URL=base)
    check_demo_shape(first, base)
    assert demo_json(tmp_path, PANDA_DATABASE_URL=url, PANDA_BASE_URL=base) == first


def test_demo_tutors_needs_the_marketplace_or_fills_it(tmp_path: Path) -> None:
    out = panda(tmp_path, "demo", "--tutors", "3")
    try:
        import panda.demo_data as demo_data  # type: ignore[import-not-found]  # noqa: F401
    except ModuleNotFoundError:
        assert out.returncode == 1
        assert "--tutors" in out.stderr and "Traceback" not in out.stderr
    else:
        assert out.returncode == 0, out.stderr
    negative = panda(tmp_path, "demo", "--tutors", "-1")
    assert negative.returncode == 2


# --------------------------------------------------------------------------- serve


def test_serve_answers_healthz_and_stops_cleanly(live_server: LiveServer) -> None:
    with urllib.request.urlopen(f"{live_server.url}/healthz", timeout=10) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert body["database"] == "ok" and body["status"] == "ok" and body["version"]
    with urllib.request.urlopen(f"{live_server.url}/", timeout=10) as resp:
        assert b"Panda Professor" in resp.read()
    assert live_server.proc is not None
    live_server.stop(signal.SIGTERM)
    assert live_server.proc.returncode == 0
    log = live_server.log_path.read_text()
    assert f"serving on http://127.0.0.1:{live_server.port}" in log
    assert "Traceback" not in log


@pytest.mark.postgres
def test_serve_on_postgresql(
    live_server_factory: Callable[..., LiveServer], postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.create(label="serve")  # empty: serve migrates it first
    server = live_server_factory(PANDA_DATABASE_URL=url)
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as resp:
        assert json.loads(resp.read())["database"] == "ok"


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = panda(tmp_path, "serve", "--port", str(port))
    assert out.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def _workers(pid: int) -> dict[str, int]:
    """{worker index: pid} of the supervisor `pid`'s workers (a child caught between fork and
    exec still shows the supervisor's command line: left out)."""
    return {
        argv[argv.index("--worker-index") + 1]: child
        for child, argv in _children(pid).items()
        if "--worker-index" in argv
    }


def _children(pid: int) -> dict[int, list[str]]:
    """{pid: argv} of the live child processes of `pid` (Linux /proc)."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat_fields[1]) != pid or stat_fields[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
    return found


def _wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_runs_workers_on_consecutive_ports_and_restarts_them(
    live_server_factory: Callable[..., LiveServer],
) -> None:
    server = live_server_factory(PANDA_WORKERS="2")
    assert server.proc is not None
    _wait_healthy(server.port + 1)
    by_index = _workers(server.proc.pid)
    assert set(by_index) == {"0", "1"}

    os.kill(by_index["1"], signal.SIGKILL)  # a crash: the supervisor starts it again
    deadline = time.monotonic() + 60
    while True:
        again = _workers(server.proc.pid)
        if again.get("1") not in (None, by_index["1"]):
            break
        assert time.monotonic() < deadline, "worker 1 was not restarted"
        time.sleep(0.1)
    _wait_healthy(server.port + 1)
    assert again["0"] == by_index["0"]

    server.stop(signal.SIGTERM)
    assert server.proc.returncode == 0
    # The supervisor waited for its workers before exiting: none is left behind.
    assert [pid for pid in again.values() if Path(f"/proc/{pid}").exists()] == []
    for port in (server.port, server.port + 1):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
