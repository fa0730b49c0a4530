"""Helpers for the marketplace tests: a tutor with a profile, subjects and weekly hours."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy import update

from panda import keys
from panda.market import booking as bk
from panda.market.availability import WeeklyRule, iso_utc
from panda.market.tutors import (
    ensure_profile,
    ensure_subject,
    rebuild_windows,
    replace_rules,
    set_languages,
    set_subjects,
)
from panda.store.models import Booking, User
from panda.store.types import utcnow

ALL_DAY = [(d, 0, 1440) for d in range(7)]


async def make_tutor_ready(
    app: web.Application,
    tutor: User,
    *,
    tz: str = "UTC",
    hours: Sequence[tuple[int, int, int]] = ALL_DAY,
    subjects: Sequence[str] = ("Algebra", "Physics"),
    languages: Sequence[str] = ("English",),
    rate_cents: int = 4000,
    minutes: int = 60,
    notice: int = 0,
    buffer: int = 0,
    max_moves: int = 2,
    headline: str = "Friendly maths tutor",
) -> None:
    """Give `tutor` a listed profile with weekly hours (tutor's zone `tz`)."""
    async with app[keys.sessionmaker]() as db:
        user = await db.get(User, tutor.id)
        assert user is not None
        user.timezone = tz
        tutor.timezone = tz
        profile = await ensure_profile(db, user)
        profile.headline = headline
        profile.hourly_rate_cents = rate_cents
        profile.session_minutes = minutes
        profile.min_notice_minutes = notice
        profile.buffer_minutes = buffer
        profile.max_moves = max_moves
        ids = [(await ensure_subject(db, s)).id for s in subjects]
        await set_subjects(db, user.id, ids)
        await set_languages(db, user.id, list(languages))
        await replace_rules(db, user.id, [WeeklyRule(*h) for h in hours])
        await rebuild_windows(db, user)
        await db.commit()


async def slots_of(
    app: web.Application, tutor: User, days_ahead: float = 1, span_days: float = 3
) -> list[tuple[datetime, datetime]]:
    """Free slots of the tutor starting between now+days_ahead and +span_days."""
    now = utcnow()
    async with app[keys.sessionmaker]() as db:
        user = await db.get(User, tutor.id)
        assert user is not None
        profile = await ensure_profile(db, user)
        await db.commit()
        return await bk.free_slots(
            db,
            user,
            profile,
            now + timedelta(days=days_ahead),
            now + timedelta(days=days_ahead + span_days),
            now=now,
        )


async def set_status(app: web.Application, booking_id: int, status: str) -> None:
    """Force a booking's status (what the call room does for in_progress/completed)."""
    async with app[keys.sessionmaker]() as db:
        await db.execute(update(Booking).where(Booking.id == booking_id).values(status=status))
        await db.commit()


def iso(value: datetime) -> str:
    """ISO 8601 UTC."""
    return iso_utc(value)
