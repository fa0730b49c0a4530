"""The questions board pages and API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from panda import keys
from panda.errors import ValidationError
from panda.market import questions as qs
from panda.market.tutors import list_subjects
from panda.web.auth import current_user, flash, require_user
from panda.web.forms import read_form, read_json
from panda.web.market_common import int_param
from panda.web.render import NAV_EXTRA_KEY, render

OPENAPI: dict[str, Any] = {
    "/api/questions": {
        "get": {
            "summary": "Questions (filter ?subject=slug); anonymous authors stay hidden",
            "security": [],
            "responses": {"200": {"description": '{"items": [...]}'}},
        },
        "post": {
            "summary": 'Ask ({"subject_id", "title", "body", "anonymous"}); students',
            "responses": {
                "201": {"description": "The question"},
                "403": {"description": "Not a student"},
                "422": {"description": "Invalid"},
            },
        },
    },
    "/api/questions/{question_id}": {
        "get": {
            "summary": "A question with its answers",
            "security": [],
            "responses": {"200": {"description": "Question"}, "404": {"description": "Unknown"}},
        }
    },
    "/api/questions/{question_id}/answers": {
        "post": {
            "summary": 'Answer ({"body"}); approved tutors',
            "responses": {
                "201": {"description": "Answer"},
                "403": {"description": "Not an approved tutor"},
                "422": {"description": "Invalid"},
            },
        }
    },
}


async def board(request: web.Request) -> web.StreamResponse:
    """Questions, newest first, with the ask form for students."""
    subject = request.query.get("subject") or None
    async with request.app[keys.sessionmaker]() as db:
        items = await qs.list_questions(db, subject)
        subjects = await list_subjects(db)
    return render(
        request,
        "questions/board.html",
        {
            "items": items,
            "subjects": subjects,
            "subject": subject,
            "viewer": current_user(request),
            "author_label": qs.author_label,
            "errors": {},
            "form": {},
        },
    )


async def ask_submit(request: web.Request) -> web.StreamResponse:
    """Post a question from the form."""
    user = require_user(request)
    form = await read_form(request)
    try:
        subject_id: object = int(form.get("subject_id", ""))
    except ValueError:
        subject_id = None
    async with request.app[keys.sessionmaker]() as db:
        try:
            question = await qs.ask(
                db,
                user,
                subject_id,
                form.get("title", ""),
                form.get("body", ""),
                form.get("anonymous") == "1",
            )
        except ValidationError as exc:
            items = await qs.list_questions(db, None)
            subjects = await list_subjects(db)
            return render(
                request,
                "questions/board.html",
                {
                    "items": items,
                    "subjects": subjects,
                    "subject": None,
                    "viewer": user,
                    "author_label": qs.author_label,
                    "errors": exc.fields,
                    "form": form,
                },
                status=422,
            )
    flash(request, "Your question is on the board.", "success")
    raise web.HTTPSeeOther(f"/questions/{question.id}")


async def question_page(request: web.Request) -> web.StreamResponse:
    """One question and its answers."""
    question_id = int_param(request.match_info["question_id"], "question")
    viewer = current_user(request)
    async with request.app[keys.sessionmaker]() as db:
        question, subject, author, answers = await qs.get_question(db, question_id)
    return render(
        request,
        "questions/detail.html",
        {
            "q": question,
            "subject": subject,
            "author": qs.author_label(question, author, viewer),
            "answers": answers,
            "viewer": viewer,
            "mine": viewer is not None and viewer.id == question.author_id,
        },
    )


async def answer_submit(request: web.Request) -> web.StreamResponse:
    """Answer from the form."""
    user = require_user(request)
    question_id = int_param(request.match_info["question_id"], "question")
    form = await read_form(request)
    async with request.app[keys.sessionmaker]() as db:
        try:
            await qs.answer(db, question_id, user, form.get("body", ""))
        except ValidationError as exc:
            flash(request, exc.message, "error")
            raise web.HTTPSeeOther(f"/questions/{question_id}") from None
    flash(request, "Answer posted.", "success")
    raise web.HTTPSeeOther(f"/questions/{question_id}")


async def list_api(request: web.Request) -> web.Response:
    """GET/POST /api/questions."""
    viewer = current_user(request)
    if request.method == "POST":
        user = require_user(request)
        data = await read_json(request)
        title, body = data.get("title", ""), data.get("body", "")
        anonymous = data.get("anonymous", False)
        if (
            not isinstance(title, str)
            or not isinstance(body, str)
            or not isinstance(anonymous, bool)
        ):
            raise ValidationError("title and body must be strings, anonymous a boolean.")
        async with request.app[keys.sessionmaker]() as db:
            question = await qs.ask(db, user, data.get("subject_id"), title, body, anonymous)
            q, s, author, answers = await qs.get_question(db, question.id)
        return web.json_response(qs.question_view(q, s, author, user, answers), status=201)
    async with request.app[keys.sessionmaker]() as db:
        items = await qs.list_questions(db, request.query.get("subject") or None)
    return web.json_response(
        {"items": [qs.question_view(q, s, name, viewer, answer_count=n) for q, s, n, name in items]}
    )


async def question_api(request: web.Request) -> web.Response:
    """GET /api/questions/<id>."""
    question_id = int_param(request.match_info["question_id"], "question")
    async with request.app[keys.sessionmaker]() as db:
        q, s, author, answers = await qs.get_question(db, question_id)
    return web.json_response(qs.question_view(q, s, author, current_user(request), answers))


async def answer_api(request: web.Request) -> web.Response:
    """POST /api/questions/<id>/answers."""
    user = require_user(request)
    question_id = int_param(request.match_info["question_id"], "question")
    data = await read_json(request)
    body = data.get("body")
    if not isinstance(body, str):
        raise ValidationError("body must be a string.", fields={"body": "Text."})
    async with request.app[keys.sessionmaker]() as db:
        reply = await qs.answer(db, question_id, user, body)
    return web.json_response(
        {"id": reply.id, "question_id": question_id, "body": reply.body}, status=201
    )


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.setdefault(NAV_EXTRA_KEY, []).append(
        {"href": "/questions", "label": "Questions", "role": ""}
    )
    app.router.add_get("/questions", board, name="questions")
    app.router.add_post("/questions", ask_submit)
    app.router.add_get(r"/questions/{question_id:\d+}", question_page)
    app.router.add_post(r"/questions/{question_id:\d+}/answers", answer_submit)
    app.router.add_get("/api/questions", list_api)
    app.router.add_post("/api/questions", list_api)
    app.router.add_get(r"/api/questions/{question_id:\d+}", question_api)
    app.router.add_post(r"/api/questions/{question_id:\d+}/answers", answer_api)
