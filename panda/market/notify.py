"""In-app notifications and their e-mails; the notifications table is the mail outbox."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from panda.mail import Mailer
from panda.store.models import Notification, User
from panda.store.types import utcnow

log = logging.getLogger(__name__)


async def notify(
    db: AsyncSession,
    user_id: int,
    kind: str,
    title: str,
    body: str = "",
    *,
    link: str | None = None,
    booking_id: int | None = None,
    email: bool = True,
) -> Notification:
    """Add a notification in the caller's transaction; its e-mail goes out after commit."""
    note = Notification(
        user_id=user_id,
        kind=kind,
        title=title[:200],
        body=body,
        link=link,
        booking_id=booking_id,
        email_state="queued" if email else "none",
        created_at=utcnow(),
    )
    db.add(note)
    return note


async def unread_count(db: AsyncSession, user_id: int) -> int:
    """How many notifications the user has not read."""
    return int(
        (
            await db.execute(
                select(func.count(Notification.id)).where(
                    Notification.user_id == user_id, Notification.read_at.is_(None)
                )
            )
        ).scalar_one()
    )


async def list_notifications(db: AsyncSession, user_id: int, limit: int = 50) -> list[Notification]:
    """The user's latest notifications, newest first."""
    rows = await db.execute(
        select(Notification)
        .where(Notification.user_id == user_id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(limit)
    )
    return list(rows.scalars())


async def mark_read(db: AsyncSession, user_id: int, notification_id: int | None = None) -> int:
    """Mark one (or every) notification of the user read; returns how many changed."""
    stmt = update(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    if notification_id is not None:
        stmt = stmt.where(Notification.id == notification_id)
    result = await db.execute(stmt.values(read_at=utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def dispatch_mail(
    sessionmaker: async_sessionmaker[AsyncSession],
    mailer: Mailer,
    base_url: str,
    limit: int = 50,
    on_claimed: Callable[[Notification], Awaitable[None]] | None = None,
) -> int:
    """Send queued notification e-mails; each is claimed with a conditional update first, so
    several processes never send the same one twice (`on_claimed` hears about each once).
    Returns how many were sent."""
    async with sessionmaker() as db:
        ids = list(
            (
                await db.execute(
                    select(Notification.id)
                    .where(Notification.email_state == "queued")
                    .order_by(Notification.id)
                    .limit(limit)
                )
            ).scalars()
        )
    sent = 0
    for nid in ids:
        async with sessionmaker() as db:
            claimed = await db.execute(
                update(Notification)
                .where(Notification.id == nid, Notification.email_state == "queued")
                .values(email_state="sending")
            )
            await db.commit()
            if not claimed.rowcount:  # type: ignore[attr-defined]
                continue
            row = (
                await db.execute(
                    select(Notification, User)
                    .join(User, User.id == Notification.user_id)
                    .where(Notification.id == nid)
                )
            ).one()
            note, user = row
            if on_claimed is not None:
                try:
                    await on_claimed(note)
                except Exception:
                    log.exception("live push of notification %s failed", nid)
            body = note.body
            if note.link:
                body = f"{body}\n\n{base_url}{note.link}" if body else f"{base_url}{note.link}"
            body += "\n\nYou receive this because you have an account on Panda Professor."
            ok = user.is_active and await mailer.send(user.email, note.title, body)
            await db.execute(
                update(Notification)
                .where(Notification.id == nid)
                .values(email_state="sent" if ok else "failed")
            )
            await db.commit()
            sent += int(bool(ok))
    return sent
