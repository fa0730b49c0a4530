"""Marketplace: tutor profiles, subjects, availability, reviews, notifications, questions."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from panda.store.models.base import Base
from panda.store.types import UTCDateTime, utcnow

SESSION_LENGTHS = (30, 45, 60, 90)
EXCEPTION_KINDS = ("off", "extra")
NOTIFICATION_KINDS = (
    "request_received",
    "request_accepted",
    "request_declined",
    "request_expired",
    "booking_cancelled",
    "proposal_received",
    "reschedule_proposed",
    "reschedule_accepted",
    "reminder_24h",
    "reminder_15m",
    "review_invitation",
    "review_reply",
    "question_answered",
)


class Subject(Base):
    """A subject tutors teach, from the admin-managed list."""

    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TutorProfile(Base):
    """What a tutor offers and how they can be booked; the user row holds name, bio, zone, photo."""

    __tablename__ = "tutor_profiles"
    __table_args__ = (
        CheckConstraint("session_minutes IN (30, 45, 60, 90)", name="session_length"),
        CheckConstraint("hourly_rate_cents >= 0", name="rate_not_negative"),
        CheckConstraint("rating_count >= 0", name="rating_count_not_negative"),
        # Search reads only this table: the sort orders walk these indexes and stop early.
        Index(
            "ix_tutor_profiles_search_rating", "approved", "listed", "rating_avg", "rating_count"
        ),
        Index("ix_tutor_profiles_search_rate", "approved", "listed", "hourly_rate_cents"),
        Index("ix_tutor_profiles_search_created", "approved", "listed", "created_at"),
        Index("ix_tutor_profiles_location", "country", "city"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    headline: Mapped[str] = mapped_column(String(160), default="")
    hourly_rate_cents: Mapped[int] = mapped_column(Integer, default=3000)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    city: Mapped[str] = mapped_column(String(80), default="")
    country: Mapped[str] = mapped_column(String(80), default="")
    online_only: Mapped[bool] = mapped_column(Boolean, default=True)
    intro_video_url: Mapped[str | None] = mapped_column(String(300))
    session_minutes: Mapped[int] = mapped_column(Integer, default=60)
    min_notice_minutes: Mapped[int] = mapped_column(Integer, default=120)
    buffer_minutes: Mapped[int] = mapped_column(Integer, default=0)
    max_moves: Mapped[int] = mapped_column(Integer, default=2)
    # Denormalised from visible reviews so search can sort and filter by rating with an index.
    rating_sum: Mapped[int] = mapped_column(Integer, default=0)
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    rating_avg: Mapped[float] = mapped_column(Float, default=0.0)
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    # Mirror of "the user is an approved, active tutor", kept by database triggers on users and
    # tutor_profiles (migration 0004), so search never joins the users table.
    approved: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TutorSubject(Base):
    """A subject a tutor teaches."""

    __tablename__ = "tutor_subjects"
    __table_args__ = (Index("ix_tutor_subjects_subject_tutor", "subject_id", "tutor_id"),)

    tutor_id: Mapped[int] = mapped_column(
        ForeignKey("tutor_profiles.user_id", ondelete="CASCADE"), primary_key=True
    )
    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True
    )


class TutorLanguage(Base):
    """A language a tutor teaches in (lower-case English name, e.g. "spanish")."""

    __tablename__ = "tutor_languages"
    __table_args__ = (Index("ix_tutor_languages_language_tutor", "language", "tutor_id"),)

    tutor_id: Mapped[int] = mapped_column(
        ForeignKey("tutor_profiles.user_id", ondelete="CASCADE"), primary_key=True
    )
    language: Mapped[str] = mapped_column(String(40), primary_key=True)


class AvailabilityRule(Base):
    """Weekly recurring hours in the tutor's own zone: weekday 0 = Monday, minutes from midnight."""

    __tablename__ = "availability_rules"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday_range"),
        CheckConstraint(
            "start_minute >= 0 AND end_minute <= 1440 AND start_minute < end_minute",
            name="minute_range",
        ),
        Index("ix_availability_rules_tutor_id", "tutor_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    weekday: Mapped[int] = mapped_column(Integer)
    start_minute: Mapped[int] = mapped_column(Integer)
    end_minute: Mapped[int] = mapped_column(Integer)


class AvailabilityException(Base):
    """A dated change to the weekly hours: a day (or hours) off, or extra hours."""

    __tablename__ = "availability_exceptions"
    __table_args__ = (
        CheckConstraint("kind IN ('off', 'extra')", name="kind"),
        Index("ix_availability_exceptions_tutor_day", "tutor_id", "day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(8))
    # None for a whole day off.
    start_minute: Mapped[int | None] = mapped_column(Integer)
    end_minute: Mapped[int | None] = mapped_column(Integer)


class AvailabilityWindow(Base):
    """Concrete open hours (UTC) for the next weeks, derived from rules; serves search filters."""

    __tablename__ = "availability_windows"
    __table_args__ = (
        # Covering index for the search filter's range scan on start_min.
        Index(
            "ix_availability_windows_search",
            "start_min",
            "end_min",
            "session_minutes",
            "tutor_id",
        ),
        Index("ix_availability_windows_tutor_start", "tutor_id", "start_min"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Minutes since the Unix epoch: portable arithmetic in SQL on every backend.
    start_min: Mapped[int] = mapped_column(Integer)
    end_min: Mapped[int] = mapped_column(Integer)
    # The tutor's session length, copied so the search filter needs no join.
    session_minutes: Mapped[int] = mapped_column(Integer, default=60)


class Review(Base):
    """A student's rating of one completed session, with at most one reply from the tutor."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
        Index("ix_reviews_tutor_created", "tutor_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), unique=True
    )
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    student_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    reply: Mapped[str | None] = mapped_column(Text)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Notification(Base):
    """An in-app notification; it doubles as the outbox of its e-mail (`email_state`)."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_user_created", "user_id", "created_at"),
        Index("ix_notifications_email_state", "email_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str | None] = mapped_column(String(300))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"))
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # none | queued | sending | sent | failed
    email_state: Mapped[str] = mapped_column(String(8), default="queued")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SentMarker(Base):
    """Proof that a once-only job ran (a reminder, an invitation): the key is unique."""

    __tablename__ = "sent_markers"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Question(Base):
    """A student's question on a subject board; `author_id` is shown only to admins if anonymous."""

    __tablename__ = "questions"
    __table_args__ = (Index("ix_questions_subject_created", "subject_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Answer(Base):
    """An approved tutor's answer to a question."""

    __tablename__ = "answers"
    __table_args__ = (Index("ix_answers_question_id", "question_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id", ondelete="CASCADE"))
    tutor_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CalendarFeedToken(Base):
    """A private calendar feed URL's secret (stored hashed); revoking it kills the URL."""

    __tablename__ = "calendar_feed_tokens"
    __table_args__ = (Index("ix_calendar_feed_tokens_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
