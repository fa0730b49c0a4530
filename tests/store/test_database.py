"""Database behaviour the app relies on, checked on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from panda.store.db import create_engine, create_sessionmaker
from panda.store.models import Booking, User
from panda.store.types import utcnow
from panda.store.users import create_user


async def _pair(db: AsyncSession) -> tuple[int, int]:
    """A student and an approved tutor; their ids (objects expire on rollback)."""
    student = await create_user(db, email="s@example.test", name="S", password=None, role="student")
    tutor = await create_user(
        db, email="t@example.test", name="T", password=None, role="tutor", tutor_status="approved"
    )
    await db.commit()
    return student.id, tutor.id


def _booking(student: int, tutor: int, status: str, hour: int) -> Booking:
    start = datetime(2030, 1, 7, hour, tzinfo=UTC)
    return Booking(
        student_id=student,
        tutor_id=tutor,
        start_at=start,
        end_at=start + timedelta(hours=1),
        subject="Algebra",
        status=status,
    )


async def test_utc_datetime_round_trips_aware_utc(store_db: AsyncSession) -> None:
    student_id, _ = await _pair(store_db)
    student = await store_db.get_one(User, student_id)
    # 09:30 in UTC+02:00 is 07:30 UTC; it must come back as that instant, aware, in UTC.
    given = datetime(2030, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    student.email_verified_at = given
    await store_db.commit()
    store_db.expunge_all()
    loaded = (await store_db.execute(select(User).where(User.id == student.id))).scalar_one()
    assert loaded.email_verified_at == given
    assert loaded.email_verified_at.tzinfo is UTC
    assert loaded.email_verified_at.hour == 7
    assert loaded.email_verified_at.microsecond == 123456
    # Comparisons in SQL see the same instant.
    found = (
        await store_db.execute(
            select(User.id).where(
                User.email_verified_at == datetime(2030, 3, 1, 7, 30, 15, 123456, tzinfo=UTC)
            )
        )
    ).scalar_one_or_none()
    assert found == student.id


async def test_naive_datetime_is_refused(store_db: AsyncSession) -> None:
    student_id, _ = await _pair(store_db)
    student = await store_db.get_one(User, student_id)
    student.email_verified_at = datetime(2030, 3, 1, 9, 30)  # naive: ambiguous
    with pytest.raises(StatementError, match="naive datetime"):
        await store_db.commit()


async def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC


async def test_one_pending_request_per_student(store_db: AsyncSession) -> None:
    student, tutor = await _pair(store_db)
    store_db.add(_booking(student, tutor, "pending", 9))
    await store_db.commit()
    # Other statuses do not count against the limit.
    store_db.add_all(
        [_booking(student, tutor, "scheduled", 11), _booking(student, tutor, "declined", 12)]
    )
    await store_db.commit()
    store_db.add(_booking(student, tutor, "pending", 14))
    with pytest.raises(IntegrityError):
        await store_db.commit()
    await store_db.rollback()
    # Once the first request is answered, a new one may be made.
    first = (
        await store_db.execute(select(Booking).where(Booking.status == "pending"))
    ).scalar_one()
    first.status = "scheduled"
    await store_db.commit()
    store_db.add(_booking(student, tutor, "pending", 15))
    await store_db.commit()


async def test_one_pending_request_holds_under_concurrent_inserts(
    store_engine: AsyncEngine, store_db: AsyncSession
) -> None:
    """Two requests racing in separate connections: exactly one is stored."""
    student, tutor = await _pair(store_db)
    sessionmaker = create_sessionmaker(store_engine)
    first_inserted = asyncio.Event()
    second_sent = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def release_when_blocked() -> None:
        """Let the first commit once the second insert is really waiting on it."""
        if store_engine.dialect.name == "postgresql":
            # Deterministic: another connection sees the second insert blocked on a lock.
            async with store_engine.connect() as monitor:
                for _ in range(1500):
                    waiting = (
                        await monitor.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                                " current_database() AND wait_event_type = 'Lock'"
                            )
                        )
                    ).scalar_one()
                    if waiting:
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("the second insert never waited on the first")
        # SQLite (one writer at a time): the second is queued behind the write lock or not yet
        # sent; either way exactly one insert may win.
        second_sent.set()

    async def request(hour: int, *, first: bool) -> bool:
        async with sessionmaker() as db:
            db.add(_booking(student, tutor, "pending", hour))
            try:
                if first:
                    # Insert inside an open transaction, and commit only once the rival has
                    # sent its own insert: both are in flight at the same time.
                    await db.flush()
                    first_inserted.set()
                    await second_sent.wait()
                else:
                    await first_inserted.wait()
                    tasks.append(asyncio.create_task(release_when_blocked()))
                await db.commit()
                return True
            except IntegrityError:
                await db.rollback()
                return False

    results = await asyncio.wait_for(
        asyncio.gather(request(9, first=True), request(10, first=False)), timeout=60
    )
    await asyncio.gather(*tasks)
    assert sorted(results) == [False, True]
    pending = (
        (
            await store_db.execute(
                select(Booking).where(Booking.student_id == student, Booking.status == "pending")
            )
        )
        .scalars()
        .all()
    )
    assert len(pending) == 1


async def test_sqlite_pragmas_are_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite3'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced(store_db: AsyncSession) -> None:
    start = datetime(2030, 1, 7, 9, tzinfo=UTC)
    store_db.add(
        Booking(
            student_id=999_999,
            tutor_id=999_998,
            start_at=start,
            end_at=start + timedelta(hours=1),
            subject="Nobody",
            status="scheduled",
        )
    )
    with pytest.raises(IntegrityError):
        await store_db.commit()


async def test_deleting_a_user_cascades_to_bookings(store_db: AsyncSession) -> None:
    student, tutor = await _pair(store_db)
    store_db.add(_booking(student, tutor, "scheduled", 9))
    await store_db.commit()
    await store_db.execute(text("DELETE FROM users WHERE id = :id"), {"id": student})
    await store_db.commit()
    remaining = (await store_db.execute(select(Booking))).scalars().all()
    assert remaining == []
