"""Demo content so a newcomer sees a living site; refused in production."""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from panda.config import Settings
from panda.store.db import create_engine, create_sessionmaker
from panda.store.migrate import upgrade_async
from panda.store.models import Booking, User
from panda.store.types import utcnow
from panda.store.users import count_users, create_user, get_user_by_email

DEMO_USERS = {
    "admin": ("admin@demo.panda.test", "Ada Admin", "admin"),
    "tutor": ("tutor@demo.panda.test", "Tomás Tutor", "tutor"),
    "student": ("student@demo.panda.test", "Sam Student", "student"),
}
SESSION_LENGTH = timedelta(minutes=60)


def _load_logins(settings: Settings) -> dict[str, str]:
    path = settings.data_dir / "demo-logins.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    logins = {role: secrets.token_urlsafe(12) for role in DEMO_USERS}
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
                raise ValueError(f"an account with {email} exists already")
            await create_user(
                db, email=email, name=name, password=password, role="admin", verified=True
            )
            await db.commit()
    finally:
        await engine.dispose()


async def _ensure_user(db: Any, role: str, password: str) -> User:
    email, name, user_role = DEMO_USERS[role]
    user = await get_user_by_email(db, email)
    if user is None:
        user = await create_user(
            db,
            email=email,
            name=name,
            password=password,
            role=user_role,
            verified=True,
            tutor_status="approved" if user_role == "tutor" else None,
        )
    return user


async def _ensure_session_now(db: Any, student: User, tutor: User) -> Booking:
    """A scheduled session whose window contains now (reused when one exists)."""
    now = utcnow()
    existing = (
        await db.execute(
            select(Booking).where(
                Booking.student_id == student.id,
                Booking.tutor_id == tutor.id,
                Booking.status.in_(("scheduled", "in_progress")),
                Booking.start_at <= now + timedelta(minutes=5),
                Booking.end_at > now + timedelta(minutes=10),
            )
        )
    ).scalar_one_or_none()
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


async def run_demo(
    settings: Settings, *, if_empty: bool = False, tutors: int = 0
) -> dict[str, Any] | None:
    """Create the demo users and a session booked now; return their logins (None if skipped)."""
    if settings.production:
        raise RuntimeError("demo content is refused in production")
    await upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            if if_empty and await count_users(db) > 0:
                return None
            logins = _load_logins(settings)
            users = {role: await _ensure_user(db, role, logins[role]) for role in DEMO_USERS}
            booking = await _ensure_session_now(db, users["student"], users["tutor"])
            from panda.demo_data import prepare_demo_tutor

            await prepare_demo_tutor(db, users["tutor"], users["student"])
            await db.commit()
            if tutors:
                from panda.demo_data import create_many_tutors

                await create_many_tutors(db, tutors)
    finally:
        await engine.dispose()
    result: dict[str, Any] = {
        role: {"email": DEMO_USERS[role][0], "password": logins[role]} for role in DEMO_USERS
    }
    result["session_id"] = booking.id
    result["call_url"] = f"{settings.base_url}/sessions/{booking.id}/call"
    return result
