"""recordings: recordings, their files, and the recording settings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import panda.store.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = panda.store.types.UTCDateTime(timezone=True)
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("tutor_id", sa.Integer(), nullable=True),
        sa.Column("student_id", sa.Integer(), nullable=True),
        sa.Column("started_by_id", sa.Integer(), nullable=True),
        sa.Column("directory", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", utc, nullable=False),
        sa.Column("ended_at", utc, nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("combined_status", sa.String(length=16), nullable=False),
        sa.Column("combined_progress", sa.Float(), nullable=False),
        sa.Column("combined_size", sa.Integer(), nullable=False),
        sa.Column("combined_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["booking_id"], ["bookings.id"],
                                name=op.f("fk_recordings_booking_id_bookings"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tutor_id"], ["users.id"],
                                name=op.f("fk_recordings_tutor_id_users"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["student_id"], ["users.id"],
                                name=op.f("fk_recordings_student_id_users"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["started_by_id"], ["users.id"],
                                name=op.f("fk_recordings_started_by_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recordings")),
        sa.UniqueConstraint("directory", name=op.f("uq_recordings_directory")),
    )
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recordings_booking_id"), ["booking_id"])
        batch_op.create_index(batch_op.f("ix_recordings_status"), ["status"])
        batch_op.create_index(batch_op.f("ix_recordings_started_at"), ["started_at"])
        batch_op.create_index("ix_recordings_tutor_started", ["tutor_id", "started_at"])
        batch_op.create_index("ix_recordings_student_started", ["student_id", "started_at"])

    op.create_table(
        "recording_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recording_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("participant_id", sa.String(length=64), nullable=False),
        sa.Column("source_group", sa.String(length=16), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kinds", sa.String(length=32), nullable=False),
        sa.Column("start_offset", sa.Float(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["recording_id"], ["recordings.id"],
                                name=op.f("fk_recording_files_recording_id_recordings"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_recording_files_user_id_users"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recording_files")),
    )
    with op.batch_alter_table("recording_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recording_files_recording_id"), ["recording_id"])

    op.create_table(
        "recording_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("students_can_view", sa.Boolean(), nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recording_settings")),
    )


def downgrade() -> None:
    op.drop_table("recording_settings")
    with op.batch_alter_table("recording_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recording_files_recording_id"))
    op.drop_table("recording_files")
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.drop_index("ix_recordings_student_started")
        batch_op.drop_index("ix_recordings_tutor_started")
        batch_op.drop_index(batch_op.f("ix_recordings_started_at"))
        batch_op.drop_index(batch_op.f("ix_recordings_status"))
        batch_op.drop_index(batch_op.f("ix_recordings_booking_id"))
    op.drop_table("recordings")
