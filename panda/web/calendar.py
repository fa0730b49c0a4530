"""Calendar week and month views, and the private calendar feed (revocable secret URL)."""

from __future__ import annotations

import calendar as pycal
from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import or_, select

from panda import keys
from panda.errors import NotFound, ValidationError
from panda.market import booking as bk
from panda.market import ics
from panda.market.availability import iso_utc, zone_of
from panda.market.tutors import tutor_windows
from panda.store.models import Booking
from panda.web.auth import flash, require_user
from panda.web.render import render

SHOWN = ("pending", "scheduled", "in_progress", "completed", "no_show")
OPENAPI: dict[str, Any] = {
    "/api/calendar": {
        "get": {
            "summary": "The caller's sessions (and, for tutors, open hours) in a week or month",
            "parameters": [
                {
                    "name": "view",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["week", "month"]},
                },
                {"name": "date", "in": "query", "schema": {"type": "string", "format": "date"}},
            ],
            "responses": {
                "200": {"description": '{"from", "to", "sessions": [], "open": []}'},
                "422": {"description": "Bad date"},
            },
        }
    },
    "/api/calendar/feed": {
        "post": {
            "summary": "Issue a new private feed URL (revokes the old one)",
            "responses": {"201": {"description": '{"url"}'}},
        },
        "delete": {
            "summary": "Revoke the private feed URL",
            "responses": {"200": {"description": '{"revoked": n}'}},
        },
    },
}


def _parse_view(request: web.Request) -> tuple[str, date]:
    view = request.query.get("view", "week")
    if view not in ("week", "month"):
        raise ValidationError("view must be week or month.", fields={"view": "week or month"})
    raw = request.query.get("date", "")
    user = require_user(request)
    today = datetime.now(zone_of(user.timezone)).date()
    if raw:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise ValidationError("date must look like 2026-12-01.", fields={"date": "?"}) from None
        if not date(2000, 1, 1) <= day <= date(2100, 1, 1):
            raise ValidationError("date is out of range.", fields={"date": "?"})
    else:
        day = today
    return view, day


def _range(view: str, day: date) -> tuple[date, date]:
    if view == "week":
        first = day - timedelta(days=day.weekday())
        return first, first + timedelta(days=7)
    first = day.replace(day=1)
    grid_first = first - timedelta(days=first.weekday())
    last_day = pycal.monthrange(day.year, day.month)[1]
    last = day.replace(day=last_day)
    grid_last = last + timedelta(days=7 - last.weekday())
    return grid_first, grid_last


async def _data(request: web.Request, view: str, day: date) -> dict[str, Any]:
    user = require_user(request)
    zone = zone_of(user.timezone)
    first, last = _range(view, day)
    start = datetime(first.year, first.month, first.day, tzinfo=zone)
    end = datetime(last.year, last.month, last.day, tzinfo=zone)
    async with request.app[keys.sessionmaker]() as db:
        rows = list(
            (
                await db.execute(
                    select(Booking)
                    .where(
                        or_(Booking.student_id == user.id, Booking.tutor_id == user.id),
                        Booking.status.in_(SHOWN),
                        Booking.start_at < end,
                        Booking.end_at > start,
                    )
                    .order_by(Booking.start_at)
                )
            ).scalars()
        )
        users = await bk.people(db, rows)
        windows = await tutor_windows(db, user, start, end) if user.is_tutor else []
    return {
        "first": first,
        "last": last,
        "start": start,
        "end": end,
        "sessions": rows,
        "users": users,
        "open": windows,
        "zone": zone,
    }


