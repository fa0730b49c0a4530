"""Tutor profiles, subjects, languages and availability (rules, exceptions, windows)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, insert, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from panda.errors import NotFound
from panda.market.availability import (
    DateException,
    WeeklyRule,
    epoch_minutes,
    open_windows,
    zone_of,
)
from panda.store.models import (
    AvailabilityException,
    AvailabilityRule,
    AvailabilityWindow,
    Subject,
    TutorLanguage,
    TutorProfile,
    TutorSubject,
    User,
)
from panda.store.types import utcnow

# How far ahead concrete availability windows are kept for search filters.
WINDOW_HORIZON = timedelta(weeks=8)
# Stored windows are split to at most this long, so the search filter can bound its range scan.
MAX_WINDOW_MINUTES = 12 * 60


def window_rows(
    tutor_id: int, windows: list[tuple[datetime, datetime]], session_minutes: int
) -> list[dict[str, int]]:
    """Rows for availability_windows: epoch minutes, split into pieces of at most 12 hours."""
    rows: list[dict[str, int]] = []
    for start, end in windows:
        a, b = epoch_minutes(start), epoch_minutes(end)
        while a < b:
            piece_end = min(b, a + MAX_WINDOW_MINUTES)
            rows.append(
                {
                    "tutor_id": tutor_id,
                    "start_min": a,
                    "end_min": piece_end,
                    "session_minutes": session_minutes,
                }
            )
            a = piece_end
    return rows


@dataclass
class TutorCard:
    """A tutor as pages and the API show them."""

    user: User
    profile: TutorProfile
    subjects: list[str]
    languages: list[str]


def slugify(name: str) -> str:
    """A URL-safe lower-case slug."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "subject"


async def list_subjects(db: AsyncSession, *, active_only: bool = True) -> list[Subject]:
    """Subjects in name order."""
    stmt = select(Subject).order_by(Subject.name)
    if active_only:
        stmt = stmt.where(Subject.is_active.is_(True))
    return list((await db.execute(stmt)).scalars())


async def ensure_subject(db: AsyncSession, name: str) -> Subject:
    """The subject called `name`, created when missing."""
    existing = (await db.execute(select(Subject).where(Subject.name == name))).scalar_one_or_none()
    if existing:
        return existing
    subject = Subject(name=name, slug=slugify(name), is_active=True, created_at=utcnow())
    db.add(subject)
    await db.flush()
    return subject


async def get_profile(db: AsyncSession, tutor_id: int) -> TutorProfile | None:
    """The tutor's profile row, or None."""
    return await db.get(TutorProfile, tutor_id)


async def ensure_profile(db: AsyncSession, tutor: User) -> TutorProfile:
    """The tutor's profile, created with defaults on first use."""
    profile = await db.get(TutorProfile, tutor.id)
    if profile is None:
        now = utcnow()
        profile = TutorProfile(
            user_id=tutor.id,
            headline="",
            hourly_rate_cents=3000,
            currency="EUR",
            city="",
            country="",
            online_only=True,
            session_minutes=60,
            min_notice_minutes=120,
            buffer_minutes=0,
            max_moves=2,
            rating_sum=0,
            rating_count=0,
            rating_avg=0.0,
            listed=True,
            created_at=now,
            updated_at=now,
        )
        db.add(profile)
        await db.flush()
    return profile


async def tutor_subject_names(db: AsyncSession, tutor_ids: list[int]) -> dict[int, list[str]]:
    """Subject names per tutor."""
    out: dict[int, list[str]] = {t: [] for t in tutor_ids}
    if not tutor_ids:
        return out
    rows = await db.execute(
        select(TutorSubject.tutor_id, Subject.name)
        .join(Subject, Subject.id == TutorSubject.subject_id)
        .where(TutorSubject.tutor_id.in_(tutor_ids))
        .order_by(Subject.name)
    )
    for tid, name in rows:
        out[tid].append(name)
    return out


async def tutor_language_names(db: AsyncSession, tutor_ids: list[int]) -> dict[int, list[str]]:
    """Languages per tutor."""
    out: dict[int, list[str]] = {t: [] for t in tutor_ids}
    if not tutor_ids:
        return out
    rows = await db.execute(
        select(TutorLanguage.tutor_id, TutorLanguage.language)
        .where(TutorLanguage.tutor_id.in_(tutor_ids))
        .order_by(TutorLanguage.language)
    )
    for tid, lang in rows:
        out[tid].append(lang)
    return out


async def cards(db: AsyncSession, pairs: list[tuple[User, TutorProfile]]) -> list[TutorCard]:
    """TutorCards for (user, profile) pairs; subjects and languages loaded in one query."""
    ids = [u.id for u, _ in pairs]
    subjects: dict[int, list[str]] = {i: [] for i in ids}
    languages: dict[int, list[str]] = {i: [] for i in ids}
    if ids:
        subject_q = (
            select(TutorSubject.tutor_id, literal("s"), Subject.name)
            .join(Subject, Subject.id == TutorSubject.subject_id)
            .where(TutorSubject.tutor_id.in_(ids))
        )
        language_q = select(TutorLanguage.tutor_id, literal("l"), TutorLanguage.language).where(
            TutorLanguage.tutor_id.in_(ids)
        )
        for tid, kind, name in (await db.execute(union_all(subject_q, language_q))).all():
            (subjects if kind == "s" else languages)[tid].append(name)
    return [TutorCard(u, p, sorted(subjects[u.id]), sorted(languages[u.id])) for u, p in pairs]


