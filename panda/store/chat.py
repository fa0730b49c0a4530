"""Chat queries: conversations, messages (numbered per conversation), read positions, reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from panda.errors import Forbidden, NotFound, ValidationError
from panda.store.models import (
    AuditEntry,
    Booking,
    ChatMessage,
    ChatReport,
    Conversation,
    ConversationMember,
    User,
)
from panda.store.types import utcnow


def pair_key(a: int, b: int) -> str:
    """The unique key of the conversation between users `a` and `b` (order does not matter)."""
    low, high = sorted((a, b))
    return f"{low}:{high}"


@dataclass
class ConversationSummary:
    """One row of a user's conversation list."""

    conversation: Conversation
    other: User
    unread: int
    last_message: ChatMessage | None
    other_read_seq: int


async def _have_booking(db: AsyncSession, student_id: int, tutor_id: int) -> bool:
    found = await db.execute(
        select(Booking.id)
        .where(Booking.student_id == student_id, Booking.tutor_id == tutor_id)
        .limit(1)
    )
    return found.first() is not None


async def get_conversation_between(db: AsyncSession, a: int, b: int) -> Conversation | None:
    """The conversation between two users, if it exists."""
    return (
        await db.execute(select(Conversation).where(Conversation.pair_key == pair_key(a, b)))
    ).scalar_one_or_none()


async def open_conversation(db: AsyncSession, me: User, other_id: int) -> tuple[Conversation, bool]:
    """The conversation between `me` and `other_id`, created once; (conversation, created).

    Conversations join a student and a tutor: a student may write to any approved tutor, a tutor
    to a student they have a booking with. Commits when it creates.
    """
    if other_id == me.id:
        raise ValidationError("You cannot message yourself.", fields={"user_id": "That is you."})
    other = await db.get(User, other_id)
    if other is None or not other.is_active:
        raise NotFound("There is no such user.")
    # Plain ids: a rollback below expires the loaded rows.
    me_id, other_id = me.id, other.id
    existing = await get_conversation_between(db, me_id, other_id)
    if existing is not None:
        return existing, False
    if me.is_student and other.is_tutor:
        if other.tutor_status != "approved":
            raise Forbidden("This tutor cannot receive messages yet.")
    elif me.is_tutor and other.is_student:
        if not await _have_booking(db, other.id, me.id):
            raise Forbidden("You can message students once they have booked a session with you.")
    else:
        raise Forbidden("Conversations are between a student and a tutor.")
    conversation = Conversation(pair_key=pair_key(me_id, other_id), last_seq=0)
    db.add(conversation)
    try:
        await db.flush()
        db.add_all(
            [
                ConversationMember(conversation_id=conversation.id, user_id=me_id),
                ConversationMember(conversation_id=conversation.id, user_id=other_id),
            ]
        )
        await db.commit()
    except IntegrityError:
        # Both opened it at the same moment: the other request created it.
        await db.rollback()
        existing = await get_conversation_between(db, me_id, other_id)
        if existing is None:
            raise
        return existing, False
    return conversation, True


async def ensure_conversation(db: AsyncSession, student_id: int, tutor_id: int) -> Conversation:
    """The conversation of a booked pair, created if needed (no rule checks: the caller knows
    the two are a student and a tutor with a booking). Commits when it creates."""
    existing = await get_conversation_between(db, student_id, tutor_id)
    if existing is not None:
        return existing
    conversation = Conversation(pair_key=pair_key(student_id, tutor_id), last_seq=0)
    db.add(conversation)
    try:
        await db.flush()
        db.add_all(
            [
                ConversationMember(conversation_id=conversation.id, user_id=student_id),
                ConversationMember(conversation_id=conversation.id, user_id=tutor_id),
            ]
        )
        await db.commit()
    except IntegrityError:
        await db.rollback()
        existing = await get_conversation_between(db, student_id, tutor_id)
        if existing is None:
            raise
        return existing
    return conversation


