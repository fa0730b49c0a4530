"""`panda` command line: serve, migrate, create-admin, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Sequence

from panda.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"panda: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the web server (and relay) until interrupted."""
    from aiohttp import web

    from panda.app import create_app

    settings = _settings()
    if args.host:
        settings = settings.with_(host=args.host)
    if args.port:
        settings = settings.with_(port=args.port)
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
        from panda.store.migrate import upgrade

        upgrade(settings.database_url)
    print(f"Panda Professor is serving on http://{settings.host}:{settings.port}", flush=True)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10,
        handler_cancellation=True,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply every database migration (Alembic upgrade head)."""
    from panda.store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url, args.revision)
    print("Database is up to date.")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Create an administrator account."""
    from panda.passwords import password_problem

    settings = _settings()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            print("panda: the passwords differ", file=sys.stderr)
            return 1
    problem = password_problem(password, email=args.email, name=args.name)
    if problem:
        print(f"panda: {problem}", file=sys.stderr)
        return 1
    from panda.demo import create_admin

    try:
        asyncio.run(create_admin(settings, args.email, args.name, password))
    except ValueError as exc:
        print(f"panda: {exc}", file=sys.stderr)
        return 1
    print(f"Administrator {args.email} created.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Create demo accounts (and a session booked now) and print their logins."""
    from panda.demo import run_demo

    settings = _settings()
    if settings.production:
        print("panda: demo content is refused when PANDA_ENV=production", file=sys.stderr)
        return 2
    result = asyncio.run(run_demo(settings, if_empty=args.if_empty, tutors=args.tutors))
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print("Demo accounts (password after the e-mail address):")
        for role in ("admin", "tutor", "student"):
            print(f"  {role:8} {result[role]['email']}  {result[role]['password']}")
        if "call_url" in result:
            print(f"  session {result['session_id']}: {result['call_url']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="panda", description="Panda Professor server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="override PANDA_HOST")
    serve.add_argument("--port", type=int, help="override PANDA_PORT")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
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
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
