"""Queries of the recordings area: rows, files, visibility, settings and the audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, false, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from panda.errors import NotFound
from panda.media.recorder import RecordedFile, RecordingResult
from panda.store.models import (
    AuditEntry,
    Booking,
    Recording,
    RecordingFile,
    RecordingSettings,
    User,
)
from panda.store.types import utcnow

__all__ = [
    "RecordingFilters",
    "RecordingRow",
    "active_recordings",
    "audit",
    "audit_entries",
    "can_manage",
    "create_recording",
    "delete_recording",
    "expired_recordings",
    "get_settings",
    "get_visible_recording",
    "list_recordings",
    "participant_filter_users",
    "recording_files",
    "save_result",
    "unfinished_combined",
    "update_settings",
]


@dataclass(frozen=True)
class RecordingFilters:
    """Filters of the recordings list (all optional)."""

    tutor_id: int | None = None
    student_id: int | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None  # exclusive
    status: str | None = None


@dataclass(frozen=True)
class RecordingRow:
    """A recording with the names a list shows."""

    recording: Recording
    tutor_name: str
    student_name: str
    subject: str


async def get_settings(db: AsyncSession) -> RecordingSettings:
    """The single settings row (created with defaults when missing)."""
    row = await db.get(RecordingSettings, 1)
    if row is None:
        row = RecordingSettings(id=1, retention_days=None, students_can_view=False)
        db.add(row)
        await db.flush()
    return row


async def update_settings(
    db: AsyncSession, *, retention_days: int | None, students_can_view: bool
) -> RecordingSettings:
    """Change the recording settings."""
    row = await get_settings(db)
    row.retention_days = retention_days
    row.students_can_view = students_can_view
    row.updated_at = utcnow()
    return row


def _visible(viewer: User, students_can_view: bool) -> ColumnElement[bool]:
    """Deny by default: admins see all, tutors their sessions, students theirs if allowed."""
    if viewer.is_admin:
        return true()
    if viewer.is_tutor:
        return Recording.tutor_id == viewer.id
    if viewer.is_student and students_can_view:
        return Recording.student_id == viewer.id
    return false()


def _with_names() -> Select[Recording, str, str, str]:
    tutor = aliased(User)
    student = aliased(User)
    return (
        select(Recording, tutor.name, student.name, Booking.subject)
        .join(Booking, Booking.id == Recording.booking_id)
        .outerjoin(tutor, tutor.id == Recording.tutor_id)
        .outerjoin(student, student.id == Recording.student_id)
    )


def can_manage(viewer: User) -> bool:
    """Deleting recordings and changing the settings is for admins."""
    return bool(viewer.is_admin)


async def list_recordings(
    db: AsyncSession,
    viewer: User,
    *,
    students_can_view: bool,
    filters: RecordingFilters | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[RecordingRow], int]:
    """Recordings the viewer may see, newest first, with the total count."""
    filters = filters or RecordingFilters()
    conditions: list[ColumnElement[bool]] = [_visible(viewer, students_can_view)]
    if filters.tutor_id is not None:
        conditions.append(Recording.tutor_id == filters.tutor_id)
    if filters.student_id is not None:
        conditions.append(Recording.student_id == filters.student_id)
    if filters.date_from is not None:
        conditions.append(Recording.started_at >= filters.date_from)
    if filters.date_to is not None:
        conditions.append(Recording.started_at < filters.date_to)
    if filters.status is not None:
        conditions.append(Recording.status == filters.status)
    stmt = _with_names().where(*conditions)
    total = (await db.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = (
        await db.execute(
            stmt.order_by(Recording.started_at.desc(), Recording.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return [RecordingRow(r, t or "", s or "", subject or "") for r, t, s, subject in rows], total


async def get_visible_recording(
    db: AsyncSession, recording_id: int, viewer: User, *, students_can_view: bool
) -> RecordingRow:
    """One recording the viewer may see; NotFound otherwise (its existence stays hidden)."""
    stmt = _with_names().where(Recording.id == recording_id, _visible(viewer, students_can_view))
    row = (await db.execute(stmt)).first()
    if row is None:
        raise NotFound("There is no such recording.")
    recording, tutor_name, student_name, subject = row
    return RecordingRow(recording, tutor_name or "", student_name or "", subject or "")


async def recording_files(db: AsyncSession, recording_id: int) -> list[RecordingFile]:
    """The files of a recording in recording order."""
    rows = await db.execute(
        select(RecordingFile)
        .where(RecordingFile.recording_id == recording_id)
        .order_by(RecordingFile.start_offset, RecordingFile.id)
    )
    return list(rows.scalars())


async def create_recording(
    db: AsyncSession, booking: Booking, *, started_by_id: int | None, directory: str
) -> Recording:
    """A new row in state ``recording``."""
    recording = Recording(
        booking_id=booking.id,
        tutor_id=booking.tutor_id,
        student_id=booking.student_id,
        started_by_id=started_by_id,
        directory=directory,
        status="recording",
        started_at=utcnow(),
    )
    db.add(recording)
    await db.flush()
    return recording


async def active_recordings(db: AsyncSession) -> list[Recording]:
    """Rows still marked ``recording`` (after a crash: to recover)."""
    rows = await db.execute(select(Recording).where(Recording.status == "recording"))
    return list(rows.scalars())


async def unfinished_combined(db: AsyncSession) -> list[Recording]:
    """Stopped recordings whose combined file was never finished (the server stopped)."""
    rows = await db.execute(
        select(Recording).where(
            Recording.status != "recording",
            Recording.combined_status.in_(("pending", "running")),
        )
    )
    return list(rows.scalars())


def _user_id(participant_id: str) -> int | None:
    return int(participant_id) if participant_id.isdigit() else None


async def save_result(
    db: AsyncSession, recording: Recording, result: RecordingResult, *, status: str
) -> None:
    """Store what a stopped or recovered recording holds (replacing earlier file rows)."""
    await db.execute(delete(RecordingFile).where(RecordingFile.recording_id == recording.id))
    wanted = {uid for f in result.files if (uid := _user_id(f.participant_id)) is not None}
    user_ids = set(
        (await db.execute(select(User.id).where(User.id.in_(wanted)))).scalars()
    ) if wanted else set()
    for record in result.files:
        db.add(_file_row(recording.id, record, user_ids))
    recording.status = status
    recording.duration_seconds = result.duration
    recording.size_bytes = result.size
    recording.error = result.error
    if recording.ended_at is None:
        recording.ended_at = utcnow()


def _file_row(recording_id: int, record: RecordedFile, user_ids: set[int]) -> RecordingFile:
    user_id = _user_id(record.participant_id)
    return RecordingFile(
        recording_id=recording_id,
        user_id=user_id if user_id in user_ids else None,
        participant_id=record.participant_id[:64],
        source_group=record.group,
        segment=record.segment,
        name=record.name,
        kinds=",".join(t.get("kind", "") for t in record.tracks) or "video,audio",
        start_offset=record.start_offset,
        duration_seconds=record.duration or 0.0,
        size_bytes=record.size,
        status=record.status,
    )


async def expired_recordings(
    db: AsyncSession, retention_days: int, *, now: datetime | None = None
) -> list[Recording]:
    """Finished recordings that started more than ``retention_days`` ago."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    rows = await db.execute(
        select(Recording).where(Recording.started_at < cutoff, Recording.status != "recording")
    )
    return list(rows.scalars())


