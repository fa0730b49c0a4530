"""Reviews: one per completed session, one reply per review, averages kept on the profile."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from panda.errors import Conflict, Forbidden, NotFound, ValidationError
from panda.market import notify as notes
from panda.store.models import Booking, Review, TutorProfile, User
from panda.store.types import utcnow

MAX_TEXT = 3000


async def _adjust_rating(db: AsyncSession, tutor_id: int, rating: int, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) one rating from the profile's running totals."""
    await db.execute(
        update(TutorProfile)
        .where(TutorProfile.user_id == tutor_id)
        .values(
            rating_sum=TutorProfile.rating_sum + sign * rating,
            rating_count=TutorProfile.rating_count + sign,
        )
    )
    profile = await db.get(TutorProfile, tutor_id)
    if profile is not None:
        await db.refresh(profile)
        profile.rating_avg = (
            round(profile.rating_sum / profile.rating_count, 4) if profile.rating_count else 0.0
        )


async def create_review(
    db: AsyncSession, booking: Booking, student: User, rating: object, text: object
) -> Review:
    """The student rates a completed session once. Commits."""
    if booking.student_id != student.id:
        raise Forbidden("Only the student of this session can review it.")
    if booking.status != "completed":
        raise Conflict("You can review a session once it is completed.")
    if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
        raise ValidationError("Rate the session from 1 to 5.", fields={"rating": "1 to 5."})
    body = str(text or "").strip()
    if len(body) > MAX_TEXT:
        raise ValidationError("The review is too long.", fields={"text": "At most 3000."})
    review = Review(
        booking_id=booking.id,
        tutor_id=booking.tutor_id,
        student_id=student.id,
        rating=rating,
        text=body,
        hidden=False,
        created_at=utcnow(),
    )
    db.add(review)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise Conflict("You have reviewed this session already.") from None
    await _adjust_rating(db, booking.tutor_id, rating, 1)
    await notes.notify(
        db,
        booking.tutor_id,
        "review_reply",
        f"{student.name} rated your {booking.subject} session {rating}/5",
        body,
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
        email=False,
    )
    await db.commit()
    return review


async def reply(db: AsyncSession, review_id: int, tutor: User, text: str) -> Review:
    """The tutor replies once. Commits."""
    review = await db.get(Review, review_id)
    if review is None or review.tutor_id != tutor.id:
        raise NotFound("We could not find that review.")
    body = text.strip()
    if not body or len(body) > MAX_TEXT:
        raise ValidationError("Write a reply (up to 3000 characters).", fields={"reply": "?"})
    result = await db.execute(
        update(Review)
        .where(Review.id == review_id, Review.reply.is_(None))
        .values(reply=body, replied_at=utcnow())
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        await db.rollback()
        raise Conflict("You have replied to this review already.")
    await db.commit()
    await db.refresh(review)
    return review


async def set_hidden(
    db: AsyncSession, review_id: int, admin: User, hidden: bool, reason: str
) -> Review:
    """An admin hides (or restores) a review; the average follows; the action is audited."""
    review = await db.get(Review, review_id)
    if review is None:
        raise NotFound("We could not find that review.")
    if review.hidden == hidden:
        return review
    review.hidden = hidden
    review.hidden_reason = reason.strip()[:500] or None if hidden else None
    await _adjust_rating(db, review.tutor_id, review.rating, -1 if hidden else 1)
    await write_audit(
        db,
        admin,
        "review.hide" if hidden else "review.unhide",
        "review",
        str(review.id),
        {"reason": reason.strip()[:500], "tutor_id": review.tutor_id},
    )
    await db.commit()
    return review


async def write_audit(
    db: AsyncSession,
    actor: User,
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any],
) -> None:
    """Record an admin action in the audit log, in the caller's transaction."""
    from panda.store import audit

    await audit.record(db, actor, action, target_type=target_type, target_id=target_id, **detail)


async def list_reviews(
    db: AsyncSession, tutor_id: int, *, limit: int = 20, include_hidden: bool = False
) -> list[tuple[Review, str]]:
    """Visible reviews of a tutor with the student's first name, newest first."""
    stmt = (
        select(Review, User.name)
        .join(User, User.id == Review.student_id)
        .where(Review.tutor_id == tutor_id)
        .order_by(Review.created_at.desc())
        .limit(limit)
    )
    if not include_hidden:
        stmt = stmt.where(Review.hidden.is_(False))
    return [(r, name.split(" ")[0]) for r, name in (await db.execute(stmt)).all()]


def bayesian_average(avg: float, count: int, prior_mean: float = 3.5, weight: int = 10) -> float:
    """Rating shrunk towards a modest prior (as if every tutor started with ten 3.5-star
    reviews), so one 5-star review (3.64) does not beat fifty 4.8s (4.58)."""
    return (prior_mean * weight + avg * count) / (weight + count)
