"""Recordings of sessions: one row per recording, one per file, and the recording settings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from panda.store.models.base import Base
from panda.store.types import UTCDateTime, utcnow

RECORDING_STATUSES = ("recording", "processing", "ready", "interrupted", "failed")
COMBINED_STATUSES = ("none", "pending", "running", "ready", "failed")


class Recording(Base):
    """One recording of a session (booking): who started it, when, what it holds."""

    __tablename__ = "recordings"
    __table_args__ = (
        Index("ix_recordings_tutor_started", "tutor_id", "started_at"),
        Index("ix_recordings_student_started", "student_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), index=True
    )
    tutor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    student_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Directory name under the recordings data directory (random, never shown in URLs).
    directory: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="recording", index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    combined_status: Mapped[str] = mapped_column(String(16), default="none")
    combined_progress: Mapped[float] = mapped_column(Float, default=0.0)
    combined_size: Mapped[int] = mapped_column(Integer, default=0)
    combined_error: Mapped[str | None] = mapped_column(Text)


class RecordingFile(Base):
    """One file of a recording: a participant's camera+microphone or screen over one stretch."""

    __tablename__ = "recording_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(
        ForeignKey("recordings.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    participant_id: Mapped[str] = mapped_column(String(64))
    source_group: Mapped[str] = mapped_column(String(16))  # "main" | "screen"
    segment: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(200))
    kinds: Mapped[str] = mapped_column(String(32), default="")  # "video,audio"
    start_offset: Mapped[float] = mapped_column(Float, default=0.0)
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="ready")


class RecordingSettings(Base):
    """The recording settings an admin controls (a single row, id 1)."""

    __tablename__ = "recording_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    students_can_view: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
