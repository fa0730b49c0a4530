"""Bookings: a booked session between a student and a tutor; calls and reviews hang off it.

The rules that must survive concurrent requests live in the database:
- one pending request per student (partial unique index below);
- nobody double booked: every active booking claims 15-minute units per participant in
  `booking_claims`, unique per (user, unit);
- a monthly session quota per student: a counter row in `student_quotas` whose CHECK constraint
  refuses `used > quota`, bumped in the same transaction as the booking.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from panda.store.models.base import Base
from panda.store.types import UTCDateTime, utcnow

BOOKING_STATUSES = (
    "pending",
    "scheduled",
    "declined",
    "expired",
    "cancelled",
    "in_progress",
    "completed",
    "no_show",
)
# Statuses in which a booking holds its time slot.
ACTIVE_STATUSES = ("pending", "scheduled", "in_progress")
# Length of one claimed time unit; every session length and slot start is a multiple of it.
CLAIM_UNIT_MINUTES = 15


class Booking(Base):
    """A session request or booked session; its id is the session id used by calls and the API."""

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("end_at > start_at", name="end_after_start"),
        Index("ix_bookings_tutor_start", "tutor_id", "start_at"),
        Index("ix_bookings_student_start", "student_id", "start_at"),
        Index("ix_bookings_status_expires", "status", "expires_at"),
        # One pending request per student, enforced by the database.
        Index(
            "uq_bookings_one_pending_per_student",
            "student_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime)
    subject: Mapped[str] = mapped_column(String(120))
    note: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    price_cents: Mapped[int] = mapped_column(Integer, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    no_show_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def other_party(self, user_id: int) -> int:
        """The id of the other person in this booking, seen from `user_id`."""
        return self.tutor_id if user_id == self.student_id else self.student_id
    # Who asked: "student" (a request) or "tutor" (a proposal the student accepts).
    requested_by: Mapped[str] = mapped_column(
        String(8), default="student", server_default="student"
    )
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The quota month (YYYY-MM in the student's zone) this booking counts against, if it counts.
    quota_month: Mapped[str | None] = mapped_column(String(7))
    late_cancel: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    cancelled_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # iCalendar SEQUENCE: bumped on every change a calendar app should pick up.
    sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    moves: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    proposed_start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proposed_end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proposed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    payment_state: Mapped[str] = mapped_column(
        String(16), default="not_collected", server_default="not_collected"
    )


class BookingClaim(Base):
    """One 15-minute unit of one participant's time held by an active booking."""

    __tablename__ = "booking_claims"
    __table_args__ = (
        UniqueConstraint("user_id", "unit", name="uq_booking_claims_user_unit"),
        Index("ix_booking_claims_booking_id", "booking_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Minutes since the Unix epoch divided by CLAIM_UNIT_MINUTES (integers compare exactly on
    # every backend, unlike datetimes).
    unit: Mapped[int] = mapped_column(Integer)


class StudentQuota(Base):
    """Sessions a student holds in one calendar month (their zone); the CHECK caps them."""

    __tablename__ = "student_quotas"
    __table_args__ = (CheckConstraint("used >= 0 AND used <= quota", name="within_quota"),)

    student_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)
    quota: Mapped[int] = mapped_column(Integer, default=8)
