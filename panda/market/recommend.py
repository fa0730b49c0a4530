"""Tutor recommendations for a student's dashboard, each with a one-line reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.market.availability import epoch_minutes
from panda.market.reviews import bayesian_average
from panda.market.tutors import TutorCard, cards
from panda.store.models import (
    AvailabilityWindow,
    Booking,
    Subject,
    TutorProfile,
    TutorSubject,
    User,
)
from panda.store.types import utcnow

CANDIDATES = 200


@dataclass
class Recommendation:
    """A tutor, the score that ranked it, and why."""

    card: TutorCard
    score: float
    reason: str


async def recommend(
    db: AsyncSession, student: User, *, limit: int = 5, now: datetime | None = None
) -> list[Recommendation]:
    """Best tutors for the student: subject match (interests and past sessions), Bayesian
    rating, and free hours in the next 7 days."""
    now = now or utcnow()
    past = list(
        (
            await db.execute(
                select(Booking.subject, Booking.tutor_id).where(
                    Booking.student_id == student.id,
                    Booking.status.in_(("scheduled", "completed", "in_progress")),
                )
            )
        ).all()
    )
    interests = [s for s in (student.interests or []) if isinstance(s, str)]
    wanted = {s.lower() for s in interests} | {s.lower() for s, _ in past}
    known_tutors = {t for _, t in past}
    base = (
        select(User, TutorProfile)
        .join(TutorProfile, TutorProfile.user_id == User.id)
        .where(
            TutorProfile.listed.is_(True),
            User.role == "tutor",
            User.tutor_status == "approved",
            User.is_active.is_(True),
        )
    )
    if wanted:
        base = base.where(
            TutorProfile.user_id.in_(
                select(TutorSubject.tutor_id)
                .join(Subject, Subject.id == TutorSubject.subject_id)
                .where(func.lower(Subject.name).in_(wanted))
            )
        )
    rows = (
        await db.execute(
            base.order_by(TutorProfile.rating_avg.desc(), TutorProfile.rating_count.desc()).limit(
                CANDIDATES
            )
        )
    ).all()
    if not rows and wanted:
        # Nobody teaches what they want yet: fall back to the best tutors overall.
        return await recommend(db, _without_interests(student), limit=limit, now=now)
    pairs = [(u, p) for u, p in rows]
    found = await cards(db, pairs)
    ids = [c.user.id for c in found]
    a, b = epoch_minutes(now), epoch_minutes(now + timedelta(days=7))
    free_rows = (
        await db.execute(
            select(AvailabilityWindow.tutor_id, func.count(AvailabilityWindow.id))
            .where(
                AvailabilityWindow.tutor_id.in_(ids),
                AvailabilityWindow.start_min >= a,
                AvailabilityWindow.start_min < b,
            )
            .group_by(AvailabilityWindow.tutor_id)
        )
    ).all()
    free = {tid: n for tid, n in free_rows}
    out: list[Recommendation] = []
    for card in found:
        p = card.profile
        rating = bayesian_average(p.rating_avg, p.rating_count)
        match = [s for s in card.subjects if s.lower() in wanted]
        score = rating / 5 + (0.5 if match else 0) + (0.2 if free.get(card.user.id) else 0)
        score += 0.1 if card.user.id in known_tutors else 0
        parts: list[str] = []
        if match:
            parts.append(f"because you study {match[0]}")
        elif card.user.id in known_tutors:
            parts.append("you have had sessions together")
        if p.rating_count:
            parts.append(f"rated {p.rating_avg:.1f} by {p.rating_count} students")
        else:
            parts.append("new on Panda Professor")
        if free.get(card.user.id):
            parts.append("free this week")
        reason = " · ".join(parts)
        out.append(Recommendation(card, score, reason[:1].upper() + reason[1:]))
    out.sort(key=lambda r: (-r.score, r.card.user.id))
    return out[:limit]


def _without_interests(student: User) -> User:
    clone = User(id=-1, interests=[], name=student.name, email="", role="student")
    return clone
