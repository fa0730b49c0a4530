"""Booking pages and API: request a slot, answer, cancel, move, review, download .ics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select

from panda import keys
from panda.errors import Conflict, Forbidden, ValidationError
from panda.market import booking as bk
from panda.market import ics
from panda.market import reviews as rv
from panda.market.availability import iso_utc
from panda.market.scheduler import scheduler_ctx, wake
from panda.market.tutors import ensure_profile, get_public_tutor
from panda.store.models import BOOKING_STATUSES, Booking, Review, User
from panda.store.types import utcnow
from panda.web.auth import flash, require_role, require_user
from panda.web.forms import read_form, read_json
from panda.web.market_common import day_groups, instant, int_param, rules
from panda.web.render import NAV_EXTRA_KEY, render

RECORDING_NOTICE = (
    "Sessions may be recorded when both of you agree in the call, so you can watch them again."
)
_ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_B = {
    "200": {
        "description": "The booking",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Booking"}}},
    }
}


def _action(summary: str, body: str = "") -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            **(
                {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"type": "object", "description": body}}
                        }
                    }
                }
                if body
                else {}
            ),
            "responses": {
                **_B,
                "403": {"description": "Not your role here", **_ERR},
                "404": {"description": "Unknown booking", **_ERR},
                "409": {"description": "State conflict", **_ERR},
                "422": {"description": "Invalid input", **_ERR},
            },
        }
    }


OPENAPI_SCHEMAS: dict[str, Any] = {
    "Booking": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "tutor_id": {"type": "integer"},
            "student_id": {"type": "integer"},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "subject": {"type": "string"},
            "note": {"type": "string"},
            "status": {
                "type": "string",
                "enum": list(BOOKING_STATUSES),
            },
            "price": {"type": "object"},
        },
    },
    "BookingRequest": {
        "type": "object",
        "required": ["tutor_id", "start", "subject"],
        "properties": {
            "tutor_id": {"type": "integer"},
            "start": {"type": "string", "format": "date-time"},
            "subject": {"type": "string"},
            "note": {"type": "string"},
        },
    },
}
OPENAPI: dict[str, Any] = {
    "/api/bookings": {
        "get": {
            "summary": "The caller's bookings (as student or tutor)",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string"}},
                {"name": "upcoming", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": '{"items": [Booking]}'}},
        },
        "post": {
            "summary": "Request a session (students)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/BookingRequest"}}
                },
            },
            "responses": {
                "201": {
                    "description": "Pending booking",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Booking"}}
                    },
                },
                "409": {"description": "Taken slot, pending request or quota used up", **_ERR},
                "422": {"description": "Past slot, outside availability, bad input", **_ERR},
            },
        },
    },
    "/api/bookings/{booking_id}": {
        "get": {
            "summary": "One booking",
            "responses": {**_B, "404": {"description": "Unknown", **_ERR}},
        }
    },
    "/api/bookings/{booking_id}/accept": _action("Accept a pending request or proposal"),
    "/api/bookings/{booking_id}/decline": _action("Decline with a reason", '{"reason"}'),
    "/api/bookings/{booking_id}/cancel": _action("Cancel (or withdraw)", '{"reason"}'),
    "/api/bookings/{booking_id}/reschedule": _action("Propose a new time", '{"start"}'),
    "/api/bookings/{booking_id}/reschedule/answer": _action(
        "Accept or reject the proposed time", '{"accept": true}'
    ),
    "/api/bookings/{booking_id}/review": _action("Rate a completed session", '{"rating", "text"}'),
    "/api/reviews/{review_id}/reply": _action("The tutor replies once", '{"text"}'),
    "/api/proposals": _action(
        "A tutor proposes a session to a student they teach",
        '{"student_id", "start", "subject", "note"}',
    ),
}


# ---------------------------------------------------------------- helpers


def _status_label(status: str) -> str:
    return status.replace("_", " ")


async def _booking_ctx(db: Any, booking: Booking, user: User) -> dict[str, Any]:
    users = await bk.people(db, [booking])
    review = (
        await db.execute(select(Review).where(Review.booking_id == booking.id))
    ).scalar_one_or_none()
    now = utcnow()
    tutor = users[booking.tutor_id]
    profile = await ensure_profile(db, tutor)
    await db.commit()
    reschedule_slots: list[Any] = []
    if (
        booking.status == "scheduled"
        and booking.moves < profile.max_moves
        and booking.proposed_start_at is None
    ):
        reschedule_slots = (
            await bk.free_slots(
                db,
                tutor,
                profile,
                now,
                now + timedelta(days=14),
                now=now,
                student_id=booking.student_id,
                exclude_booking=booking.id,
            )
        )[:40]
    answerer = booking.tutor_id if booking.requested_by == "student" else booking.student_id
    return {
        "b": booking,
        "users": users,
        "review": review,
        "me": user,
        "can_answer": booking.status == "pending" and user.id == answerer,
        "can_withdraw": booking.status == "pending"
        and user.id != answerer
        and user.id in (booking.student_id, booking.tutor_id),
        "can_cancel": booking.status == "scheduled"
        and user.id in (booking.student_id, booking.tutor_id),
        "late": user.id == booking.student_id and booking.start_at - now < rules_default_cutoff(),
        "can_review": booking.status == "completed"
        and user.id == booking.student_id
        and review is None,
        "can_reply": review is not None and review.reply is None and user.id == booking.tutor_id,
        "can_answer_move": booking.proposed_start_at is not None
        and user.id in (booking.student_id, booking.tutor_id)
        and user.id != booking.proposed_by_id,
        "reschedule_days": day_groups(reschedule_slots, user),
        "max_moves": profile.max_moves,
        "status_label": _status_label(booking.status),
        "iso_utc": iso_utc,
        "can_join": booking.status in ("scheduled", "in_progress")
        and booking.start_at - timedelta(minutes=15) <= now < booking.end_at,
    }


def rules_default_cutoff() -> timedelta:
    """The cancellation cut-off shown on pages."""
    return bk.BookingRules().cancel_cutoff


PageAction = Callable[[web.Request, Any, Booking, User, dict[str, str]], Awaitable[str]]


async def _page_action(request: web.Request, action: PageAction) -> web.StreamResponse:
    """Run a booking action from a form; errors become a flash on the booking page."""
    user = require_user(request)
    booking_id = int_param(request.match_info["booking_id"], "booking")
    form = await read_form(request)
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.get_booking_for(db, booking_id, user)
        try:
            message = await action(request, db, booking, user, form)
        except (Conflict, ValidationError, Forbidden) as exc:
            flash(request, exc.message, "error")
            raise web.HTTPSeeOther(f"/bookings/{booking_id}") from None
    wake(request.app)
    flash(request, message, "success")
    raise web.HTTPSeeOther(f"/bookings/{booking_id}")


# ---------------------------------------------------------------- pages


async def book_page(request: web.Request) -> web.StreamResponse:
    """Confirm a slot: subject, note, the recording notice."""
    user = require_user(request)
    tutor_id = int_param(request.match_info["tutor_id"], "tutor")
    start = instant(request.query.get("start"), "start")
    async with request.app[keys.sessionmaker]() as db:
        card = await get_public_tutor(db, tutor_id)
        _month, _used, left = await bk.quota_left(db, user, rules(request))
    return render(
        request,
        "bookings/book.html",
        {
            "card": card,
            "start": start,
            "start_iso": iso_utc(start),
            "end": start + timedelta(minutes=card.profile.session_minutes),
            "recording_notice": RECORDING_NOTICE,
            "errors": {},
            "form": {},
            "quota_left": left,
            "is_student": user.is_student,
        },
    )


async def book_submit(request: web.Request) -> web.StreamResponse:
    """Create the request from the booking form."""
    user = require_user(request)
    form = await read_form(request)
    tutor_id = int_param(form.get("tutor_id", ""), "tutor")
    start = instant(form.get("start"), "start")
    async with request.app[keys.sessionmaker]() as db:
        try:
            booking = await bk.create_request(
                db,
                student=user,
                tutor_id=tutor_id,
                start=start,
                subject=form.get("subject", ""),
                note=form.get("note", ""),
                rules=rules(request),
            )
        except (Conflict, ValidationError, Forbidden) as exc:
            await db.rollback()
            card = await get_public_tutor(db, tutor_id)
            _month, _used, left = await bk.quota_left(db, user, rules(request))
            return render(
                request,
                "bookings/book.html",
                {
                    "card": card,
                    "start": start,
                    "start_iso": iso_utc(start),
                    "end": start + timedelta(minutes=card.profile.session_minutes),
                    "recording_notice": RECORDING_NOTICE,
                    "errors": exc.fields,
                    "error": exc.message,
                    "form": form,
                    "quota_left": left,
                    "is_student": user.is_student,
                },
                status=exc.status,
            )
    wake(request.app)
    flash(request, "Request sent. The tutor has 48 hours to answer.", "success")
    raise web.HTTPSeeOther(f"/bookings/{booking.id}")


async def bookings_page(request: web.Request) -> web.StreamResponse:
    """My sessions and requests."""
    user = require_user(request)
    status = request.query.get("status") or None
    if status is not None and status not in BOOKING_STATUSES:
        status = None
    async with request.app[keys.sessionmaker]() as db:
        items = await bk.list_bookings(db, user, status=status)
        users = await bk.people(db, items)
    return render(
        request,
        "bookings/list.html",
        {"items": items, "users": users, "status": status, "statuses": BOOKING_STATUSES},
    )


async def booking_page(request: web.Request) -> web.StreamResponse:
    """One booking with the actions the viewer may take."""
    user = require_user(request)
    booking_id = int_param(request.match_info["booking_id"], "booking")
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.get_booking_for(db, booking_id, user)
        ctx = await _booking_ctx(db, booking, user)
    return render(request, "bookings/detail.html", ctx)


async def _do_accept(request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]) -> str:
    await bk.accept(db, b, u)
    return "Accepted. The session is in both calendars."


async def _do_decline(request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]) -> str:
    await bk.decline(db, b, u, f.get("reason", ""))
    return "Declined."


async def _do_cancel(request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]) -> str:
    await bk.cancel(db, b, u, f.get("reason", ""), rules(request))
    return "Cancelled." + (" It counts against this month's sessions." if b.late_cancel else "")


async def _do_reschedule(
    request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]
) -> str:
    await bk.propose_new_time(db, b, u, instant(f.get("start"), "start"))
    return "New time proposed. The other side will answer."


async def _do_answer_move(
    request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]
) -> str:
    agree = f.get("answer") == "accept"
    await bk.answer_new_time(db, b, u, agree, rules(request))
    return "Moved to the new time." if agree else "Kept the current time."


async def _do_review(request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]) -> str:
    try:
        rating = int(f.get("rating", ""))
    except ValueError:
        raise ValidationError("Rate the session from 1 to 5.") from None
    await rv.create_review(db, b, u, rating, f.get("text", ""))
    return "Thank you for your review."


async def _do_reply(request: web.Request, db: Any, b: Booking, u: User, f: dict[str, str]) -> str:
    review = (
        await db.execute(select(Review).where(Review.booking_id == b.id))
    ).scalar_one_or_none()
    if review is None:
        raise Conflict("There is no review to reply to.")
    await rv.reply(db, review.id, u, f.get("reply", ""))
    return "Reply published."


def _page(action: PageAction) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _page_action(request, action)

    handler.__doc__ = "Booking action from a form."
    return handler


async def ics_download(request: web.Request) -> web.StreamResponse:
    """One booking as an .ics file."""
    user = require_user(request)
    booking_id = int_param(request.match_info["booking_id"], "booking")
    settings = request.app[keys.settings]
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.get_booking_for(db, booking_id, user)
        users = await bk.people(db, [booking])
    body = ics.calendar_bytes([booking], users, user, settings.base_url, "Panda Professor")
    return web.Response(
        body=body,
        content_type="text/calendar",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="session-{booking.id}.ics"'},
    )


async def propose_page(request: web.Request) -> web.StreamResponse:
    """A tutor proposes a session to one of their students."""
    tutor = require_role(request, "tutor")
    now = utcnow()
    async with request.app[keys.sessionmaker]() as db:
        students = await _taught_students(db, tutor)
        profile = await ensure_profile(db, tutor)
        await db.commit()
        slots = (await bk.free_slots(db, tutor, profile, now, now + timedelta(days=14), now=now))[
            :60
        ]
    return render(
        request,
        "bookings/propose.html",
        {
            "students": students,
            "slot_days": day_groups(slots, tutor),
            "iso_utc": iso_utc,
            "selected": request.query.get("student_id", ""),
        },
    )


async def _taught_students(db: Any, tutor: User) -> list[User]:
    rows = await db.execute(
        select(User)
        .where(
            User.id.in_(
                select(Booking.student_id).where(
                    Booking.tutor_id == tutor.id,
                    Booking.status.in_(("scheduled", "in_progress", "completed")),
                )
            )
        )
        .order_by(User.name)
    )
    return list(rows.scalars())


async def propose_submit(request: web.Request) -> web.StreamResponse:
    """Create the proposal from the form."""
    tutor = require_role(request, "tutor")
    form = await read_form(request)
    student_id = int_param(form.get("student_id", ""), "student")
    start = instant(form.get("start"), "start")
    async with request.app[keys.sessionmaker]() as db:
        try:
            booking = await bk.create_proposal(
                db,
                tutor=tutor,
                student_id=student_id,
                start=start,
                subject=form.get("subject", ""),
                note=form.get("note", ""),
                rules=rules(request),
            )
        except (Conflict, ValidationError, Forbidden) as exc:
            flash(request, exc.message, "error")
            raise web.HTTPSeeOther("/tutor/propose") from None
    wake(request.app)
    flash(request, "Proposal sent to the student.", "success")
    raise web.HTTPSeeOther(f"/bookings/{booking.id}")


# ---------------------------------------------------------------- API


async def _json(request: web.Request, db: Any, bookings: list[Booking]) -> list[dict[str, Any]]:
    users = await bk.people(db, bookings)
    return [bk.booking_json(b, users) for b in bookings]


async def api_create(request: web.Request) -> web.Response:
    """POST /api/bookings."""
    user = require_user(request)
    data = await read_json(request)
    tutor_id = data.get("tutor_id")
    if not isinstance(tutor_id, int) or isinstance(tutor_id, bool) or tutor_id <= 0:
        raise ValidationError("tutor_id must be a positive integer.", fields={"tutor_id": "?"})
    start = instant(data.get("start"), "start")
    subject, note = data.get("subject", ""), data.get("note", "")
    if not isinstance(subject, str) or not isinstance(note, str):
        raise ValidationError("subject and note must be strings.")
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.create_request(
            db,
            student=user,
            tutor_id=tutor_id,
            start=start,
            subject=subject,
            note=note,
            rules=rules(request),
        )
        body = (await _json(request, db, [booking]))[0]
    wake(request.app)
    return web.json_response(body, status=201)


async def api_list(request: web.Request) -> web.Response:
    """GET /api/bookings."""
    user = require_user(request)
    status = request.query.get("status") or None
    if status is not None and status not in BOOKING_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(BOOKING_STATUSES)}.")
    upcoming = request.query.get("upcoming", "") in ("1", "true")
    async with request.app[keys.sessionmaker]() as db:
        items = await bk.list_bookings(db, user, status=status, upcoming=upcoming)
        return web.json_response({"items": await _json(request, db, items)})


async def api_get(request: web.Request) -> web.Response:
    """GET /api/bookings/<id>."""
    user = require_user(request)
    booking_id = int_param(request.match_info["booking_id"], "booking")
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.get_booking_for(db, booking_id, user)
        return web.json_response((await _json(request, db, [booking]))[0])


ApiAction = Callable[[web.Request, Any, Booking, User, dict[str, Any]], Awaitable[Any]]


def _api(action: ApiAction) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        user = require_user(request)
        booking_id = int_param(request.match_info["booking_id"], "booking")
        data = await read_json(request) if request.can_read_body else {}
        async with request.app[keys.sessionmaker]() as db:
            booking = await bk.get_booking_for(db, booking_id, user)
            await action(request, db, booking, user, data)
            booking = await bk.get_booking_for(db, booking_id, user)
            await db.refresh(booking)
            body = (await _json(request, db, [booking]))[0]
        wake(request.app)
        return web.json_response(body)

    handler.__doc__ = "Booking action (JSON)."
    return handler


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string.", fields={name: "Text expected."})
    return value


async def _api_review(
    request: web.Request, db: Any, b: Booking, u: User, d: dict[str, Any]
) -> None:
    await rv.create_review(db, b, u, d.get("rating"), _str(d, "text"))


async def _api_answer(
    request: web.Request, db: Any, b: Booking, u: User, d: dict[str, Any]
) -> None:
    if not isinstance(d.get("accept"), bool):
        raise ValidationError("accept must be true or false.", fields={"accept": "Boolean."})
    await bk.answer_new_time(db, b, u, d["accept"], rules(request))


async def api_reply(request: web.Request) -> web.Response:
    """POST /api/reviews/<id>/reply."""
    user = require_role(request, "tutor")
    review_id = int_param(request.match_info["review_id"], "review")
    data = await read_json(request)
    async with request.app[keys.sessionmaker]() as db:
        review = await rv.reply(db, review_id, user, _str(data, "text"))
    return web.json_response(
        {"id": review.id, "rating": review.rating, "text": review.text, "reply": review.reply}
    )


async def api_propose(request: web.Request) -> web.Response:
    """POST /api/proposals."""
    tutor = require_role(request, "tutor")
    data = await read_json(request)
    student_id = data.get("student_id")
    if not isinstance(student_id, int) or isinstance(student_id, bool):
        raise ValidationError("student_id must be an integer.", fields={"student_id": "?"})
    start = instant(data.get("start"), "start")
    async with request.app[keys.sessionmaker]() as db:
        booking = await bk.create_proposal(
            db,
            tutor=tutor,
            student_id=student_id,
            start=start,
            subject=_str(data, "subject"),
            note=_str(data, "note"),
            rules=rules(request),
        )
        body = (await _json(request, db, [booking]))[0]
    wake(request.app)
    return web.json_response(body, status=201)


def setup(app: web.Application) -> None:
    """Register the routes of this area and the scheduler."""
    app.setdefault(NAV_EXTRA_KEY, []).append(
        {"href": "/bookings", "label": "Sessions", "role": "student,tutor"}
    )
    from panda.bus import setup_bus

    setup_bus(app)  # before the scheduler, which takes its lease through the bus
    app.cleanup_ctx.append(scheduler_ctx)
    b = r"/bookings/{booking_id:\d+}"
    app.router.add_get("/tutors/{tutor_id}/book", book_page)
    app.router.add_post("/bookings", book_submit)
    app.router.add_get("/bookings", bookings_page, name="bookings")
    app.router.add_get(b + ".ics", ics_download)
    app.router.add_get(b, booking_page, name="booking")
    app.router.add_post(b + "/accept", _page(_do_accept))
    app.router.add_post(b + "/decline", _page(_do_decline))
    app.router.add_post(b + "/cancel", _page(_do_cancel))
    app.router.add_post(b + "/reschedule", _page(_do_reschedule))
    app.router.add_post(b + "/reschedule/answer", _page(_do_answer_move))
    app.router.add_post(b + "/review", _page(_do_review))
    app.router.add_post(b + "/review/reply", _page(_do_reply))
    app.router.add_get("/tutor/propose", propose_page)
    app.router.add_post("/tutor/propose", propose_submit)
    app.router.add_get("/api/bookings", api_list)
    app.router.add_post("/api/bookings", api_create)
    a = r"/api/bookings/{booking_id:\d+}"
    app.router.add_get(a, api_get)
    app.router.add_post(a + "/accept", _api(lambda r, db, b, u, d: bk.accept(db, b, u)))
    app.router.add_post(
        a + "/decline", _api(lambda r, db, b, u, d: bk.decline(db, b, u, _str(d, "reason")))
    )
    app.router.add_post(
        a + "/cancel", _api(lambda r, db, b, u, d: bk.cancel(db, b, u, _str(d, "reason"), rules(r)))
    )
    app.router.add_post(
        a + "/reschedule",
        _api(
            lambda r, db, b, u, d: bk.propose_new_time(db, b, u, instant(d.get("start"), "start"))
        ),
    )
    app.router.add_post(a + "/reschedule/answer", _api(_api_answer))
    app.router.add_post(a + "/review", _api(_api_review))
    app.router.add_post(r"/api/reviews/{review_id:\d+}/reply", api_reply)
    app.router.add_post("/api/proposals", api_propose)
