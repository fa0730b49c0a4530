"""Scheduler jobs run exactly once (markers), across restarts and concurrent runs; mail goes out
once; .ics output parses back with stable UIDs, UTC times, SEQUENCE and alarms."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from icalendar import Calendar
from sqlalchemy import func, select

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.market import booking as bk
from panda.market import ics
from panda.market.scheduler import SCHEDULER_TASK, tick, wake
from panda.store.models import Booking, Notification, User
from tests.conftest import UserFactory
from tests.helpers import outbox
from tests.market_support import make_tutor_ready, set_status, slots_of

RULES = bk.BookingRules()


@pytest.fixture
def app(settings: Settings) -> web.Application:
    """The app without its background loop: these tests drive `tick` themselves."""
    return create_app(settings.with_(extra={"scheduler": False}))


async def _booked(client: TestClient, make_user: UserFactory, days: float = 0.8) -> Booking:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor, days_ahead=days, span_days=0.5))[0][0]
    async with client.app[keys.sessionmaker]() as db:
        b = await bk.create_request(
            db, student=student, tutor_id=tutor.id, start=start, subject="Algebra", rules=RULES
        )
        t = await db.get(User, tutor.id)
        assert t is not None
        await bk.accept(db, b, t)
        return b


async def _kinds(client: TestClient, kind: str) -> int:
    async with client.app[keys.sessionmaker]() as db:
        return int(
            (
                await db.execute(
                    select(func.count(Notification.id)).where(Notification.kind == kind)
                )
            ).scalar_one()
        )


@pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)
async def test_reminders_once_even_when_ticks_race(
    client: TestClient, make_user: UserFactory
) -> None:
    b = await _booked(client, make_user)
    now = b.start_at - timedelta(hours=20)
    await asyncio.gather(*[tick(client.app, now) for _ in range(4)])
    assert await _kinds(client, "reminder_24h") == 2  # student and tutor
    assert await _kinds(client, "reminder_15m") == 0
    await tick(client.app, b.start_at - timedelta(minutes=10))
    await tick(client.app, b.start_at - timedelta(minutes=5))
    assert await _kinds(client, "reminder_24h") == 2
    assert await _kinds(client, "reminder_15m") == 2
    subjects = [m["Subject"] for m in outbox(client.app[keys.settings].data_dir)]
    assert sum("Reminder" in s for s in subjects) == 4


async def test_markers_survive_a_restart(
    settings: Settings, client: TestClient, make_user: UserFactory, aiohttp_client
) -> None:
    b = await _booked(client, make_user)
    now = b.start_at - timedelta(hours=2)
    await tick(client.app, now)
    # A second server process on the same database: nothing is sent again.
    other = await aiohttp_client(create_app(settings.with_(extra={"scheduler": False})))
    await tick(other.app, now)
    assert await _kinds(client, "reminder_24h") == 2


async def test_expiry_and_review_invitation_by_tick(
    client: TestClient, make_user: UserFactory
) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor, days_ahead=4))[0][0]
    async with client.app[keys.sessionmaker]() as db:
        b = await bk.create_request(
            db, student=student, tutor_id=tutor.id, start=start, subject="Physics", rules=RULES
        )
    assert b.expires_at is not None
    result = await tick(client.app, b.expires_at + timedelta(minutes=1))
    assert result["expired"] == 1
    assert await _kinds(client, "request_expired") == 2
    await set_status(client.app, b.id, "completed")
    await tick(client.app, b.end_at + timedelta(minutes=5))
    await tick(client.app, b.end_at + timedelta(minutes=6))
    assert await _kinds(client, "review_invitation") == 1
    mails = outbox(client.app[keys.settings].data_dir)
    assert any("How was your Physics session" in m["Subject"] for m in mails)
    assert any("New session request" in m["Subject"] for m in mails)


async def test_ics_round_trip(client: TestClient, make_user: UserFactory) -> None:
    b = await _booked(client, make_user, days=2)
    base = "http://127.0.0.1:8080"
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(Booking, b.id)
        assert row is not None
        users = await bk.people(db, [row])
        viewer = users[row.student_id]
        first = Calendar.from_ical(ics.calendar_bytes([row], users, viewer, base, "x"))
        ev = next(iter(first.walk("VEVENT")))
        assert ev.decoded("DTSTART") == row.start_at
        assert ev.decoded("DTSTART").tzinfo is not None
        assert ev.decoded("DTSTART").utcoffset() == timedelta(0)
        assert ev["UID"] == f"booking-{row.id}@127.0.0.1"
        seq1 = int(ev["SEQUENCE"])
        alarms = [c for c in ev.walk("VALARM")]
        assert {a.decoded("TRIGGER") for a in alarms} == {
            timedelta(minutes=-15),
            timedelta(hours=-24),
        }
        tutor = users[row.tutor_id]
        slots = await slots_of(client.app, tutor, days_ahead=3, span_days=1)
        await bk.propose_new_time(db, row, viewer, slots[0][0])
        await bk.answer_new_time(db, row, tutor, True, RULES)
        second = Calendar.from_ical(ics.calendar_bytes([row], users, viewer, base, "x"))
        ev2 = next(iter(second.walk("VEVENT")))
        assert ev2["UID"] == ev["UID"]
        assert int(ev2["SEQUENCE"]) > seq1
        assert ev2.decoded("DTSTART") == slots[0][0].astimezone(UTC)
        await bk.cancel(db, row, viewer, "", RULES)
        third = Calendar.from_ical(ics.calendar_bytes([row], users, viewer, base, "x"))
        ev3 = next(iter(third.walk("VEVENT")))
        assert str(ev3["STATUS"]) == "CANCELLED" and int(ev3["SEQUENCE"]) > int(ev2["SEQUENCE"])


async def test_background_scheduler_runs_in_the_server(
    settings: Settings, aiohttp_client, make_user: UserFactory
) -> None:
    live = await aiohttp_client(create_app(settings.with_(extra={"scheduler_interval": 0.05})))
    assert SCHEDULER_TASK in live.app and not live.app[SCHEDULER_TASK].done()
    async with live.app[keys.sessionmaker]() as db:
        from panda.store.users import create_user

        tutor = await create_user(
            db,
            email="bt@example.test",
            name="T",
            password=None,
            role="tutor",
            verified=True,
            tutor_status="approved",
        )
        student = await create_user(
            db, email="bs@example.test", name="S", password=None, role="student", verified=True
        )
        await db.commit()
    await make_tutor_ready(live.app, tutor)
    start = (await slots_of(live.app, tutor, days_ahead=2))[0][0]
    async with live.app[keys.sessionmaker]() as db:
        b = await bk.create_request(
            db, student=student, tutor_id=tutor.id, start=start, subject="Algebra", rules=RULES
        )
        row = await db.get(Booking, b.id)
        assert row is not None
        row.expires_at = row.created_at - timedelta(minutes=1)
        await db.commit()
    wake(live.app)
    for _ in range(200):  # the loop wakes every 50 ms; wait for its effect (at most 10 s)
        async with live.app[keys.sessionmaker]() as db:
            status = (
                await db.execute(select(Booking.status).where(Booking.id == b.id))
            ).scalar_one()
        if status == "expired":
            break
        await asyncio.sleep(0.05)
    assert status == "expired"


class _Node:
    """One process's view of a shared key/value store (as two processes on one Redis)."""

    def __init__(self, store: object, node_id: str) -> None:
        self.node_id = node_id
        self.store = store

    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        return await self.store.set_if_absent(key, value, ttl=ttl)  # type: ignore[attr-defined]

    async def get(self, key: str) -> str | None:
        return await self.store.get(key)  # type: ignore[attr-defined]

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self.store.set(key, value, ttl=ttl)  # type: ignore[attr-defined]