async def member_ids(db: AsyncSession, conversation_id: int) -> list[int]:
    """The ids of the users in a conversation."""
    rows = await db.execute(
        select(ConversationMember.user_id).where(
            ConversationMember.conversation_id == conversation_id
        )
    )
    return sorted(int(r) for r in rows.scalars())


async def conversation_for(
    db: AsyncSession, conversation_id: int, user_id: int
) -> tuple[Conversation, ConversationMember]:
    """The conversation and `user_id`'s membership; NotFound / Forbidden otherwise."""
    conversation = await db.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound("There is no such conversation.")
    member = await db.get(ConversationMember, (conversation_id, user_id))
    if member is None:
        raise Forbidden("You are not part of this conversation.")
    return conversation, member


async def other_member(db: AsyncSession, conversation_id: int, user_id: int) -> tuple[User, int]:
    """The other participant and how far they have read."""
    row = (
        await db.execute(
            select(User, ConversationMember.last_read_seq)
            .join(ConversationMember, ConversationMember.user_id == User.id)
            .where(
                ConversationMember.conversation_id == conversation_id,
                ConversationMember.user_id != user_id,
            )
        )
    ).first()
    if row is None:
        raise NotFound("There is no such conversation.")
    return row[0], int(row[1])


async def list_conversations(db: AsyncSession, user_id: int) -> list[ConversationSummary]:
    """`user_id`'s conversations, most recent activity first."""
    mine = aliased(ConversationMember)
    theirs = aliased(ConversationMember)
    rows = await db.execute(
        select(Conversation, mine.last_read_seq, User, theirs.last_read_seq, ChatMessage)
        .join(mine, and_(mine.conversation_id == Conversation.id, mine.user_id == user_id))
        .join(theirs, and_(theirs.conversation_id == Conversation.id, theirs.user_id != user_id))
        .join(User, User.id == theirs.user_id)
        .outerjoin(
            ChatMessage,
            and_(
                ChatMessage.conversation_id == Conversation.id,
                ChatMessage.seq == Conversation.last_seq,
            ),
        )
        .order_by(
            func.coalesce(Conversation.last_message_at, Conversation.created_at).desc(),
            Conversation.id.desc(),
        )
    )
    return [
        ConversationSummary(
            conversation=conv,
            other=other,
            unread=max(0, conv.last_seq - int(read)),
            last_message=last,
            other_read_seq=int(other_read),
        )
        for conv, read, other, other_read, last in rows.all()
    ]


async def unread_total(db: AsyncSession, user_id: int) -> int:
    """Unread messages over all of `user_id`'s conversations."""
    value = await db.execute(
        select(func.coalesce(func.sum(Conversation.last_seq - ConversationMember.last_read_seq), 0))
        .join(ConversationMember, ConversationMember.conversation_id == Conversation.id)
        .where(ConversationMember.user_id == user_id)
    )
    return int(value.scalar_one())


async def unread_totals(db: AsyncSession, user_ids: list[int]) -> dict[int, int]:
    """Unread messages over all conversations, for several users in one query."""
    rows = await db.execute(
        select(
            ConversationMember.user_id,
            func.coalesce(func.sum(Conversation.last_seq - ConversationMember.last_read_seq), 0),
        )
        .join(Conversation, Conversation.id == ConversationMember.conversation_id)
        .where(ConversationMember.user_id.in_(user_ids))
        .group_by(ConversationMember.user_id)
    )
    totals = {uid: 0 for uid in user_ids}
    totals.update({int(uid): int(total) for uid, total in rows.all()})
    return totals


async def find_by_client_id(db: AsyncSession, sender_id: int, client_id: str) -> ChatMessage | None:
    """A message this sender already sent with this client id (a retried send)."""
    return (
        await db.execute(
            select(ChatMessage).where(
                ChatMessage.sender_id == sender_id, ChatMessage.client_id == client_id
            )
        )
    ).scalar_one_or_none()


