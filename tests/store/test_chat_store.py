"""Chat store on SQLite and PostgreSQL: pairs once, per-conversation seqs, read positions."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from panda.errors import Forbidden, NotFound
from panda.store import chat as store
from panda.store.db import create_sessionmaker
from panda.store.users import create_user


async def _pair(db: AsyncSession) -> tuple:
    student = await create_user(
        db, email="s@example.test", name="S", password=None, role="student", verified=True
    )
    tutor = await create_user(
        db,
        email="t@example.test",
        name="T",
        password=None,
        role="tutor",
        verified=True,
        tutor_status="approved",
    )
    await db.commit()
    return student, tutor


async def test_conversation_once_and_messages_numbered(store_db: AsyncSession) -> None:
    student, tutor = await _pair(store_db)
    conv, created = await store.open_conversation(store_db, student, tutor.id)
    again, created_again = await store.open_conversation(store_db, tutor, student.id)
    assert created and not created_again and again.id == conv.id
    seqs = []
    for n in range(3):
        message, unread = await store.add_message(store_db, conv.id, student.id, f"m{n}", None)
        seqs.append(message.seq)
        assert unread == {student.id: 0, tutor.id: n + 1}
    assert seqs == [1, 2, 3]
    assert await store.unread_totals(store_db, [student.id, tutor.id]) == {
        student.id: 0,
        tutor.id: 3,
    }
    assert await store.mark_read(store_db, conv.id, tutor.id, 2) == 2
    assert await store.mark_read(store_db, conv.id, tutor.id, 1) == 2
    assert await store.unread_total(store_db, tutor.id) == 1
    summaries = await store.list_conversations(store_db, tutor.id)
    assert [(s.other.id, s.unread, s.last_message.body) for s in summaries] == [
        (student.id, 1, "m2")
    ]
    page = await store.messages_page(store_db, conv.id, before=3, limit=1)
    assert [m.seq for m, _ in page] == [2]
    with pytest.raises(Forbidden):
        await store.conversation_for(store_db, conv.id, 424242)
    with pytest.raises(NotFound):
        await store.conversation_for(store_db, 424242, student.id)


async def test_concurrent_sends_get_distinct_ordered_seqs(
    store_engine: AsyncEngine, store_db: AsyncSession
) -> None:
    student, tutor = await _pair(store_db)
    conv, _ = await store.open_conversation(store_db, student, tutor.id)
    sessionmaker = create_sessionmaker(store_engine)

    async def send(n: int) -> int:
        async with sessionmaker() as db:
            message, _ = await store.add_message(
                db, conv.id, (student.id, tutor.id)[n % 2], f"m{n}", f"c{n}"
            )
            return message.seq

    seqs = await asyncio.gather(*(send(n) for n in range(40)))
    assert sorted(seqs) == list(range(1, 41))
    rows = await store.messages_page(store_db, conv.id, limit=100)
    assert [m.seq for m, _ in rows] == list(range(1, 41))


async def test_ensure_conversation_for_a_booked_pair(store_db: AsyncSession) -> None:
    student, tutor = await _pair(store_db)
    first = await store.ensure_conversation(store_db, student.id, tutor.id)
    second = await store.ensure_conversation(store_db, student.id, tutor.id)
    assert first.id == second.id
    assert await store.member_ids(store_db, first.id) == sorted([student.id, tutor.id])


async def test_opening_at_the_same_moment_returns_the_other_requests_conversation(
    store_db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    student, tutor = await _pair(store_db)
    first, _ = await store.open_conversation(store_db, student, tutor.id)
    store_db.expunge_all()
    student = await store_db.get(type(student), student.id)
    # The second request looked before the first one committed: it inserts, loses on the
    # unique pair key, rolls back (expiring what it loaded) and returns the existing one.
    real = store.get_conversation_between
    calls = {"n": 0}

    async def stale_first_look(db: AsyncSession, a: int, b: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return None if calls["n"] == 1 else await real(db, a, b)

    monkeypatch.setattr(store, "get_conversation_between", stale_first_look)
    again, created = await store.open_conversation(store_db, student, tutor.id)
    assert (again.id, created) == (first.id, False)
