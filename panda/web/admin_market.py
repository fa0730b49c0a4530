"""Admin pages of the marketplace: sessions, review moderation, subjects, analytics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from markupsafe import Markup
from sqlalchemy import func, select, update

from panda import keys
from panda.errors import ValidationError
from panda.market import analytics
from panda.market import booking as bk
from panda.market import reviews as rv
from panda.market.availability import iso_utc
from panda.market.tutors import list_subjects, slugify
from panda.store.models import BOOKING_STATUSES, Booking, Review, Subject, TutorSubject, User
from panda.store.types import utcnow
from panda.web.auth import flash, require_role
from panda.web.forms import read_form, read_json
from panda.web.market_common import int_param
from panda.web.render import render

PAGE = 50
OPENAPI: dict[str, Any] = {
    "/api/admin/sessions": {
        "get": {
            "summary": "All sessions, filterable by status (admins)",
            "responses": {
                "200": {"description": '{"items": [...]}'},
                "403": {"description": "Not an admin"},
            },
        }
    },
    "/api/admin/reviews": {
        "get": {
            "summary": "Reviews for moderation (admins)",
            "responses": {"200": {"description": '{"items": [...]}'}},
        }
    },
    "/api/admin/reviews/{review_id}/hide": {
        "post": {
            "summary": 'Hide or restore a review ({"hidden": bool, "reason"}); audited',
            "responses": {
                "200": {"description": "The review"},
                "404": {"description": "Unknown"},
                "422": {"description": "Bad input"},
            },
        }
    },
    "/api/admin/subjects": {
        "get": {
            "summary": "Every subject with tutor counts",
            "responses": {"200": {"description": '{"items": [...]}'}},
        },
        "post": {
            "summary": 'Add a subject ({"name"})',
            "responses": {
                "201": {"description": "Created"},
                "409": {"description": "Exists"},
                "422": {"description": "Bad name"},
            },
        },
    },
    "/api/admin/analytics": {
        "get": {
            "summary": "Sessions per week, rates, ratings, busy hours",
            "responses": {"200": {"description": "Figures"}},
        }
    },
}


async def _sessions(request: web.Request) -> tuple[list[Booking], dict[int, User], str | None, int]:
    require_role(request, "admin")
    status = request.query.get("status") or None
    if status is not None and status not in BOOKING_STATUSES:
        raise ValidationError("Unknown status.", fields={"status": "Unknown"})
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        raise ValidationError("page must be a number.", fields={"page": "?"}) from None
    async with request.app[keys.sessionmaker]() as db:
        stmt = select(Booking).order_by(Booking.start_at.desc())
        if status:
            stmt = stmt.where(Booking.status == status)
        rows = list((await db.execute(stmt.limit(PAGE).offset((page - 1) * PAGE))).scalars())
        users = await bk.people(db, rows)
    return rows, users, status, page


async def sessions_page(request: web.Request) -> web.StreamResponse:
    """Every session, filterable by status, with who is in each call right now."""
    rows, users, status, page = await _sessions(request)
    return render(
        request,
        "admin_market/sessions.html",
        {
            "items": rows,
            "users": users,
            "status": status,
            "statuses": BOOKING_STATUSES,
            "page": page,
            "in_call": _in_call(request.app, rows),
        },
    )


def _in_call(app: web.Application, rows: list[Booking]) -> dict[int, list[str]]:
    """Who is in each session's call right now (rooms served by this process)."""
    try:
        from panda.web.call_ws import ROOMS, room_key
    except ImportError:
        return {}
    rooms = app.get(ROOMS)
    if rooms is None:
        return {}
    out: dict[int, list[str]] = {}
    for b in rows:
        room = rooms.get(room_key(b.id))
        if room is not None and room.participants:
            out[b.id] = sorted(p.name for p in room.participants.values())
    return out


async def sessions_api(request: web.Request) -> web.Response:
    """JSON twin."""
    rows, users, _status, page = await _sessions(request)
    in_call = _in_call(request.app, rows)
    items = []
    for b in rows:
        item = bk.booking_json(b, users)
        item["in_call"] = in_call.get(b.id, [])
        items.append(item)
    return web.json_response({"page": page, "items": items})


