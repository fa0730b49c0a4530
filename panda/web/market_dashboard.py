"""Marketplace panels on the dashboard: sessions, requests, quota, recommendations, hours."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import or_, select

from panda import keys
from panda.market import booking as bk
from panda.market.availability import WEEKDAYS, format_hhmm
from panda.market.recommend import recommend
from panda.market.tutors import ensure_profile, load_rules
from panda.store.models import Booking, User
from panda.store.types import utcnow
from panda.web.market_common import rules

OPENAPI: dict[str, Any] = {
    "/api/dashboard/market": {
        "get": {
            "summary": "Dashboard data: upcoming sessions, requests, quota, recommendations",
            "responses": {"200": {"description": "Role-specific dashboard data"}},
        }
    }
}


async def dashboard_context(request: web.Request, user: User) -> dict[str, Any]:
    """What the dashboard's marketplace panels show for `user`."""
    now = utcnow()
    out: dict[str, Any] = {}
    async with request.app[keys.sessionmaker]() as db:
        upcoming = list(
            (
                await db.execute(
                    select(Booking)
                    .where(
                        or_(Booking.student_id == user.id, Booking.tutor_id == user.id),
                        Booking.status.in_(("scheduled", "in_progress")),
                        Booking.end_at > now,
                    )
                    .order_by(Booking.start_at)
                    .limit(10)
                )
            ).scalars()
        )
        pending = list(
            (
                await db.execute(
                    select(Booking)
                    .where(
                        or_(Booking.student_id == user.id, Booking.tutor_id == user.id),
                        Booking.status == "pending",
                    )
                    .order_by(Booking.start_at)
                    .limit(20)
                )
            ).scalars()
        )
        users = await bk.people(db, upcoming + pending)
        out["market_upcoming"] = upcoming
        # The dashboard's own "Upcoming sessions" slot renders dashboard/_session_list.html.
        out["upcoming_sessions"] = upcoming
        out["market_pending"] = pending
        out["market_users"] = users
        out["market_join_from"] = now + timedelta(minutes=15)
        if user.is_student:
            month, used, left = await bk.quota_left(db, user, rules(request), now)
            out["market_quota"] = {
                "month": month,
                "used": used,
                "left": left,
                "total": rules(request).monthly_quota,
            }
            out["market_recommendations"] = await recommend(db, user, now=now)
        if user.is_tutor:
            profile = await ensure_profile(db, user)
            await db.commit()
            rule_rows = await load_rules(db, user.id)
            summary = []
            for d, name in enumerate(WEEKDAYS):
                ranges = [
                    f"{format_hhmm(r.start_minute)}–{format_hhmm(r.end_minute)}"
                    for r in rule_rows
                    if r.weekday == d
                ]
                if ranges:
                    summary.append((name, ", ".join(ranges)))
            out["market_hours"] = summary
            out["market_profile"] = profile
            out["market_to_answer"] = [
                b for b in pending if (b.requested_by == "student" and b.tutor_id == user.id)
            ]
    return out


async def dashboard_api(request: web.Request) -> web.Response:
    """JSON twin of the dashboard's marketplace panels."""
    from panda.market.availability import iso_utc
    from panda.market.search import card_json
    from panda.web.auth import require_user

    user = require_user(request)
    ctx = await dashboard_context(request, user)
    users = ctx["market_users"]
    data: dict[str, Any] = {
        "upcoming": [bk.booking_json(b, users) for b in ctx["market_upcoming"]],
        "pending": [bk.booking_json(b, users) for b in ctx["market_pending"]],
    }
    if "market_quota" in ctx:
        data["quota"] = ctx["market_quota"]
        data["recommendations"] = [
            {"tutor": card_json(r.card), "reason": r.reason, "score": round(r.score, 3)}
            for r in ctx["market_recommendations"]
        ]
    if "market_hours" in ctx:
        data["weekly_hours"] = [{"day": d, "hours": h} for d, h in ctx["market_hours"]]
    data["generated_at"] = iso_utc(utcnow())
    return web.json_response(data)


def setup(app: web.Application) -> None:
    """Register the dashboard provider and its JSON twin."""
    app.setdefault(keys.dashboard_providers, []).append(dashboard_context)
    app.router.add_get("/api/dashboard/market", dashboard_api)