async def calendar_page(request: web.Request) -> web.StreamResponse:
    """Week or month view in the viewer's zone."""
    user = require_user(request)
    view, day = _parse_view(request)
    data = await _data(request, view, day)
    zone = data["zone"]
    days: list[dict[str, Any]] = []
    d = data["first"]
    today = datetime.now(zone).date()
    while d < data["last"]:
        items = [b for b in data["sessions"] if b.start_at.astimezone(zone).date() == d]
        opens = [w for w in data["open"] if w[0].astimezone(zone).date() == d]
        days.append(
            {
                "date": d,
                "sessions": items,
                "open": opens,
                "today": d == today,
                "in_month": d.month == day.month,
            }
        )
        d += timedelta(days=1)
    if view == "week":
        prev_day, next_day = day - timedelta(days=7), day + timedelta(days=7)
        title = f"Week of {data['first'].strftime('%d %B %Y')}"
    else:
        prev_day = (day.replace(day=1) - timedelta(days=1)).replace(day=1)
        next_day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        title = day.strftime("%B %Y")
    async with request.app[keys.sessionmaker]() as db:
        has_feed = await ics.has_feed(db, user)
    feed_url = request.app[keys.settings].base_url + "/calendar/feed/"
    return render(
        request,
        "calendar/view.html",
        {
            "view": view,
            "day": day,
            "days": days,
            "users": data["users"],
            "title": title,
            "prev": prev_day.isoformat(),
            "next": next_day.isoformat(),
            "has_feed": has_feed,
            "new_feed": request.query.get("feed_created") and _pop_feed(request),
            "feed_base": feed_url,
            "weekday_names": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
        },
    )


_FEED_KEY = "new_feed_url"


def _pop_feed(request: web.Request) -> str | None:
    from panda.web.auth import browser_session

    session = browser_session(request)
    if session is None:
        return None
    value = session.pop(_FEED_KEY, None)
    return str(value) if value else None


async def calendar_api(request: web.Request) -> web.Response:
    """JSON twin of /calendar."""
    view, day = _parse_view(request)
    data = await _data(request, view, day)
    return web.json_response(
        {
            "view": view,
            "from": iso_utc(data["start"]),
            "to": iso_utc(data["end"]),
            "sessions": [bk.booking_json(b, data["users"]) for b in data["sessions"]],
            "open": [{"start": iso_utc(s), "end": iso_utc(e)} for s, e in data["open"]],
        }
    )


async def feed_create(request: web.Request) -> web.StreamResponse:
    """Issue a new feed URL (shown once), revoking the old one."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        token = await ics.new_feed_token(db, user)
        await db.commit()
    url = f"{request.app[keys.settings].base_url}/calendar/feed/{token}.ics"
    if request.path.startswith("/api/"):
        return web.json_response({"url": url}, status=201)
    from panda.web.auth import browser_session

    session = browser_session(request)
    if session is not None:
        session[_FEED_KEY] = url
    flash(request, "Your private calendar feed is ready. Copy the address now.", "success")
    raise web.HTTPSeeOther("/calendar?feed_created=1")


async def feed_revoke(request: web.Request) -> web.StreamResponse:
    """Kill the feed URL."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        count = await ics.revoke_feed(db, user)
        await db.commit()
    if request.path.startswith("/api/"):
        return web.json_response({"revoked": count})
    flash(request, "The calendar feed address no longer works.", "success")
    raise web.HTTPSeeOther("/calendar")


async def feed_ics(request: web.Request) -> web.StreamResponse:
    """The private feed: no login, the secret in the URL is the key."""
    token = request.match_info["token"]
    settings = request.app[keys.settings]
    async with request.app[keys.sessionmaker]() as db:
        user = await ics.user_for_feed(db, token)
        if user is None:
            raise NotFound("This calendar feed does not exist or was revoked.")
        rows = await ics.feed_bookings(db, user)
        users = await bk.people(db, rows)
    body = ics.calendar_bytes(rows, users, user, settings.base_url, "Panda Professor sessions")
    return web.Response(
        body=body,
        content_type="text/calendar",
        charset="utf-8",
        headers={"Cache-Control": "private, max-age=300"},
    )


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.router.add_get("/calendar", calendar_page, name="calendar")
    app.router.add_get("/api/calendar", calendar_api)
    app.router.add_post("/calendar/feed", feed_create)
    app.router.add_post("/calendar/feed/revoke", feed_revoke)
    app.router.add_post("/api/calendar/feed", feed_create)
    app.router.add_delete("/api/calendar/feed", feed_revoke)
    app.router.add_get("/calendar/feed/{token}.ics", feed_ics)