async def _reviews(request: web.Request) -> list[tuple[Review, str, str]]:
    require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        student = select(User.name).where(User.id == Review.student_id).scalar_subquery()
        tutor = select(User.name).where(User.id == Review.tutor_id).scalar_subquery()
        rows = (
            await db.execute(
                select(Review, student, tutor).order_by(Review.created_at.desc()).limit(200)
            )
        ).all()
    return [(r, s, t) for r, s, t in rows]


async def reviews_page(request: web.Request) -> web.StreamResponse:
    """Reviews with hide/restore."""
    return render(request, "admin_market/reviews.html", {"items": await _reviews(request)})


async def reviews_api(request: web.Request) -> web.Response:
    """JSON twin."""
    items = await _reviews(request)
    return web.json_response(
        {
            "items": [
                {
                    "id": r.id,
                    "booking_id": r.booking_id,
                    "rating": r.rating,
                    "text": r.text,
                    "reply": r.reply,
                    "hidden": r.hidden,
                    "hidden_reason": r.hidden_reason,
                    "student_name": s,
                    "tutor_name": t,
                    "created_at": iso_utc(r.created_at),
                }
                for r, s, t in items
            ]
        }
    )


async def review_hide(request: web.Request) -> web.StreamResponse:
    """Hide or restore a review (form or JSON); written to the audit log."""
    admin = require_role(request, "admin")
    review_id = int_param(request.match_info["review_id"], "review")
    if request.path.startswith("/api/"):
        data = await read_json(request)
        hidden = data.get("hidden", True)
        reason = data.get("reason", "")
        if not isinstance(hidden, bool) or not isinstance(reason, str):
            raise ValidationError("hidden must be a boolean and reason a string.")
    else:
        form = await read_form(request)
        hidden = form.get("hidden", "1") == "1"
        reason = form.get("reason", "")
    async with request.app[keys.sessionmaker]() as db:
        review = await rv.set_hidden(db, review_id, admin, hidden, reason)
    if request.path.startswith("/api/"):
        return web.json_response({"id": review.id, "hidden": review.hidden})
    flash(request, "Review hidden." if hidden else "Review restored.", "success")
    raise web.HTTPSeeOther("/admin/reviews")


async def _subjects(request: web.Request) -> list[tuple[Subject, int]]:
    require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        counts = dict(
            (
                await db.execute(
                    select(TutorSubject.subject_id, func.count(TutorSubject.tutor_id)).group_by(
                        TutorSubject.subject_id
                    )
                )
            ).all()
        )
        subjects = await list_subjects(db, active_only=False)
    return [(s, int(counts.get(s.id, 0))) for s in subjects]


async def subjects_page(request: web.Request) -> web.StreamResponse:
    """The subject list: add, deactivate, restore."""
    return render(
        request, "admin_market/subjects.html", {"items": await _subjects(request), "errors": {}}
    )


async def _add_subject(request: web.Request, name: str) -> Subject:
    admin = require_role(request, "admin")
    name = " ".join(name.split())
    if not 2 <= len(name) <= 80:
        raise ValidationError("A subject name has 2 to 80 characters.", fields={"name": "2-80"})
    async with request.app[keys.sessionmaker]() as db:
        exists = (
            await db.execute(
                select(Subject.id).where(
                    (func.lower(Subject.name) == name.lower()) | (Subject.slug == slugify(name))
                )
            )
        ).first()
        if exists:
            from panda.errors import Conflict

            raise Conflict(f"{name} is on the list already.")
        subject = Subject(name=name, slug=slugify(name), is_active=True, created_at=utcnow())
        db.add(subject)
        await db.flush()
        await rv.write_audit(db, admin, "subject.add", "subject", str(subject.id), {"name": name})
        await db.commit()
    return subject


