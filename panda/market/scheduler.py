"""The background scheduler: expires requests, sends reminders and review invitations.

Exactly once, even across restarts and with several processes: every once-only job inserts a
`sent_markers` row with a unique key in the same transaction as its notifications, so a second
run (another process, or after a crash) hits the unique key and rolls back. Expiry is a
conditional UPDATE. A `Lease` only decides who does the work (to avoid wasted effort); it is not
needed for correctness. With the app's bus (Redis when configured) one node holds the lease
(`BusLease`: SET NX with a TTL, renewed each tick); without a bus every process runs the jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from panda import keys
from panda.bus import BUS as BUS_KEY
from panda.market import notify as notes
from panda.market.availability import zone_of
from panda.market.booking import expire_due
from panda.market.tutors import rebuild_windows
from panda.store.models import Booking, Notification, SentMarker, TutorProfile, User
from panda.store.types import utcnow

log = logging.getLogger(__name__)
TICK_SECONDS = 30.0
REMINDERS = (("24h", timedelta(hours=24)), ("15m", timedelta(minutes=15)))


class Lease(Protocol):
    """Who runs the scheduler right now."""

    async def acquire(self, name: str, ttl: float) -> bool:
        """True if this process holds `name` for the next `ttl` seconds."""
        ...


class LocalLease:
    """One process: always the holder."""

    async def acquire(self, name: str, ttl: float) -> bool:
        """Always granted."""
        return True


class BusLease:
    """Several processes: the holder is whoever set the key first (SET NX with a TTL on the
    bus, i.e. Redis when configured) and renews it each tick; others skip the work until the
    key expires. Correctness never depends on it (markers and conditional updates do that)."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus

    async def acquire(self, name: str, ttl: float) -> bool:
        """True when this node holds (or just took, or renewed) the lease."""
        key = f"lease:{name}"
        me = str(self.bus.node_id)
        try:
            if await self.bus.set_if_absent(key, me, ttl=ttl):
                return True
            if await self.bus.get(key) == me:
                await self.bus.set(key, me, ttl=ttl)
                return True
        except Exception:
            log.warning("lease %s unavailable; running the scheduler anyway", name)
            return True
        return False


async def _once(db: AsyncSession, key: str) -> bool:
    """Insert the marker (flush); False when it exists (the job ran already)."""
    db.add(SentMarker(key=key, created_at=utcnow()))
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        return False
    return True


def _local(value: datetime, user: User) -> str:
    return value.astimezone(zone_of(user.timezone)).strftime("%a %d %b, %H:%M %Z")


async def send_reminders(sessionmaker: async_sessionmaker[AsyncSession], now: datetime) -> int:
    """Remind both sides 24 h and 15 min before each scheduled session, once each."""
    sent = 0
    for label, lead in REMINDERS:
        async with sessionmaker() as db:
            rows = (
                (
                    await db.execute(
                        select(Booking).where(
                            Booking.status == "scheduled",
                            Booking.start_at > now,
                            Booking.start_at <= now + lead,
                        )
                    )
                )
                .scalars()
                .all()
            )
        for booking in rows:
            # The start time is part of the key: a moved session gets fresh reminders.
            key = f"reminder:{label}:{booking.id}:{int(booking.start_at.timestamp())}"
            async with sessionmaker() as db:
                if not await _once(db, key):
                    continue
                users = {
                    u.id: u
                    for u in (
                        await db.execute(
                            select(User).where(User.id.in_((booking.student_id, booking.tutor_id)))
                        )
                    ).scalars()
                }
                for uid, user in users.items():
                    other = users.get(
                        booking.tutor_id if uid == booking.student_id else booking.student_id
                    )
                    await notes.notify(
                        db,
                        uid,
                        f"reminder_{label}",
                        f"Reminder: {booking.subject} "
                        + ("tomorrow" if label == "24h" else "in 15 minutes"),
                        f"{booking.subject} with {other.name if other else ''} at "
                        f"{_local(booking.start_at, user)}. Join from your dashboard.",
                        link=f"/sessions/{booking.id}/call",
                        booking_id=booking.id,
                    )
                await db.commit()
                sent += 1
    return sent


