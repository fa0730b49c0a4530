"""`panda` command line: serve, migrate, create-admin, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import re
import sys
from collections.abc import Sequence

from panda.config import ConfigError, Settings

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"panda: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _fail(message: str, code: int = 1) -> int:
    print(f"panda: {message}", file=sys.stderr)
    return code


def _migrate(database_url: str, revision: str = "head") -> None:
    """Apply migrations; a database that cannot be reached is a clear error, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from panda.store.migrate import upgrade

    try:
        upgrade(database_url, revision)
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise SystemExit(_fail(f"cannot migrate the database: {reason}")) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the web server (and relay) until interrupted."""
    from aiohttp import web

    from panda.app import create_app

    settings = _settings()
    if args.host:
        settings = settings.with_(host=args.host)
    if args.port:
        settings = settings.with_(port=args.port)
    if args.worker_index is not None:
        if not 0 <= args.worker_index < settings.workers:
            return _fail(f"--worker-index must be below PANDA_WORKERS={settings.workers}", 2)
        settings = settings.with_(worker_index=args.worker_index)
    elif settings.workers > 1:
        if settings.port + settings.workers - 1 > 65535:
            return _fail("PANDA_PORT + PANDA_WORKERS must stay within 65535", 2)
        if not args.no_migrate:
            _migrate(settings.database_url)
        return _supervise_workers(settings)
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        pass
    if not args.no_migrate:
        _migrate(settings.database_url)
    print(f"Panda Professor is serving on http://{settings.host}:{settings.port}", flush=True)
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            print=None,
            shutdown_timeout=10,
            handler_cancellation=True,
        )
    except OSError as exc:
        return _fail(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}")
    return 0


class _Stop(Exception):
    """Raised by the supervisor's signal handler to leave its wait."""


def _supervise_workers(settings: Settings) -> int:
    """Run PANDA_WORKERS server processes, worker i on port PANDA_PORT + i, until SIGTERM/SIGINT.

    A worker that dies is started again; one that keeps dying at start (say its port is taken)
    stops the whole server with an error instead of looping for ever.
    """
    import os
    import signal
    import subprocess
    import time

    if settings.redis_url is None:
        print(
            "panda: warning: PANDA_WORKERS > 1 without PANDA_REDIS_URL: each process keeps its "
            "own chat, presence and calls",
            file=sys.stderr,
        )

    def spawn(index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "panda", "serve", "--no-migrate"]
        command += ["--host", settings.host, "--port", str(settings.port + index)]
        return subprocess.Popen([*command, "--worker-index", str(index)])

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    quick_failures: dict[int, int] = {}
    code = 0
    try:
        for index in range(settings.workers):
            workers[index] = spawn(index)
            started[index] = time.monotonic()
        print(
            f"Panda Professor is running {settings.workers} workers on ports "
            f"{settings.port}-{settings.port + settings.workers - 1}",
            flush=True,
        )
        while True:
            pid, status = os.wait()
            index = next((i for i, p in workers.items() if p.pid == pid), None)
            if index is None:
                continue
            workers[index].returncode = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started[index]
            quick_failures[index] = quick_failures.get(index, 0) + 1 if lived < 10 else 0
            if quick_failures[index] >= 5:
                code = _fail(f"worker {index} keeps failing at start; stopping", 1)
                break
            print(
                f"panda: worker {index} exited ({workers[index].returncode}); starting it again",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(min(quick_failures[index], 5))
            workers[index] = spawn(index)
            started[index] = time.monotonic()
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        alive = [p for p in workers.values() if p.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + 20
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply every database migration (Alembic upgrade head)."""
    settings = _settings()
    _migrate(settings.database_url, args.revision)
    print("Database is up to date.")
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        print("panda: no terminal to ask for a password; use --password-stdin", file=sys.stderr)
        return None
    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != password:
        print("panda: the passwords differ", file=sys.stderr)
        return None
    return password


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Create an administrator account."""
    from panda.passwords import password_problem

    settings = _settings()
    email = args.email.strip()
    name = args.name.strip()
    if not EMAIL_RE.fullmatch(email) or len(email) > 254:
        return _fail(f"{args.email!r} is not an e-mail address")
    if not name or len(name) > 120:
        return _fail("--name must be 1 to 120 characters")
    password = _read_password(args)
    if password is None:
        return 1
    problem = password_problem(password, email=email, name=name)
    if problem:
        return _fail(problem)
    from sqlalchemy.exc import SQLAlchemyError

    from panda.demo import create_admin

    try:
        asyncio.run(create_admin(settings, email, name, password))
    except ValueError as exc:
        return _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        return _fail(f"cannot reach the database: {exc}")
    print(f"Administrator {email.lower()} created.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Create demo accounts (and a session booked now) and print their logins."""
    from panda.demo import DemoUnavailable, run_demo

    settings = _settings()
    if settings.production:
        if args.if_empty:
            print("No demo content: PANDA_ENV=production.")
            return 0
        return _fail("demo content is refused when PANDA_ENV=production", 2)
    if args.tutors < 0:
        return _fail("--tutors must be 0 or more", 2)
    try:
        result = asyncio.run(run_demo(settings, if_empty=args.if_empty, tutors=args.tutors))
    except DemoUnavailable as exc:
        return _fail(str(exc))
    if result is None:
        if args.json:
            print(json.dumps({}))
        else:
            print("No demo content: the database already has accounts.")
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"Demo accounts (log in at {settings.base_url}/login):")
    for role in ("admin", "tutor", "student"):
        print(f"  {role:8} {result[role]['email']:26} password: {result[role]['password']}")
    if "call_url" in result:
        print(f"  A session between the tutor and the student starts now: {result['call_url']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="panda", description="Panda Professor server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="override PANDA_HOST")
    serve.add_argument("--port", type=int, help="override PANDA_PORT")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    # Set by the supervisor when PANDA_WORKERS > 1: run as that one worker.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    admin = sub.add_parser("create-admin", help="create an administrator")
    admin.add_argument("--email", required=True)
    admin.add_argument("--name", required=True)
    admin.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    admin.set_defaults(func=cmd_create_admin)

    demo = sub.add_parser("demo", help="create demo accounts and a session booked now")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--if-empty", action="store_true", help="only on a database with no users")
    demo.add_argument("--tutors", type=int, default=0, help="also create N realistic tutors")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `panda` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
