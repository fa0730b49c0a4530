"""Call room lifecycle: who may join, when a room is open, and how it moves its booking along.

A booked session's room opens `OPEN_BEFORE` ahead of its start and closes `CLOSE_AFTER` after its
end; the tutor or an admin may end it earlier. The booking follows the room: `in_progress` once
student and tutor have both joined, `completed` when the room ends after both were in it,
`no_show` (naming who never came) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from panda.errors import Conflict, Forbidden, NotFound
from panda.store.models import Booking, CallParticipant, CallRoom, User
from panda.store.types import utcnow

OPEN_BEFORE = timedelta(minutes=10)
CLOSE_AFTER = timedelta(minutes=30)
# Bookings whose room may be used; anything else (pending, declined, cancelled...) has no call.
CALLABLE_STATUSES = ("scheduled", "in_progress")
FINISHED_STATUSES = ("completed", "no_show")


@dataclass(frozen=True)
class CallAccess:
    """The booking and the role the user has in its call ("student" | "tutor" | "admin")."""

    booking: Booking
    role: str


def opens_at(booking: Booking) -> datetime:
    """When the room of `booking` opens."""
    return booking.start_at - OPEN_BEFORE


def closes_at(booking: Booking) -> datetime:
    """When the room of `booking` closes by itself."""
    return booking.end_at + CLOSE_AFTER


def call_role(booking: Booking, user: User) -> str | None:
    """The role `user` has in this booking's call, or None when they are not part of it."""
    if user.id == booking.student_id:
        return "student"
    if user.id == booking.tutor_id:
        return "tutor"
    if user.is_admin:
        return "admin"
    return None


async def get_access(db: AsyncSession, booking_id: int, user: User) -> CallAccess:
    """The booking if `user` may see its call; NotFound or Forbidden with a clear message."""
    booking = await db.get(Booking, booking_id)
    if booking is None:
        raise NotFound("There is no such session.")
    role = call_role(booking, user)
    if role is None:
        raise Forbidden("Only the student and the tutor of this session can join its call.")
    if not user.is_verified:
        raise Forbidden("Please verify your e-mail address before joining a call.")
    return CallAccess(booking=booking, role=role)


async def get_room(db: AsyncSession, booking_id: int) -> CallRoom | None:
    """The room row of a booking, if it was ever opened."""
    return (
        await db.execute(select(CallRoom).where(CallRoom.booking_id == booking_id))
    ).scalar_one_or_none()


def window_state(booking: Booking, room: CallRoom | None, now: datetime | None = None) -> str:
    """Where the call stands: "not_open" | "open" | "ended" (never for bookings not booked)."""
    now = now or utcnow()
    if room is not None and room.status == "ended":
        return "ended"
    if booking.status in FINISHED_STATUSES or now >= closes_at(booking):
        return "ended"
    if booking.status not in CALLABLE_STATUSES:
        return "unavailable"
    if now < opens_at(booking):
        return "not_open"
    return "open"


async def list_participants(db: AsyncSession, room: CallRoom) -> list[tuple[CallParticipant, User]]:
    """Everyone who ever joined the room, with their user, earliest first."""
    rows = await db.execute(
        select(CallParticipant, User)
        .join(User, User.id == CallParticipant.user_id)
        .where(CallParticipant.room_id == room.id)
        .order_by(CallParticipant.first_joined_at, CallParticipant.id)
    )
    return [(p, u) for p, u in rows.all()]


async def room_info(
    db: AsyncSession, booking: Booking, now: datetime | None = None
) -> dict[str, Any]:
    """JSON-ready description of the room of `booking` with its participants."""
    room = await get_room(db, booking.id)
    state = window_state(booking, room, now)
    participants = []
    if room is not None:
        participants = [
            {
                "user_id": u.id,
                "name": u.name,
                "role": p.role,
                "joined_at": p.joined_at.isoformat(),
                "first_joined_at": p.first_joined_at.isoformat(),
                "left_at": p.left_at.isoformat() if p.left_at else None,
                "is_online": p.is_online,
            }
            for p, u in await list_participants(db, room)
        ]
    return {
        "session_id": booking.id,
        "status": room.status if room is not None else ("ended" if state == "ended" else "waiting"),
        "is_open": state == "open",
        "window": state,
        "opens_at": opens_at(booking).isoformat(),
        "closes_at": closes_at(booking).isoformat(),
        "session_start": booking.start_at.isoformat(),
        "session_end": booking.end_at.isoformat(),
        "booking_status": booking.status,
        "opened_at": room.opened_at.isoformat() if room else None,
        "started_at": room.started_at.isoformat() if room and room.started_at else None,
        "ended_at": room.ended_at.isoformat() if room and room.ended_at else None,
        "end_reason": room.end_reason if room else None,
        "participants": participants,
    }


def _require_open(booking: Booking, room: CallRoom | None, now: datetime) -> None:
    state = window_state(booking, room, now)
    if state == "not_open":
        raise Conflict(
            "The room is not open yet: it opens 10 minutes before the session starts "
            f"({opens_at(booking).isoformat()})."
        )
    if state == "ended":
        raise Conflict("This session's call has ended.")
    if state == "unavailable":
        raise Conflict("This session is not booked, so it has no call.")