async def add_message(
    db: AsyncSession, conversation_id: int, sender_id: int, body: str, client_id: str | None
) -> tuple[ChatMessage, dict[int, int]]:
    """Store a message and commit; (message, unread count per member after it).

    The first statement takes the conversation row's write lock (PostgreSQL row lock, SQLite
    database write lock), so sequence numbers are handed out and committed in order. Sending
    marks the conversation read for the sender.
    """
    now = utcnow()
    seq = (
        await db.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_seq=Conversation.last_seq + 1, last_message_at=now)
            .returning(Conversation.last_seq)
        )
    ).scalar_one()
    message = ChatMessage(
        conversation_id=conversation_id,
        seq=int(seq),
        sender_id=sender_id,
        body=body,
        client_id=client_id,
        created_at=now,
    )
    db.add(message)
    await db.flush()
    await db.execute(
        update(ConversationMember)
        .where(
            ConversationMember.conversation_id == conversation_id,
            ConversationMember.user_id == sender_id,
        )
        .values(last_read_seq=int(seq), last_read_at=now)
    )
    reads = await db.execute(
        select(ConversationMember.user_id, ConversationMember.last_read_seq).where(
            ConversationMember.conversation_id == conversation_id
        )
    )
    unread = {int(uid): max(0, int(seq) - int(read)) for uid, read in reads.all()}
    await db.commit()
    return message, unread


