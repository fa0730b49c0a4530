"""The questions board: students ask (by name or anonymously), approved tutors answer.

An anonymous question keeps its author for safeguarding, but only admins ever see who it was:
every outward shape goes through `question_view`, which drops the author for everyone else.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.errors import Forbidden, NotFound, ValidationError
from panda.market import notify as notes
from panda.market.availability import iso_utc
from panda.store.models import Answer, Question, Subject, User
from panda.store.types import utcnow


async def ask(
    db: AsyncSession, author: User, subject_id: object, title: str, body: str, anonymous: bool
) -> Question:
    """A student posts a question. Commits."""
    if not author.is_student:
        raise Forbidden("Only students can ask questions.")
    errors: dict[str, str] = {}
    title, body = title.strip(), body.strip()
    if not 5 <= len(title) <= 200:
        errors["title"] = "Write a title of 5 to 200 characters."
    if len(body) > 5000:
        errors["body"] = "At most 5000 characters."
    subject = await db.get(Subject, subject_id) if isinstance(subject_id, int) else None
    if subject is None or not subject.is_active:
        errors["subject_id"] = "Choose a subject."
    if errors:
        raise ValidationError("Please check the question.", fields=errors)
    question = Question(
        subject_id=subject_id,
        author_id=author.id,
        anonymous=anonymous,
        title=title,
        body=body,
        hidden=False,
        created_at=utcnow(),
    )
    db.add(question)
    await db.commit()
    return question


async def answer(db: AsyncSession, question_id: int, tutor: User, body: str) -> Answer:
    """An approved tutor answers. Commits; the asker is notified."""
    if not tutor.is_tutor or tutor.tutor_status != "approved":
        raise Forbidden("Only approved tutors can answer questions.")
    question = await db.get(Question, question_id)
    if question is None or question.hidden:
        raise NotFound("We could not find that question.")
    body = body.strip()
    if not 2 <= len(body) <= 5000:
        raise ValidationError("Write an answer (up to 5000 characters).", fields={"body": "?"})
    reply = Answer(question_id=question_id, tutor_id=tutor.id, body=body, created_at=utcnow())
    db.add(reply)
    await notes.notify(
        db,
        question.author_id,
        "question_answered",
        f"{tutor.name} answered your question",
        f"“{question.title}”",
        link=f"/questions/{question.id}",
    )
    await db.commit()
    return reply


async def list_questions(
    db: AsyncSession, subject_slug: str | None = None, limit: int = 50
) -> list[tuple[Question, Subject, int, str]]:
    """Visible questions (newest first) with subject, answer count and author name."""
    answers = (
        select(func.count(Answer.id)).where(Answer.question_id == Question.id).scalar_subquery()
    )
    stmt = (
        select(Question, Subject, answers, User.name)
        .join(Subject, Subject.id == Question.subject_id)
        .join(User, User.id == Question.author_id)
        .where(Question.hidden.is_(False))
        .order_by(Question.created_at.desc(), Question.id.desc())
        .limit(limit)
    )
    if subject_slug:
        stmt = stmt.where(Subject.slug == subject_slug)
    return [(q, s, int(n), name) for q, s, n, name in (await db.execute(stmt)).all()]


async def get_question(
    db: AsyncSession, question_id: int
) -> tuple[Question, Subject, str, list[tuple[Answer, User]]]:
    """One visible question with its answers (oldest first)."""
    row = (
        await db.execute(
            select(Question, Subject, User.name)
            .join(Subject, Subject.id == Question.subject_id)
            .join(User, User.id == Question.author_id)
            .where(Question.id == question_id, Question.hidden.is_(False))
        )
    ).first()
    if row is None:
        raise NotFound("We could not find that question.")
    answers = (
        await db.execute(
            select(Answer, User)
            .join(User, User.id == Answer.tutor_id)
            .where(Answer.question_id == question_id)
            .order_by(Answer.created_at)
        )
    ).all()
    return row[0], row[1], row[2], [(a, u) for a, u in answers]


def author_label(question: Question, author_name: str, viewer: User | None) -> str:
    """What a viewer sees as the author."""
    if not question.anonymous:
        return author_name
    if viewer is not None and viewer.is_admin:
        return f"{author_name} (anonymous to others)"
    if viewer is not None and viewer.id == question.author_id:
        return "You (anonymous to others)"
    return "Anonymous student"


def question_view(
    question: Question,
    subject: Subject,
    author_name: str,
    viewer: User | None,
    answers: list[tuple[Answer, User]] | None = None,
    answer_count: int | None = None,
) -> dict[str, Any]:
    """The API shape; the author's identity only when not anonymous, or for admins."""
    show = not question.anonymous or (viewer is not None and viewer.is_admin)
    data: dict[str, Any] = {
        "id": question.id,
        "subject": subject.name,
        "subject_slug": subject.slug,
        "title": question.title,
        "body": question.body,
        "anonymous": question.anonymous,
        "author": author_label(question, author_name, viewer),
        "created_at": iso_utc(question.created_at),
        "url": f"/questions/{question.id}",
    }
    if show:
        data["author_id"] = question.author_id
    if viewer is not None and viewer.id == question.author_id:
        data["mine"] = True
    if answer_count is not None:
        data["answers_count"] = answer_count
    if answers is not None:
        data["answers"] = [
            {
                "id": a.id,
                "tutor_id": u.id,
                "tutor_name": u.name,
                "body": a.body,
                "created_at": iso_utc(a.created_at),
                "book_url": f"/tutors/{u.id}#slots",
            }
            for a, u in answers
        ]
    return data
