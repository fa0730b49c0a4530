"""Booking requests and their state machine; the hard rules are the database's to enforce.

Every write path follows the same pattern: check what can be checked cheaply in Python (past
slot, outside availability, wrong party) for a clear message, then write the rows whose
constraints make the rule hold under concurrency (one-pending index, claim units, quota CHECK)
and translate an IntegrityError into a 409 with a human sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from panda.config import Settings
from panda.errors import Conflict, Forbidden, NotFound, ValidationError
from panda.market import notify as notes
from panda.market.availability import (
    claim_units,
    generate_slots,
    iso_utc,
    month_key,
    zone_of,
)
from panda.market.payments import NoPayments, PaymentGateway, price_cents
from panda.market.tutors import ensure_profile, tutor_subject_names, tutor_windows
from panda.store.models import (
    ACTIVE_STATUSES,
    Booking,
    BookingClaim,
    StudentQuota,
    TutorProfile,
    User,
)
from panda.store.types import utcnow

MAX_NOTE = 2000
MAX_REASON = 500


@dataclass(frozen=True)
class BookingRules:
    """Tunable booking policy (defaults from the issue; overridable via Settings.extra)."""

    monthly_quota: int = 8
    cancel_cutoff: timedelta = timedelta(hours=12)
    request_ttl: timedelta = timedelta(hours=48)

    @classmethod
    def from_settings(cls, settings: Settings | None) -> BookingRules:
        """Rules with any `monthly_quota`, `cancel_cutoff_hours`, `request_ttl_hours` extras."""
        extra = settings.extra if settings is not None else {}
        return cls(
            monthly_quota=int(extra.get("monthly_quota", 8)),
            cancel_cutoff=timedelta(hours=float(extra.get("cancel_cutoff_hours", 12))),
            request_ttl=timedelta(hours=float(extra.get("request_ttl_hours", 48))),
        )


PAYMENTS: PaymentGateway = NoPayments()


def _is_violation(exc: IntegrityError, *needles: str) -> bool:
    text = str(exc.orig).lower()
    return any(n in text for n in needles)


def _dialect(db: AsyncSession) -> str:
    bind = db.bind
    return bind.dialect.name if bind is not None else "sqlite"


async def _ensure_quota_row(db: AsyncSession, student_id: int, month: str, quota: int) -> None:
    values = {"student_id": student_id, "month": month, "used": 0, "quota": quota}
    if _dialect(db) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        await db.execute(pg_insert(StudentQuota).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        await db.execute(sqlite_insert(StudentQuota).values(**values).on_conflict_do_nothing())


async def _take_quota(db: AsyncSession, student_id: int, month: str, rules: BookingRules) -> None:
    """Count one session against the month; the CHECK constraint refuses the one too many."""
    await _ensure_quota_row(db, student_id, month, rules.monthly_quota)
    try:
        await db.execute(
            update(StudentQuota)
            .where(StudentQuota.student_id == student_id, StudentQuota.month == month)
            .values(used=StudentQuota.used + 1, quota=rules.monthly_quota)
        )
    except IntegrityError:
        await db.rollback()
        raise Conflict(
            f"You have used all {rules.monthly_quota} sessions for {month}. "
            "Pick a date in another month or cancel a session first."
        ) from None


async def _release_quota(db: AsyncSession, booking: Booking) -> None:
    if booking.quota_month is None:
        return
    await db.execute(
        update(StudentQuota)
        .where(
            StudentQuota.student_id == booking.student_id,
            StudentQuota.month == booking.quota_month,
            StudentQuota.used > 0,
        )
        .values(used=StudentQuota.used - 1)
    )
    booking.quota_month = None


async def quota_left(
    db: AsyncSession, student: User, rules: BookingRules, now: datetime | None = None
) -> tuple[str, int, int]:
    """(month, used, left) for the student's current month in their zone."""
    month = month_key(now or utcnow(), zone_of(student.timezone))
    row = await db.get(StudentQuota, (student.id, month))
    used = row.used if row else 0
    return month, used, max(0, rules.monthly_quota - used)