async def subject_add(request: web.Request) -> web.StreamResponse:
    """Add from the form."""
    form = await read_form(request)
    try:
        await _add_subject(request, form.get("name", ""))
    except ValidationError as exc:
        return render(
            request,
            "admin_market/subjects.html",
            {
                "items": await _subjects(request),
                "errors": {"name": exc.message},
                "name": form.get("name", ""),
            },
            status=422,
        )
    except Exception as exc:
        from panda.errors import Conflict

        if isinstance(exc, Conflict):
            flash(request, exc.message, "error")
            raise web.HTTPSeeOther("/admin/subjects") from None
        raise
    flash(request, "Subject added.", "success")
    raise web.HTTPSeeOther("/admin/subjects")


async def subject_toggle(request: web.Request) -> web.StreamResponse:
    """Deactivate or restore a subject (audited)."""
    admin = require_role(request, "admin")
    subject_id = int_param(request.match_info["subject_id"], "subject")
    async with request.app[keys.sessionmaker]() as db:
        subject = await db.get(Subject, subject_id)
        if subject is None:
            from panda.errors import NotFound

            raise NotFound("We could not find that subject.")
        await db.execute(
            update(Subject).where(Subject.id == subject_id).values(is_active=not subject.is_active)
        )
        await rv.write_audit(
            db,
            admin,
            "subject.toggle",
            "subject",
            str(subject_id),
            {"active": not subject.is_active},
        )
        await db.commit()
    raise web.HTTPSeeOther("/admin/subjects")


async def subjects_api(request: web.Request) -> web.Response:
    """GET the list or POST a new subject."""
    if request.method == "POST":
        data = await read_json(request)
        name = data.get("name")
        if not isinstance(name, str):
            raise ValidationError("name must be a string.", fields={"name": "Text."})
        subject = await _add_subject(request, name)
        return web.json_response(
            {"id": subject.id, "name": subject.name, "slug": subject.slug}, status=201
        )
    items = await _subjects(request)
    return web.json_response(
        {
            "items": [
                {"id": s.id, "name": s.name, "slug": s.slug, "active": s.is_active, "tutors": n}
                for s, n in items
            ]
        }
    )


async def analytics_page(request: web.Request) -> web.StreamResponse:
    """Charts rendered on the server as SVG."""
    admin = require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        data = await analytics.compute(db, tz=admin.timezone)
    charts = {
        "weeks": Markup(analytics.bar_chart(data.weeks, title="Sessions per week")),
        "ratings": Markup(analytics.bar_chart(data.ratings, title="Rating distribution", alt=True)),
        "hours": Markup(analytics.bar_chart(data.hours, title="Busiest hours", every=3)),
        "completion": Markup(analytics.donut(data.completion_rate, label="Completed")),
        "no_show": Markup(analytics.donut(data.no_show_rate, label="No-show")),
    }
    return render(request, "admin_market/analytics.html", {"data": data, "charts": charts})


async def analytics_api(request: web.Request) -> web.Response:
    """JSON twin."""
    admin = require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        data = await analytics.compute(db, tz=admin.timezone)
    return web.json_response(
        {
            "sessions_per_week": [{"week": w, "count": n} for w, n in data.weeks],
            "completion_rate": data.completion_rate,
            "no_show_rate": data.no_show_rate,
            "cancel_rate": data.cancel_rate,
            "ratings": {k: v for k, v in data.ratings},
            "busiest_hours": {k: v for k, v in data.hours},
            "by_status": data.by_status,
        }
    )


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.router.add_get("/admin/sessions", sessions_page)
    app.router.add_get("/admin/reviews", reviews_page)
    app.router.add_post(r"/admin/reviews/{review_id:\d+}/hide", review_hide)
    app.router.add_get("/admin/subjects", subjects_page)
    app.router.add_post("/admin/subjects", subject_add)
    app.router.add_post(r"/admin/subjects/{subject_id:\d+}/toggle", subject_toggle)
    app.router.add_get("/admin/analytics", analytics_page)
    app.router.add_get("/api/admin/sessions", sessions_api)
    app.router.add_get("/api/admin/reviews", reviews_api)
    app.router.add_post(r"/api/admin/reviews/{review_id:\d+}/hide", review_hide)
    app.router.add_get("/api/admin/subjects", subjects_api)
    app.router.add_post("/api/admin/subjects", subjects_api)
    app.router.add_get("/api/admin/analytics", analytics_api)
