"""The audit log: every admin action, written in the same transaction as the action."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.store.models import AuditEntry, User

# Human labels for the audit page.
ACTIONS = {
    "tutor.approve": "Approved tutor",
    "tutor.reject": "Rejected tutor",
    "user.invite": "Invited user",
    "user.deactivate": "Deactivated user",
    "user.reactivate": "Reactivated user",
    "user.role": "Changed role",
    "user.resend_invite": "Re-sent invitation",
}


async def record(
    db: AsyncSession,
    actor: User | None,
    action: str,
    target: User | None = None,
    *,
    target_type: str | None = None,
    target_id: str | int | None = None,
    detail: dict[str, Any] | None = None,
    **extra: Any,
) -> AuditEntry:
    """Add one entry (flushed with the caller's transaction); `detail` and keywords are merged."""
    data: dict[str, Any] = {**(detail or {}), **extra}
    if target is not None:
        target_type, target_id = "user", target.id
        data.setdefault("email", target.email)
    entry = AuditEntry(
        actor_id=actor.id if actor else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        detail=data,
    )
    db.add(entry)
    await db.flush()
    return entry


def label(action: str) -> str:
    """A readable name for an action, including other areas' ("recording.settings")."""
    if action in ACTIONS:
        return ACTIONS[action]
    return action.replace(".", ": ").replace("_", " ").capitalize()


async def known_actions(db: AsyncSession) -> list[str]:
    """Every action name present in the log, plus ours."""
    rows = (await db.execute(select(AuditEntry.action).distinct())).scalars().all()
    return sorted(set(ACTIONS) | {str(r) for r in rows})


async def list_entries(
    db: AsyncSession,
    *,
    action: str = "",
    target_id: str = "",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[tuple[AuditEntry, User | None]], int]:
    """Entries newest first with their actors, and the total count."""
    conditions = []
    if action:
        conditions.append(AuditEntry.action == action)
    if target_id:
        conditions.append(AuditEntry.target_type == "user")
        conditions.append(AuditEntry.target_id == target_id)
    total = (await db.execute(select(func.count(AuditEntry.id)).where(*conditions))).scalar_one()
    rows = (
        await db.execute(
            select(AuditEntry, User)
            .outerjoin(User, User.id == AuditEntry.actor_id)
            .where(*conditions)
            .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return [(entry, actor) for entry, actor in rows], int(total)