async def _claim(db: AsyncSession, booking: Booking, buffer_minutes: int) -> None:
    """Claim the tutor's units (with the buffer after) and the student's; 409 on overlap."""
    tutor_units = claim_units(booking.start_at, booking.end_at + timedelta(minutes=buffer_minutes))
    try:
        await db.execute(
            insert(BookingClaim),
            [
                {"booking_id": booking.id, "user_id": booking.tutor_id, "unit": u}
                for u in tutor_units
            ],
        )
    except IntegrityError:
        await db.rollback()
        raise Conflict("That time is no longer free: the tutor has another session then.") from None
    student_units = claim_units(booking.start_at, booking.end_at)
    try:
        await db.execute(
            insert(BookingClaim),
            [
                {"booking_id": booking.id, "user_id": booking.student_id, "unit": u}
                for u in student_units
            ],
        )
    except IntegrityError:
        await db.rollback()
        raise Conflict("The student already has a session at that time.") from None


async def _release_claims(db: AsyncSession, booking_id: int) -> None:
    await db.execute(delete(BookingClaim).where(BookingClaim.booking_id == booking_id))


async def busy_intervals(
    db: AsyncSession,
    user_ids: list[int],
    start: datetime,
    end: datetime,
    *,
    exclude_booking: int | None = None,
) -> list[tuple[datetime, datetime]]:
    """[start, end) of active bookings of any of `user_ids` overlapping [start, end)."""
    stmt = select(Booking.start_at, Booking.end_at).where(
        or_(Booking.tutor_id.in_(user_ids), Booking.student_id.in_(user_ids)),
        Booking.status.in_(ACTIVE_STATUSES),
        Booking.start_at < end,
        Booking.end_at > start,
    )
    if exclude_booking is not None:
        stmt = stmt.where(Booking.id != exclude_booking)
    return [(s, e) for s, e in (await db.execute(stmt)).all()]


async def free_slots(
    db: AsyncSession,
    tutor: User,
    profile: TutorProfile,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    student_id: int | None = None,
    exclude_booking: int | None = None,
) -> list[tuple[datetime, datetime]]:
    """Bookable slots of `tutor` starting in [start, end) (and free for `student_id`)."""
    now = now or utcnow()
    length = timedelta(minutes=profile.session_minutes)
    buffer = timedelta(minutes=profile.buffer_minutes)
    windows = await tutor_windows(db, tutor, start - length, end + length)
    users = [tutor.id] + ([student_id] if student_id else [])
    busy = await busy_intervals(
        db, users, start - length - buffer, end + length + buffer, exclude_booking=exclude_booking
    )
    return generate_slots(
        windows,
        length=length,
        buffer=buffer,
        not_before=now + timedelta(minutes=profile.min_notice_minutes),
        range_start=start,
        range_end=end,
        busy=busy,
    )


async def check_slot(
    db: AsyncSession,
    tutor: User,
    profile: TutorProfile,
    start: datetime,
    *,
    now: datetime,
    student_id: int | None,
    exclude_booking: int | None = None,
) -> datetime:
    """Validate a requested start and return its end; 422 for a time the tutor does not offer,
    409 for a time that is taken."""
    if start <= now:
        raise ValidationError("That time is in the past. Pick a slot from the list.")
    length = timedelta(minutes=profile.session_minutes)
    windows = await tutor_windows(db, tutor, start - length, start + length)
    offered = generate_slots(
        windows,
        length=length,
        buffer=timedelta(minutes=profile.buffer_minutes),
        not_before=start,
        range_start=start,
        range_end=start + timedelta(minutes=1),
    )
    if not offered or offered[0][0] != start:
        raise ValidationError(
            "The tutor does not offer a session at that time. Pick one of their free slots."
        )
    notice = timedelta(minutes=profile.min_notice_minutes)
    if start < now + notice:
        hours = profile.min_notice_minutes / 60
        raise ValidationError(
            f"This tutor needs at least {hours:g} hours' notice. Pick a later slot."
        )
    free = await free_slots(
        db,
        tutor,
        profile,
        start,
        start + timedelta(minutes=1),
        now=now,
        student_id=student_id,
        exclude_booking=exclude_booking,
    )
    if not free:
        raise Conflict("That time is no longer free. Pick another slot.")
    return start + length


