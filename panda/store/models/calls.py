"""Call rooms (one per booked session) and who was in them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from panda.store.models.base import Base
from panda.store.types import UTCDateTime, utcnow

ROOM_STATUSES = ("waiting", "active", "ended")
PARTICIPANT_ROLES = ("student", "tutor", "admin")


class CallRoom(Base):
    """The live room of one booked session: waiting until someone joins, active, then ended."""

    __tablename__ = "call_rooms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    end_reason: Mapped[str | None] = mapped_column(Text)


class CallParticipant(Base):
    """One person's presence in a room (one row per person, updated on every rejoin)."""

    __tablename__ = "call_participants"
    __table_args__ = (
        UniqueConstraint("room_id", "user_id", name="uq_call_participants_room_user"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    room_id: Mapped[int] = mapped_column(ForeignKey("call_rooms.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    first_joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_online: Mapped[bool] = mapped_column(Boolean, default=True)
    join_count: Mapped[int] = mapped_column(Integer, default=1)