async def send_review_invitations(
    sessionmaker: async_sessionmaker[AsyncSession], now: datetime
) -> int:
    """Invite the student to review each completed session, once."""
    sent = 0
    async with sessionmaker() as db:
        rows = (
            await db.execute(
                select(Booking.id, Booking.student_id, Booking.subject).where(
                    Booking.status == "completed", Booking.end_at > now - timedelta(days=14)
                )
            )
        ).all()
    for bid, student_id, subject in rows:
        async with sessionmaker() as db:
            if not await _once(db, f"review-invite:{bid}"):
                continue
            await notes.notify(
                db,
                student_id,
                "review_invitation",
                f"How was your {subject} session?",
                "Rate it from 1 to 5 and help other students choose.",
                link=f"/bookings/{bid}#review",
                booking_id=bid,
            )
            await db.commit()
            sent += 1
    return sent


async def refresh_windows(sessionmaker: async_sessionmaker[AsyncSession], now: datetime) -> int:
    """Roll every tutor's search windows forward, once a day (marker per day)."""
    async with sessionmaker() as db:
        if not await _once(db, f"windows:{now.date().isoformat()}"):
            return 0
        await db.commit()
        ids = list((await db.execute(select(TutorProfile.user_id))).scalars())
    for tid in ids:
        async with sessionmaker() as db:
            tutor = await db.get(User, tid)
            if tutor is not None:
                await rebuild_windows(db, tutor, now)
                await db.commit()
    return len(ids)


async def tick(app: web.Application, now: datetime | None = None) -> dict[str, int]:
    """One pass of every job; safe to run concurrently in several processes."""
    now = now or utcnow()
    sm = app[keys.sessionmaker]
    async with sm() as db:
        expired = await expire_due(db, now)
    result = {
        "expired": expired,
        "reminders": await send_reminders(sm, now),
        "review_invitations": await send_review_invitations(sm, now),
        "windows": await refresh_windows(sm, now),
    }
    settings = app[keys.settings]

    async def push(note: Notification) -> None:
        # Open tabs refresh their navbar badge at once (through the bus, so any node).
        from panda.web.live import publish_to_user

        await publish_to_user(
            app, note.user_id, {"type": "notification", "title": note.title, "link": note.link}
        )

    result["mails"] = await notes.dispatch_mail(
        sm, app[keys.mailer], settings.base_url, on_claimed=push if BUS_KEY in app else None
    )
    return result


SCHEDULER_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("market_scheduler_task")
SCHEDULER_WAKE: web.AppKey[asyncio.Event] = web.AppKey("market_scheduler_wake")
SCHEDULER_LEASE: web.AppKey[Lease] = web.AppKey("market_scheduler_lease")


def wake(app: web.Application) -> None:
    """Run the scheduler soon (after a request queued mail)."""
    event = app.get(SCHEDULER_WAKE)
    if event is not None:
        event.set()


async def _loop(app: web.Application, interval: float) -> None:
    wake_event = app[SCHEDULER_WAKE]
    lease = app[SCHEDULER_LEASE]
    while True:
        try:
            if await lease.acquire("market-scheduler", interval * 3):
                await tick(app)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("market scheduler tick failed")
        try:
            await asyncio.wait_for(wake_event.wait(), timeout=interval)
        except TimeoutError:
            pass
        wake_event.clear()


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start the scheduler task with the app, cancel it on shutdown."""
    settings = app[keys.settings]
    interval = float(settings.extra.get("scheduler_interval", TICK_SECONDS))
    app[SCHEDULER_WAKE] = asyncio.Event()
    if SCHEDULER_LEASE not in app:
        from panda.bus import BUS

        bus = app.get(BUS)
        app[SCHEDULER_LEASE] = BusLease(bus) if bus is not None else LocalLease()
    enabled = settings.extra.get("scheduler", True)
    task = asyncio.create_task(_loop(app, interval)) if enabled else None
    if task is not None:
        app[SCHEDULER_TASK] = task
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
