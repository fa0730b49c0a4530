"""User queries."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.passwords import hash_password_async
from panda.store.models import User
from panda.store.types import utcnow


def normalise_email(email: str) -> str:
    """The canonical form we store and look up: trimmed, lowercased."""
    return email.strip().lower()


async def get_user_by_email(db: AsyncSession, email: str) -> User | None:
    """The user with this e-mail address, or None."""
    return (
        await db.execute(select(User).where(User.email == normalise_email(email)))
    ).scalar_one_or_none()


async def create_user(
    db: AsyncSession,
    *,
    email: str,
    name: str,
    password: str | None,
    role: str,
    timezone: str = "UTC",
    verified: bool = False,
    tutor_status: str | None = None,
) -> User:
    """Insert a user (flushed, not committed); tutors start `pending` unless told otherwise."""
    if role == "tutor" and tutor_status is None:
        tutor_status = "pending"
    user = User(
        email=normalise_email(email),
        name=name.strip(),
        password_hash=await hash_password_async(password) if password else None,
        role=role,
        timezone=timezone,
        bio="",
        interests=[],
        is_active=True,
        tutor_status=tutor_status if role == "tutor" else None,
        email_verified_at=utcnow() if verified else None,
        password_changed_at=utcnow(),
    )
    db.add(user)
    await db.flush()
    return user


async def count_users(db: AsyncSession) -> int:
    """How many accounts exist."""
    return int((await db.execute(select(func.count(User.id)))).scalar_one())