async def _load_tutor(db: AsyncSession, tutor_id: int) -> tuple[User, TutorProfile]:
    tutor = await db.get(User, tutor_id)
    if (
        tutor is None
        or tutor.role != "tutor"
        or tutor.tutor_status != "approved"
        or not tutor.is_active
    ):
        raise NotFound("We could not find that tutor.")
    profile = await ensure_profile(db, tutor)
    return tutor, profile


async def create_request(
    db: AsyncSession,
    *,
    student: User,
    tutor_id: int,
    start: datetime,
    subject: str,
    note: str = "",
    rules: BookingRules,
    now: datetime | None = None,
    proposer: User | None = None,
) -> Booking:
    """A student's request (or, with `proposer` = the tutor, a tutor's proposal) -> pending.
    Commits on success."""
    now = now or utcnow()
    if student.role != "student":
        raise Forbidden("Only students can book sessions.")
    # Read before any rollback: a rollback expires loaded objects.
    student_name = student.name
    subject = subject.strip()
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise ValidationError("The note is too long.", fields={"note": "At most 2000 characters."})
    tutor, profile = await _load_tutor(db, tutor_id)
    subjects = (await tutor_subject_names(db, [tutor.id]))[tutor.id]
    if not subject:
        raise ValidationError("Choose a subject.", fields={"subject": "Choose a subject."})
    if subjects and subject not in subjects:
        raise ValidationError(
            f"{tutor.name} does not teach {subject}.",
            fields={"subject": "Choose one of the tutor's subjects."},
        )
    end = await check_slot(db, tutor, profile, start, now=now, student_id=student.id)
    booking = Booking(
        student_id=student.id,
        tutor_id=tutor.id,
        start_at=start,
        end_at=end,
        subject=subject[:120],
        note=note,
        status="pending",
        price_cents=price_cents(profile.hourly_rate_cents, profile.session_minutes),
        currency=profile.currency,
        requested_by="tutor" if proposer is not None else "student",
        expires_at=min(now + rules.request_ttl, start),
        quota_month=month_key(start, zone_of(student.timezone)),
        sequence=0,
        moves=0,
        late_cancel=False,
        payment_state="not_collected",
        created_at=now,
        updated_at=now,
    )
    db.add(booking)
    try:
        await db.flush()
    except IntegrityError as exc:
        await db.rollback()
        if proposer is not None:
            raise Conflict(
                f"{student_name} has a pending request already; propose again after it is answered."
            ) from None
        if _is_violation(exc, "one_pending", "bookings.student_id"):
            raise Conflict(
                "You already have a pending request. Wait for the tutor's answer, or withdraw "
                "it, before asking again."
            ) from None
        raise
    await _claim(db, booking, profile.buffer_minutes)
    assert booking.quota_month is not None
    await _take_quota(db, student.id, booking.quota_month, rules)
    booking.payment_state = await PAYMENTS.on_requested(booking)
    when = _when(booking.start_at, tutor if proposer is None else student)
    if proposer is None:
        await notes.notify(
            db,
            tutor.id,
            "request_received",
            f"New session request from {student.name}",
            f"{student.name} asks for {booking.subject} on {when}.\n\n{note}".strip(),
            link=f"/bookings/{booking.id}",
            booking_id=booking.id,
        )
    else:
        await notes.notify(
            db,
            student.id,
            "proposal_received",
            f"{tutor.name} proposes a session",
            f"{tutor.name} proposes {booking.subject} on {when}. Accept or decline it.",
            link=f"/bookings/{booking.id}",
            booking_id=booking.id,
        )
    await db.commit()
    return booking


def _when(value: datetime, viewer: User) -> str:
    return value.astimezone(zone_of(viewer.timezone)).strftime("%a %d %b %Y, %H:%M %Z")


async def create_proposal(
    db: AsyncSession,
    *,
    tutor: User,
    student_id: int,
    start: datetime,
    subject: str,
    note: str,
    rules: BookingRules,
    now: datetime | None = None,
) -> Booking:
    """A tutor proposes a session to a student they already teach; the student accepts."""
    if tutor.role != "tutor":
        raise Forbidden("Only tutors can propose sessions.")
    student = await db.get(User, student_id)
    if student is None or student.role != "student":
        raise NotFound("We could not find that student.")
    taught = (
        await db.execute(
            select(Booking.id)
            .where(
                Booking.tutor_id == tutor.id,
                Booking.student_id == student_id,
                Booking.status.in_(("scheduled", "in_progress", "completed")),
            )
            .limit(1)
        )
    ).first()
    if taught is None:
        raise Forbidden("You can propose sessions only to students you already teach.")
    return await create_request(
        db,
        student=student,
        tutor_id=tutor.id,
        start=start,
        subject=subject,
        note=note,
        rules=rules,
        now=now,
        proposer=tutor,
    )