async def open_room(db: AsyncSession, booking: Booking, now: datetime | None = None) -> CallRoom:
    """The booking's room, created when its window is open; Conflict when it is not."""
    now = now or utcnow()
    room = await get_room(db, booking.id)
    _require_open(booking, room, now)
    if room is not None:
        return room
    room = CallRoom(booking_id=booking.id, status="waiting", opened_at=now)
    db.add(room)
    try:
        await db.flush()
    except IntegrityError:
        # Both participants opened it at the same moment and the other insert won; this is
        # the first write of the unit of work, so rolling back loses nothing.
        await db.rollback()
        await db.refresh(booking)
        room = await get_room(db, booking.id)
        if room is None:  # pragma: no cover - the unique index guarantees a row
            raise
    return room


async def participant_joined(
    db: AsyncSession, access: CallAccess, user: User, now: datetime | None = None
) -> CallRoom:
    """Record that `user` is in the call; moves the room to active and the booking along."""
    now = now or utcnow()
    room = await open_room(db, access.booking, now)
    part = (
        await db.execute(
            select(CallParticipant).where(
                CallParticipant.room_id == room.id, CallParticipant.user_id == user.id
            )
        )
    ).scalar_one_or_none()
    if part is None:
        db.add(
            CallParticipant(
                room_id=room.id,
                user_id=user.id,
                role=access.role,
                first_joined_at=now,
                joined_at=now,
                is_online=True,
                join_count=1,
            )
        )
    else:
        part.joined_at = now
        part.left_at = None
        part.is_online = True
        part.join_count += 1
    if room.status == "waiting":
        room.status = "active"
        room.started_at = now
    await db.flush()
    booking = access.booking
    if booking.status == "scheduled" and await _both_came(db, room, booking):
        booking.status = "in_progress"
    return room


async def participant_left(
    db: AsyncSession, booking_id: int, user_id: int, now: datetime | None = None
) -> None:
    """Record that `user_id` left the call (or vanished)."""
    room = await get_room(db, booking_id)
    if room is None:
        return
    part = (
        await db.execute(
            select(CallParticipant).where(
                CallParticipant.room_id == room.id, CallParticipant.user_id == user_id
            )
        )
    ).scalar_one_or_none()
    if part is not None and part.is_online:
        part.is_online = False
        part.left_at = now or utcnow()


async def _came(db: AsyncSession, room: CallRoom) -> set[int]:
    rows = await db.execute(
        select(CallParticipant.user_id).where(CallParticipant.room_id == room.id)
    )
    return set(rows.scalars())


async def _both_came(db: AsyncSession, room: CallRoom, booking: Booking) -> bool:
    came = await _came(db, room)
    return booking.student_id in came and booking.tutor_id in came


async def end_room(
    db: AsyncSession,
    booking: Booking,
    *,
    by: User | None,
    reason: str,
    now: datetime | None = None,
) -> CallRoom | None:
    """End the room (idempotent) and settle the booking: completed or no_show."""
    now = now or utcnow()
    room = await get_room(db, booking.id)
    if room is None:
        room = CallRoom(booking_id=booking.id, status="ended", opened_at=now)
        db.add(room)
        await db.flush()
    elif room.status == "ended":
        return room
    room.status = "ended"
    room.ended_at = now
    room.ended_by_id = by.id if by else None
    room.end_reason = reason
    parts = (
        await db.execute(select(CallParticipant).where(CallParticipant.room_id == room.id))
    ).scalars()
    for part in parts:
        if part.is_online:
            part.is_online = False
            part.left_at = now
    if booking.status in CALLABLE_STATUSES:
        came = await _came(db, room)
        if booking.student_id in came and booking.tutor_id in came:
            booking.status = "completed"
        else:
            booking.status = "no_show"
            # Who did not come; nobody is named when neither did.
            if booking.student_id in came:
                booking.no_show_user_id = booking.tutor_id
            elif booking.tutor_id in came:
                booking.no_show_user_id = booking.student_id
    return room


async def expired_bookings(db: AsyncSession, now: datetime | None = None) -> list[Booking]:
    """Booked sessions whose room window has closed but that were never settled."""
    now = now or utcnow()
    rows = await db.execute(
        select(Booking).where(
            Booking.status.in_(CALLABLE_STATUSES), Booking.end_at <= now - CLOSE_AFTER
        )
    )
    return list(rows.scalars())


async def close_expired(db: AsyncSession, now: datetime | None = None) -> list[int]:
    """End every room whose window closed; the ids of the sessions that were settled."""
    now = now or utcnow()
    done = []
    for booking in await expired_bookings(db, now):
        await end_room(db, booking, by=None, reason="time", now=now)
        done.append(booking.id)
    return done


def may_end(access: CallAccess) -> bool:
    """Only the tutor or an admin can end a call before its time."""
    return access.role in ("tutor", "admin")


async def open_sessions_for(
    db: AsyncSession, user: User, now: datetime | None = None
) -> list[Booking]:
    """The user's booked sessions whose room is open right now (for the dashboards)."""
    now = now or utcnow()
    stmt = select(Booking).where(
        Booking.status.in_(CALLABLE_STATUSES),
        Booking.start_at <= now + OPEN_BEFORE,
        Booking.end_at > now - CLOSE_AFTER,
    )
    if not user.is_admin:
        stmt = stmt.where((Booking.student_id == user.id) | (Booking.tutor_id == user.id))
    bookings = list((await db.execute(stmt.order_by(Booking.start_at).limit(20))).scalars())
    if not bookings:
        return []
    ended = set(
        (
            await db.execute(
                select(CallRoom.booking_id).where(
                    CallRoom.status == "ended",
                    CallRoom.booking_id.in_([b.id for b in bookings]),
                )
            )
        ).scalars()
    )
    return [b for b in bookings if b.id not in ended]
