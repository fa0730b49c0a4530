"""Bookings: a booked session between a student and a tutor; calls and reviews hang off it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
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


class Booking(Base):
    """A session request or booked session; its id is the session id used by calls and the API."""

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("end_at > start_at", name="end_after_start"),
        Index("ix_bookings_tutor_start", "tutor_id", "start_at"),
        Index("ix_bookings_student_start", "student_id", "start_at"),
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
