"""iCalendar output: one booking as .ics, or a user's feed; UTC times, stable UIDs, reminders."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from icalendar import Alarm, Calendar, Event
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from panda.store.models import Booking, CalendarFeedToken, User
from panda.store.types import utcnow

FEED_STATUSES = ("pending", "scheduled", "in_progress", "completed", "cancelled", "no_show")
_ICS_STATUS = {"pending": "TENTATIVE", "cancelled": "CANCELLED"}


def booking_uid(booking: Booking, base_url: str) -> str:
    """A UID that never changes for the booking."""
    host = urlsplit(base_url).hostname or "panda-professor"
    return f"booking-{booking.id}@{host}"


def _event(booking: Booking, users: dict[int, User], viewer: User, base_url: str) -> Event:
    other_id = booking.other_party(viewer.id)
    other = users.get(other_id)
    event = Event()
    event.add("uid", booking_uid(booking, base_url))
    event.add("dtstamp", booking.updated_at or utcnow())
    event.add("dtstart", booking.start_at)
    event.add("dtend", booking.end_at)
    event.add("sequence", booking.sequence)
    event.add("summary", f"{booking.subject} with {other.name if other else 'Panda Professor'}")
    event.add(
        "description",
        f"Panda Professor session #{booking.id}. Join: {base_url}/sessions/{booking.id}/call",
    )
    event.add("url", f"{base_url}/bookings/{booking.id}")
    event.add("status", _ICS_STATUS.get(booking.status, "CONFIRMED"))
    if booking.status in ("scheduled", "pending"):
        for minutes in (15, 24 * 60):
            alarm = Alarm()
            alarm.add("action", "DISPLAY")
            alarm.add("description", f"{booking.subject} starts soon")
            alarm.add("trigger", timedelta(minutes=-minutes))
            event.add_component(alarm)
    return event


def calendar_bytes(
    bookings: list[Booking], users: dict[int, User], viewer: User, base_url: str, name: str
) -> bytes:
    """A VCALENDAR with one VEVENT per booking."""
    cal = Calendar()
    cal.add("prodid", "-//Panda Professor//Bookings//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", name)
    for booking in bookings:
        cal.add_component(_event(booking, users, viewer, base_url))
    return bytes(cal.to_ical())


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def new_feed_token(db: AsyncSession, user: User) -> str:
    """Revoke the user's feed URLs and issue a new one (the raw token is shown once)."""
    await revoke_feed(db, user)
    token = secrets.token_urlsafe(32)
    db.add(CalendarFeedToken(user_id=user.id, token_hash=_hash(token), created_at=utcnow()))
    await db.flush()
    return token


async def revoke_feed(db: AsyncSession, user: User) -> int:
    """Kill every feed URL of the user."""
    result = await db.execute(
        update(CalendarFeedToken)
        .where(CalendarFeedToken.user_id == user.id, CalendarFeedToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def has_feed(db: AsyncSession, user: User) -> bool:
    """True when the user has a live feed URL."""
    row = (
        await db.execute(
            select(CalendarFeedToken.id).where(
                CalendarFeedToken.user_id == user.id, CalendarFeedToken.revoked_at.is_(None)
            )
        )
    ).first()
    return row is not None


async def user_for_feed(db: AsyncSession, token: str) -> User | None:
    """The owner of a live feed token."""
    if not token or len(token) > 100:
        return None
    row = (
        await db.execute(
            select(User)
            .join(CalendarFeedToken, CalendarFeedToken.user_id == User.id)
            .where(
                CalendarFeedToken.token_hash == _hash(token),
                CalendarFeedToken.revoked_at.is_(None),
                User.is_active.is_(True),
            )
        )
    ).scalar_one_or_none()
    return row


async def feed_bookings(db: AsyncSession, user: User) -> list[Booking]:
    """The bookings a feed carries: the last 90 days and everything ahead."""
    since = utcnow() - timedelta(days=90)
    rows = await db.execute(
        select(Booking)
        .where(
            or_(Booking.student_id == user.id, Booking.tutor_id == user.id),
            Booking.status.in_(FEED_STATUSES),
            Booking.end_at > since,
        )
        .order_by(Booking.start_at)
        .limit(1000)
    )
    return list(rows.scalars())