async def messages_page(
    db: AsyncSession,
    conversation_id: int,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[tuple[ChatMessage, str]]:
    """Messages with their sender's name, oldest first.

    `before`: the `limit` newest messages older than that seq (scrolling back); `after`: the
    `limit` oldest newer than that seq (catching up); neither: the newest `limit`.
    """
    stmt = (
        select(ChatMessage, User.name)
        .join(User, User.id == ChatMessage.sender_id)
        .where(ChatMessage.conversation_id == conversation_id)
    )
    if after is not None:
        stmt = stmt.where(ChatMessage.seq > after).order_by(ChatMessage.seq.asc()).limit(limit)
        return [(m, str(n)) for m, n in (await db.execute(stmt)).all()]
    if before is not None:
        stmt = stmt.where(ChatMessage.seq < before)
    stmt = stmt.order_by(ChatMessage.seq.desc()).limit(limit)
    rows = [(m, str(n)) for m, n in (await db.execute(stmt)).all()]
    rows.reverse()
    return rows


async def mark_read(db: AsyncSession, conversation_id: int, user_id: int, seq: int) -> int:
    """Move `user_id`'s read position forward to `seq` (never back, never past the end)."""
    conversation, member = await conversation_for(db, conversation_id, user_id)
    target = min(max(0, seq), conversation.last_seq)
    if target > member.last_read_seq:
        await db.execute(
            update(ConversationMember)
            .where(
                ConversationMember.conversation_id == conversation_id,
                ConversationMember.user_id == user_id,
                ConversationMember.last_read_seq < target,
            )
            .values(last_read_seq=target, last_read_at=utcnow())
        )
        await db.commit()
        return target
    return member.last_read_seq


async def get_message(db: AsyncSession, message_id: int) -> ChatMessage | None:
    """A message by id."""
    return await db.get(ChatMessage, message_id)


async def report_message(
    db: AsyncSession, message_id: int, reporter_id: int, reason: str
) -> tuple[ChatReport, bool]:
    """File (once per reporter) a report on a message the reporter can see; (report, created)."""
    message = await db.get(ChatMessage, message_id)
    if message is None:
        raise NotFound("There is no such message.")
    await conversation_for(db, message.conversation_id, reporter_id)
    if message.sender_id == reporter_id:
        raise ValidationError("You cannot report your own message.")
    existing = (
        await db.execute(
            select(ChatReport).where(
                ChatReport.message_id == message_id, ChatReport.reporter_id == reporter_id
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    report = ChatReport(
        message_id=message_id,
        conversation_id=message.conversation_id,
        reporter_id=reporter_id,
        reason=reason,
        status="open",
    )
    db.add(report)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        again = (
            await db.execute(
                select(ChatReport).where(
                    ChatReport.message_id == message_id, ChatReport.reporter_id == reporter_id
                )
            )
        ).scalar_one()
        return again, False
    return report, True


@dataclass
class ReportRow:
    """A report with what an admin needs to judge it."""

    report: ChatReport
    message: ChatMessage
    sender: User
    reporter: User


async def list_reports(db: AsyncSession, status: str = "open", limit: int = 200) -> list[ReportRow]:
    """Reports in a status, oldest first (a queue)."""
    sender = aliased(User)
    reporter = aliased(User)
    rows = await db.execute(
        select(ChatReport, ChatMessage, sender, reporter)
        .join(ChatMessage, ChatMessage.id == ChatReport.message_id)
        .join(sender, sender.id == ChatMessage.sender_id)
        .join(reporter, reporter.id == ChatReport.reporter_id)
        .where(ChatReport.status == status)
        .order_by(ChatReport.created_at.asc(), ChatReport.id.asc())
        .limit(limit)
    )
    return [ReportRow(r, m, s, p) for r, m, s, p in rows.all()]


async def count_open_reports(db: AsyncSession) -> int:
    """How many reports wait for review."""
    return int(
        (
            await db.execute(select(func.count(ChatReport.id)).where(ChatReport.status == "open"))
        ).scalar_one()
    )


async def conversation_has_report(db: AsyncSession, conversation_id: int) -> bool:
    """True when someone reported a message in this conversation (admins may then read it)."""
    found = await db.execute(
        select(ChatReport.id).where(ChatReport.conversation_id == conversation_id).limit(1)
    )
    return found.first() is not None


async def reported_message_ids(db: AsyncSession, conversation_id: int) -> set[int]:
    """Ids of the messages of a conversation that someone reported."""
    rows = await db.execute(
        select(ChatReport.message_id).where(ChatReport.conversation_id == conversation_id)
    )
    return {int(r) for r in rows.scalars()}


async def resolve_report(
    db: AsyncSession, report_id: int, admin_id: int, action: str
) -> ChatReport:
    """Close a report: `dismiss` it, or `hide` the message (and close every report on it)."""
    report = await db.get(ChatReport, report_id)
    if report is None:
        raise NotFound("There is no such report.")
    if action not in ("dismiss", "hide"):
        raise ValidationError("Choose dismiss or hide.", fields={"action": "Unknown action."})
    now = utcnow()
    if action == "hide":
        await db.execute(
            update(ChatMessage)
            .where(ChatMessage.id == report.message_id, ChatMessage.hidden_at.is_(None))
            .values(hidden_at=now)
        )
        targets = or_(ChatReport.id == report.id, ChatReport.message_id == report.message_id)
        status = "actioned"
    else:
        targets = ChatReport.id == report.id
        status = "dismissed"
    await db.execute(
        update(ChatReport)
        .where(targets, ChatReport.status == "open")
        .values(status=status, resolved_by_id=admin_id, resolved_at=now)
    )
    add_audit(
        db,
        admin_id,
        f"chat.report_{status}",
        "chat_report",
        report.id,
        {"message_id": report.message_id, "conversation_id": report.conversation_id},
    )
    await db.commit()
    await db.refresh(report)
    return report


def add_audit(
    db: AsyncSession,
    actor_id: int | None,
    action: str,
    target_type: str,
    target_id: int | str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record an admin action in the audit log (committed with the caller's transaction)."""
    db.add(
        AuditEntry(
            actor_id=actor_id,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            detail=detail or {},
            created_at=utcnow(),
        )
    )


def message_json(message: ChatMessage, sender_name: str) -> dict[str, Any]:
    """The JSON form of a message (API, websocket, cache); hidden messages carry no text."""
    created: datetime = message.created_at
    hidden = message.hidden_at is not None
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "sender_name": sender_name,
        "text": "" if hidden else message.body,
        "hidden": hidden,
        "client_id": message.client_id,
        "created_at": created.isoformat(),
    }