async def get_booking_for(db: AsyncSession, booking_id: int, user: User) -> Booking:
    """The booking if `user` takes part in it (or is an admin); NotFound otherwise."""
    booking = await db.get(Booking, booking_id)
    if booking is None or not (user.is_admin or user.id in (booking.student_id, booking.tutor_id)):
        raise NotFound("We could not find that booking.")
    return booking


def _answerer_id(booking: Booking) -> int:
    return booking.tutor_id if booking.requested_by == "student" else booking.student_id


def _requester_id(booking: Booking) -> int:
    return booking.student_id if booking.requested_by == "student" else booking.tutor_id


async def _transition(
    db: AsyncSession, booking: Booking, from_status: tuple[str, ...], **values: Any
) -> None:
    """Move the booking on only if it is still in one of `from_status` (race-safe)."""
    result = await db.execute(
        update(Booking)
        .where(Booking.id == booking.id, Booking.status.in_(from_status))
        .values(updated_at=utcnow(), **values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        await db.rollback()
        raise Conflict("This booking changed meanwhile. Reload the page to see its state.")
    await db.refresh(booking)


async def accept(
    db: AsyncSession, booking: Booking, actor: User, now: datetime | None = None
) -> Booking:
    """The tutor accepts a request (or the student a proposal) -> scheduled. Commits."""
    now = now or utcnow()
    if actor.id != _answerer_id(booking):
        raise Forbidden("Only the other party can accept this request.")
    if booking.status != "pending":
        raise Conflict(f"This booking is {booking.status.replace('_', ' ')}, not pending.")
    if booking.expires_at is not None and booking.expires_at <= now:
        await expire_one(db, booking)
        await db.commit()
        raise Conflict("This request has expired.")
    await _transition(
        db,
        booking,
        ("pending",),
        status="scheduled",
        expires_at=None,
        sequence=booking.sequence + 1,
    )
    other = _requester_id(booking)
    await notes.notify(
        db,
        other,
        "request_accepted",
        f"Your {booking.subject} session is booked",
        f"{actor.name} accepted: {booking.subject} on {iso_utc(booking.start_at)} (UTC).",
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
    )
    await db.commit()
    return booking


async def decline(
    db: AsyncSession, booking: Booking, actor: User, reason: str, now: datetime | None = None
) -> Booking:
    """The answering party declines a pending booking with a reason. Commits."""
    reason = reason.strip()
    if actor.id != _answerer_id(booking):
        raise Forbidden("Only the other party can decline this request.")
    if booking.status != "pending":
        raise Conflict(f"This booking is {booking.status.replace('_', ' ')}, not pending.")
    if not reason or len(reason) > MAX_REASON:
        raise ValidationError(
            "Give a short reason (up to 500 characters).", fields={"reason": "Required."}
        )
    await _transition(
        db,
        booking,
        ("pending",),
        status="declined",
        status_reason=reason,
        expires_at=None,
        sequence=booking.sequence + 1,
    )
    await _release_claims(db, booking.id)
    await _release_quota(db, booking)
    booking.payment_state = await PAYMENTS.on_cancelled(booking, charge=False)
    await notes.notify(
        db,
        _requester_id(booking),
        "request_declined",
        f"Your {booking.subject} request was declined",
        f"{actor.name} declined: {reason}",
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
    )
    await db.commit()
    return booking


async def cancel(
    db: AsyncSession,
    booking: Booking,
    actor: User,
    reason: str,
    rules: BookingRules,
    now: datetime | None = None,
) -> Booking:
    """Withdraw a pending request (its requester) or cancel a scheduled session (either side).
    A student cancelling inside the cut-off keeps the session counted. Commits."""
    now = now or utcnow()
    reason = reason.strip()[:MAX_REASON]
    if actor.id not in (booking.student_id, booking.tutor_id):
        raise Forbidden("Only the student or the tutor can cancel this booking.")
    if booking.status == "pending":
        if actor.id != _requester_id(booking):
            raise Conflict("Decline the request instead of cancelling it.")
    elif booking.status != "scheduled":
        raise Conflict(
            f"This booking is {booking.status.replace('_', ' ')}; it cannot be cancelled."
        )
    late = (
        booking.status == "scheduled"
        and actor.id == booking.student_id
        and booking.start_at - now < rules.cancel_cutoff
    )
    await _transition(
        db,
        booking,
        ("pending", "scheduled"),
        status="cancelled",
        status_reason=reason or None,
        cancelled_by_id=actor.id,
        late_cancel=late,
        expires_at=None,
        proposed_start_at=None,
        proposed_end_at=None,
        proposed_by_id=None,
        sequence=booking.sequence + 1,
    )
    await _release_claims(db, booking.id)
    if not late:
        await _release_quota(db, booking)
    booking.payment_state = await PAYMENTS.on_cancelled(booking, charge=late)
    other = booking.other_party(actor.id)
    body = f"{actor.name} cancelled {booking.subject} on {iso_utc(booking.start_at)} (UTC)."
    if reason:
        body += f" Reason: {reason}"
    await notes.notify(
        db,
        other,
        "booking_cancelled",
        f"{booking.subject} session cancelled",
        body,
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
    )
    await db.commit()
    return booking


async def expire_one(db: AsyncSession, booking: Booking) -> bool:
    """Expire a pending booking whose time ran out (no commit); False if it changed meanwhile."""
    result = await db.execute(
        update(Booking)
        .where(Booking.id == booking.id, Booking.status == "pending")
        .values(
            status="expired", expires_at=None, updated_at=utcnow(), sequence=Booking.sequence + 1
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await db.refresh(booking)
    await _release_claims(db, booking.id)
    await _release_quota(db, booking)
    for uid in (booking.student_id, booking.tutor_id):
        await notes.notify(
            db,
            uid,
            "request_expired",
            f"The {booking.subject} request expired",
            "It was not answered in time. The slot is free again.",
            link=f"/bookings/{booking.id}",
            booking_id=booking.id,
        )
    return True


async def expire_due(db: AsyncSession, now: datetime | None = None) -> int:
    """Expire every pending booking past its expiry (48 h or its start). Commits each."""
    now = now or utcnow()
    ids = list(
        (
            await db.execute(
                select(Booking.id).where(Booking.status == "pending", Booking.expires_at <= now)
            )
        ).scalars()
    )
    done = 0
    for bid in ids:
        booking = await db.get(Booking, bid)
        if booking is not None and await expire_one(db, booking):
            await db.commit()
            done += 1
    return done


async def propose_new_time(
    db: AsyncSession, booking: Booking, actor: User, start: datetime, now: datetime | None = None
) -> Booking:
    """Either side proposes moving a scheduled session; the other accepts. Commits."""
    now = now or utcnow()
    if actor.id not in (booking.student_id, booking.tutor_id):
        raise Forbidden("Only the student or the tutor can move this session.")
    if booking.status != "scheduled":
        raise Conflict("Only a scheduled session can be moved.")
    tutor, profile = await _load_tutor(db, booking.tutor_id)
    if booking.moves >= profile.max_moves:
        raise Conflict(f"This session was moved {booking.moves} times already; that is the limit.")
    end = await check_slot(
        db,
        tutor,
        profile,
        start,
        now=now,
        student_id=booking.student_id,
        exclude_booking=booking.id,
    )
    booking.proposed_start_at = start
    booking.proposed_end_at = end
    booking.proposed_by_id = actor.id
    other = booking.other_party(actor.id)
    await notes.notify(
        db,
        other,
        "reschedule_proposed",
        f"{actor.name} proposes a new time",
        f"Move {booking.subject} to {iso_utc(start)} (UTC)? Accept or keep the current time.",
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
    )
    await db.commit()
    return booking


async def answer_new_time(
    db: AsyncSession,
    booking: Booking,
    actor: User,
    agree: bool,
    rules: BookingRules,
    now: datetime | None = None,
) -> Booking:
    """The other side accepts (claims move, quota month may change) or rejects a new time."""
    now = now or utcnow()
    if booking.proposed_start_at is None or booking.proposed_end_at is None:
        raise Conflict("There is no proposed new time.")
    if actor.id not in (booking.student_id, booking.tutor_id) or actor.id == booking.proposed_by_id:
        raise Forbidden("Only the other party can answer this proposal.")
    if booking.status != "scheduled":
        raise Conflict("Only a scheduled session can be moved.")
    if not agree:
        booking.proposed_start_at = booking.proposed_end_at = None
        booking.proposed_by_id = None
        await db.commit()
        return booking
    if booking.proposed_start_at <= now:
        raise ValidationError("The proposed time has passed.")
    profile = await ensure_profile(db, (await _load_tutor(db, booking.tutor_id))[0])
    student = await db.get(User, booking.student_id)
    assert student is not None
    new_start, new_end = booking.proposed_start_at, booking.proposed_end_at
    old_month = booking.quota_month
    await _release_claims(db, booking.id)
    booking.start_at, booking.end_at = new_start, new_end
    booking.proposed_start_at = booking.proposed_end_at = None
    booking.proposed_by_id = None
    booking.moves += 1
    booking.sequence += 1
    booking.updated_at = now
    await db.flush()
    await _claim(db, booking, profile.buffer_minutes)
    new_month = month_key(new_start, zone_of(student.timezone))
    if old_month is not None and new_month != old_month:
        await _take_quota(db, student.id, new_month, rules)
        await db.execute(
            update(StudentQuota)
            .where(
                StudentQuota.student_id == student.id,
                StudentQuota.month == old_month,
                StudentQuota.used > 0,
            )
            .values(used=StudentQuota.used - 1)
        )
        booking.quota_month = new_month
    other = booking.other_party(actor.id)
    await notes.notify(
        db,
        other,
        "reschedule_accepted",
        f"{booking.subject} moved",
        f"{actor.name} accepted the new time: {iso_utc(new_start)} (UTC).",
        link=f"/bookings/{booking.id}",
        booking_id=booking.id,
    )
    await db.commit()
    return booking


async def list_bookings(
    db: AsyncSession,
    user: User,
    *,
    status: str | None = None,
    upcoming: bool = False,
    limit: int = 100,
) -> list[Booking]:
    """The user's bookings (as student or tutor), soonest first when upcoming, else newest."""
    stmt = select(Booking).where(or_(Booking.student_id == user.id, Booking.tutor_id == user.id))
    if status:
        stmt = stmt.where(Booking.status == status)
    if upcoming:
        stmt = stmt.where(Booking.end_at > utcnow()).order_by(Booking.start_at)
    else:
        stmt = stmt.order_by(Booking.start_at.desc())
    return list((await db.execute(stmt.limit(limit))).scalars())


async def people(db: AsyncSession, bookings: list[Booking]) -> dict[int, User]:
    """Users taking part in `bookings`, by id."""
    ids = {b.student_id for b in bookings} | {b.tutor_id for b in bookings}
    if not ids:
        return {}
    rows = await db.execute(select(User).where(User.id.in_(ids)))
    return {u.id: u for u in rows.scalars()}


def booking_json(booking: Booking, users: dict[int, User] | None = None) -> dict[str, Any]:
    """The API shape of a booking."""
    users = users or {}
    tutor = users.get(booking.tutor_id)
    student = users.get(booking.student_id)
    return {
        "id": booking.id,
        "tutor_id": booking.tutor_id,
        "tutor_name": tutor.name if tutor else None,
        "student_id": booking.student_id,
        "student_name": student.name if student else None,
        "start": iso_utc(booking.start_at),
        "end": iso_utc(booking.end_at),
        "subject": booking.subject,
        "note": booking.note,
        "status": booking.status,
        "status_reason": booking.status_reason,
        "requested_by": booking.requested_by,
        "expires_at": iso_utc(booking.expires_at) if booking.expires_at else None,
        "price": {"amount_cents": booking.price_cents, "currency": booking.currency},
        "payment_state": booking.payment_state,
        "late_cancel": booking.late_cancel,
        "moves": booking.moves,
        "proposed_start": iso_utc(booking.proposed_start_at) if booking.proposed_start_at else None,
        "call_url": f"/sessions/{booking.id}/call",
        "ics_url": f"/bookings/{booking.id}.ics",
    }
