"""In-app notifications: list, unread badge for the navbar, mark as read."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from panda import keys
from panda.market import notify as notes
from panda.market.availability import iso_utc
from panda.web.auth import current_user, require_user
from panda.web.forms import read_json
from panda.web.market_common import int_param
from panda.web.render import render

OPENAPI: dict[str, Any] = {
    "/api/notifications": {
        "get": {
            "summary": "The caller's latest notifications and unread count",
            "responses": {"200": {"description": '{"items": [...], "unread": n}'}},
        }
    },
    "/api/notifications/read": {
        "post": {
            "summary": 'Mark one ({"id": n}) or every notification read',
            "responses": {
                "200": {"description": '{"changed": n}'},
                "422": {"description": "Bad id"},
            },
        }
    },
}


async def notifications_page(request: web.Request) -> web.StreamResponse:
    """The list, newest first."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        items = await notes.list_notifications(db, user.id, limit=100)
        unread = await notes.unread_count(db, user.id)
    return render(request, "notifications.html", {"items": items, "unread": unread})


async def mark_all_read(request: web.Request) -> web.StreamResponse:
    """Mark everything read (form)."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        await notes.mark_read(db, user.id)
        await db.commit()
    raise web.HTTPSeeOther("/notifications")


async def open_notification(request: web.Request) -> web.StreamResponse:
    """Mark one read and follow its link."""
    user = require_user(request)
    nid = int_param(request.match_info["nid"], "notification")
    async with request.app[keys.sessionmaker]() as db:
        from panda.store.models import Notification

        note = await db.get(Notification, nid)
        if note is None or note.user_id != user.id:
            from panda.errors import NotFound

            raise NotFound("We could not find that notification.")
        await notes.mark_read(db, user.id, nid)
        await db.commit()
    raise web.HTTPSeeOther(note.link or "/notifications")


async def badge(request: web.Request) -> web.StreamResponse:
    """The unread count fragment the navbar loads (htmx)."""
    user = current_user(request)
    count = 0
    if user is not None:
        async with request.app[keys.sessionmaker]() as db:
            count = await notes.unread_count(db, user.id)
    text = f'<span class="nav-badge" aria-label="{count} unread">{count}</span>' if count else ""
    return web.Response(text=text, content_type="text/html")


async def notifications_api(request: web.Request) -> web.Response:
    """JSON twin of /notifications."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        items = await notes.list_notifications(db, user.id, limit=100)
        unread = await notes.unread_count(db, user.id)
    return web.json_response(
        {
            "unread": unread,
            "items": [
                {
                    "id": n.id,
                    "kind": n.kind,
                    "title": n.title,
                    "body": n.body,
                    "link": n.link,
                    "booking_id": n.booking_id,
                    "read": n.read_at is not None,
                    "created_at": iso_utc(n.created_at),
                }
                for n in items
            ],
        }
    )


async def read_api(request: web.Request) -> web.Response:
    """Mark read via JSON."""
    user = require_user(request)
    data = await read_json(request) if request.can_read_body else {}
    nid = data.get("id")
    if nid is not None and (not isinstance(nid, int) or isinstance(nid, bool)):
        from panda.errors import ValidationError

        raise ValidationError("id must be an integer.", fields={"id": "Integer."})
    async with request.app[keys.sessionmaker]() as db:
        changed = await notes.mark_read(db, user.id, nid)
        await db.commit()
    return web.json_response({"changed": changed})


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.router.add_get("/notifications", notifications_page, name="notifications")
    app.router.add_post("/notifications/read", mark_all_read)
    app.router.add_post(r"/notifications/{nid:\d+}/open", open_notification)
    app.router.add_get("/notifications/badge", badge)
    app.router.add_get("/api/notifications", notifications_api)
    app.router.add_post("/api/notifications/read", read_api)