async def test_bus_lease_has_one_holder() -> None:
    from panda.bus.memory import MemoryBus
    from panda.market.scheduler import BusLease

    store = MemoryBus(node_id="store")
    first, second = BusLease(_Node(store, "a")), BusLease(_Node(store, "b"))
    assert await first.acquire("scheduler", 30) is True
    assert await first.acquire("scheduler", 30) is True  # the holder renews
    assert await second.acquire("scheduler", 30) is False
    await store.delete("lease:scheduler")  # the holder died and its key expired
    assert await second.acquire("scheduler", 30) is True
    assert await first.acquire("scheduler", 30) is False


async def test_notifications_are_pushed_to_open_tabs(
    client: TestClient, make_user: UserFactory
) -> None:
    from panda.bus import BUS

    tutor = await make_user("tutor")
    await make_tutor_ready(client.app, tutor)
    sub = await client.app[BUS].subscribe(f"user:{tutor.id}")
    try:
        student = await make_user("student")
        start = (await slots_of(client.app, tutor))[0][0]
        async with client.app[keys.sessionmaker]() as db:
            await bk.create_request(
                db, student=student, tutor_id=tutor.id, start=start, subject="Algebra", rules=RULES
            )
        await tick(client.app)
        event = await asyncio.wait_for(sub.get(), timeout=10)
        assert event["type"] == "notification" and "New session request" in event["title"]
    finally:
        await sub.close()