async def get_public_tutor(db: AsyncSession, tutor_id: int) -> TutorCard:
    """An approved, active, listed tutor; NotFound otherwise."""
    row = (
        await db.execute(
            select(User, TutorProfile)
            .join(TutorProfile, TutorProfile.user_id == User.id)
            .where(
                User.id == tutor_id,
                User.role == "tutor",
                User.tutor_status == "approved",
                User.is_active.is_(True),
            )
        )
    ).first()
    if row is None:
        raise NotFound("We could not find that tutor.")
    return (await cards(db, [(row[0], row[1])]))[0]


async def set_subjects(db: AsyncSession, tutor_id: int, subject_ids: list[int]) -> None:
    """Replace the tutor's subjects."""
    await db.execute(delete(TutorSubject).where(TutorSubject.tutor_id == tutor_id))
    for sid in sorted(set(subject_ids)):
        db.add(TutorSubject(tutor_id=tutor_id, subject_id=sid))
    await db.flush()


async def set_languages(db: AsyncSession, tutor_id: int, languages: list[str]) -> None:
    """Replace the tutor's languages (stored lower-case)."""
    await db.execute(delete(TutorLanguage).where(TutorLanguage.tutor_id == tutor_id))
    for lang in sorted({x.strip().lower() for x in languages if x.strip()}):
        db.add(TutorLanguage(tutor_id=tutor_id, language=lang[:40]))
    await db.flush()


async def load_rules(db: AsyncSession, tutor_id: int) -> list[AvailabilityRule]:
    """The tutor's weekly rules, by weekday and start."""
    rows = await db.execute(
        select(AvailabilityRule)
        .where(AvailabilityRule.tutor_id == tutor_id)
        .order_by(AvailabilityRule.weekday, AvailabilityRule.start_minute)
    )
    return list(rows.scalars())


async def load_exceptions(
    db: AsyncSession, tutor_id: int, start: date | None = None, end: date | None = None
) -> list[AvailabilityException]:
    """The tutor's date exceptions, optionally within [start, end]."""
    stmt = select(AvailabilityException).where(AvailabilityException.tutor_id == tutor_id)
    if start is not None:
        stmt = stmt.where(AvailabilityException.day >= start)
    if end is not None:
        stmt = stmt.where(AvailabilityException.day <= end)
    rows = await db.execute(stmt.order_by(AvailabilityException.day))
    return list(rows.scalars())


def as_rules(rows: list[AvailabilityRule]) -> list[WeeklyRule]:
    """Pure rule values from rows."""
    return [WeeklyRule(r.weekday, r.start_minute, r.end_minute) for r in rows]


def as_exceptions(rows: list[AvailabilityException]) -> list[DateException]:
    """Pure exception values from rows."""
    return [DateException(r.day, r.kind, r.start_minute, r.end_minute) for r in rows]


async def replace_rules(db: AsyncSession, tutor_id: int, rules: list[WeeklyRule]) -> None:
    """Replace the weekly hours."""
    await db.execute(delete(AvailabilityRule).where(AvailabilityRule.tutor_id == tutor_id))
    for r in rules:
        db.add(
            AvailabilityRule(
                tutor_id=tutor_id,
                weekday=r.weekday,
                start_minute=r.start_minute,
                end_minute=r.end_minute,
            )
        )
    await db.flush()


async def tutor_windows(
    db: AsyncSession, tutor: User, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Open UTC windows of `tutor` overlapping [start, end), from the rules and exceptions."""
    zone = zone_of(tutor.timezone)
    rules = as_rules(await load_rules(db, tutor.id))
    exceptions = as_exceptions(
        await load_exceptions(
            db, tutor.id, (start - timedelta(days=2)).date(), (end + timedelta(days=2)).date()
        )
    )
    return open_windows(rules, exceptions, zone, start, end)


async def rebuild_windows(db: AsyncSession, tutor: User, now: datetime | None = None) -> int:
    """Recompute the tutor's concrete windows for the search horizon; returns how many."""
    now = now or utcnow()
    start = now - timedelta(days=1)
    windows = await tutor_windows(db, tutor, start, now + WINDOW_HORIZON)
    profile = await db.get(TutorProfile, tutor.id)
    minutes = profile.session_minutes if profile is not None else 60
    await db.execute(delete(AvailabilityWindow).where(AvailabilityWindow.tutor_id == tutor.id))
    rows = window_rows(tutor.id, windows, minutes)
    if rows:
        await db.execute(insert(AvailabilityWindow), rows)
    return len(rows)
