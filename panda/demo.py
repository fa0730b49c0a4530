"""Demo content so a newcomer sees a living site; refused in production.

`run_demo` is idempotent: the demo accounts keep the passwords stored (mode 0600) in
`<data dir>/demo-logins.json`, and the session booked "now" is reused while it is still current.
Areas add their own demo content through an optional module `panda.demo_data`:
`async def extend_demo(db, users, booking)` (called on every run; must be idempotent) and
`async def create_many_tutors(db, count)` (for `panda demo --tutors N`).
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from datetime import timedelta
from types import ModuleType
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.config import Settings
from panda.passwords import hash_password_async, verify_password_async
from panda.store.db import create_engine, create_sessionmaker
from panda.store.migrate import upgrade_async
from panda.store.models import Booking, User
from panda.store.types import utcnow
from panda.store.users import create_user, get_user_by_email, normalise_email

DEMO_USERS = {
    "admin": ("admin@demo.panda.test", "Ada Admin", "admin"),
    "tutor": ("tutor@demo.panda.test", "Tomás Tutor", "tutor"),
    "student": ("student@demo.panda.test", "Sam Student", "student"),
}
SESSION_LENGTH = timedelta(minutes=60)
LOGINS_FILE = "demo-logins.json"


class DemoRefused(RuntimeError):
    """Demo content is never created in production."""


class DemoUnavailable(RuntimeError):
    """A requested part of the demo needs an area that is not installed."""


def _load_logins(settings: Settings) -> dict[str, str]:
    """The demo passwords, created once per data directory and kept readable by the owner only."""
    path = settings.data_dir / LOGINS_FILE
    logins: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        if isinstance(stored, dict):
            logins = {k: v for k, v in stored.items() if isinstance(v, str) and len(v) >= 10}
    missing = [role for role in DEMO_USERS if role not in logins]
    if missing:
        logins.update({role: secrets.token_urlsafe(12) for role in missing})
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(logins, fh)
    return logins


async def create_admin(settings: Settings, email: str, name: str, password: str) -> None:
    """Create a verified administrator; ValueError when the address is taken."""
    await upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            if await get_user_by_email(db, email):
                raise ValueError(f"an account with {normalise_email(email)} exists already")
            await create_user(
                db, email=email, name=name, password=password, role="admin", verified=True
            )
            await db.commit()
    finally:
        await engine.dispose()


async def _ensure_user(db: AsyncSession, role: str, password: str) -> User:
    """The demo user for `role`, created or repaired so the printed login works."""
    email, name, user_role = DEMO_USERS[role]
    user = await get_user_by_email(db, email)
    if user is None:
        return await create_user(
            db,
            email=email,
            name=name,
            password=password,
            role=user_role,
            verified=True,
            tutor_status="approved" if user_role == "tutor" else None,
        )
    # Someone may have changed the password, deactivated the account or changed its role
    # while trying the site: put it back so the logins printed again are true.
    if not await verify_password_async(user.password_hash, password):
        user.password_hash = await hash_password_async(password)
        user.password_changed_at = utcnow()
    user.role = user_role
    user.is_active = True
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    if user_role == "tutor":
        user.tutor_status = "approved"
    await db.flush()
    return user


async def _ensure_session_now(db: AsyncSession, student: User, tutor: User) -> Booking:
    """A scheduled session whose window contains now (reused while it is still current)."""
    now = utcnow()
    existing = (
        (
            await db.execute(
                select(Booking)
                .where(
                    Booking.student_id == student.id,
                    Booking.tutor_id == tutor.id,
                    Booking.status.in_(("scheduled", "in_progress")),
                    Booking.start_at <= now + timedelta(minutes=5),
                    Booking.end_at > now + timedelta(minutes=10),
                )
                .order_by(Booking.id)
            )
        )
        .scalars()
        .first()
    )
    if existing is not None:
        return existing
    start = now.replace(second=0, microsecond=0)
    booking = Booking(
        student_id=student.id,
        tutor_id=tutor.id,
        start_at=start,
        end_at=start + SESSION_LENGTH,
        subject="Algebra",
        note="Demo session",
        status="scheduled",
        price_cents=4000,
        currency="EUR",
    )
    db.add(booking)
    await db.flush()
    return booking


def _demo_data() -> ModuleType | None:
    """The optional module through which areas add demo content (None when absent)."""
    try:
        return importlib.import_module("panda.demo_data")
    except ModuleNotFoundError as exc:
        if exc.name != "panda.demo_data":
            raise
        return None


async def has_foreign_users(db: AsyncSession) -> bool:
    """True when accounts other than the demo accounts exist (the site is in real use)."""
    demo_emails = [email for email, _, _ in DEMO_USERS.values()]
    count = (
        await db.execute(select(func.count(User.id)).where(User.email.not_in(demo_emails)))
    ).scalar_one()
    return int(count) > 0


async def run_demo(
    settings: Settings, *, if_empty: bool = False, tutors: int = 0
) -> dict[str, Any] | None:
    """Create the demo users and a session booked now; return their logins.

    With `if_empty`, nothing is done (None is returned) on a database that holds accounts
    other than the demo ones.
    """
    if settings.production:
        raise DemoRefused("demo content is refused when PANDA_ENV=production")
    extension = _demo_data()
    if tutors and (extension is None or not hasattr(extension, "create_many_tutors")):
        raise DemoUnavailable("--tutors needs the tutor marketplace (panda.demo_data)")
    await upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            if if_empty and await has_foreign_users(db):
                return None
            logins = _load_logins(settings)
            users = {role: await _ensure_user(db, role, logins[role]) for role in DEMO_USERS}
            booking = await _ensure_session_now(db, users["student"], users["tutor"])
            await db.commit()
            if extension is not None and hasattr(extension, "extend_demo"):
                await extension.extend_demo(db, users, booking)
                await db.commit()
            if tutors and extension is not None:
                await extension.create_many_tutors(db, tutors)
                await db.commit()
            booking_id = booking.id
    finally:
        await engine.dispose()
    result: dict[str, Any] = {
        role: {"email": DEMO_USERS[role][0], "password": logins[role]} for role in DEMO_USERS
    }
    result["session_id"] = booking_id
    result["call_url"] = f"{settings.base_url}/sessions/{booking_id}/call"
    return result