async def delete_recording(db: AsyncSession, recording: Recording) -> None:
    """Delete the row and its file rows (the caller removes the files on disk)."""
    await db.execute(delete(RecordingFile).where(RecordingFile.recording_id == recording.id))
    await db.delete(recording)


async def audit(
    db: AsyncSession,
    actor_id: int | None,
    action: str,
    recording_id: int,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit-log entry about a recording."""
    db.add(
        AuditEntry(
            actor_id=actor_id,
            action=action,
            target_type="recording",
            target_id=str(recording_id),
            detail=detail or {},
        )
    )


async def audit_entries(db: AsyncSession, recording_id: int) -> Sequence[AuditEntry]:
    """The audit trail of one recording, oldest first."""
    rows = await db.execute(
        select(AuditEntry)
        .where(AuditEntry.target_type == "recording", AuditEntry.target_id == str(recording_id))
        .order_by(AuditEntry.id)
    )
    return rows.scalars().all()


def participant_filter_users(rows: Sequence[RecordingRow]) -> list[tuple[int, str]]:
    """Distinct (id, name) pairs for building filter choices."""
    seen: dict[int, str] = {}
    for row in rows:
        for uid, name in ((row.recording.tutor_id, row.tutor_name),
                          (row.recording.student_id, row.student_name)):
            if uid is not None:
                seen.setdefault(uid, name)
    return sorted(seen.items(), key=lambda item: item[1])

