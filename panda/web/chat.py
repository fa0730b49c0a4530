"""Chat pages (/messages), the chat JSON API (/api/conversations...) and the admin report queue."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from markupsafe import Markup, escape

from panda import chat, keys
from panda.bus import setup_bus
from panda.errors import BadRequest, Forbidden, NotFound, ValidationError
from panda.store import chat as store
from panda.store.models import User
from panda.web.auth import flash, require_role, require_user
from panda.web.forms import read_form, read_json
from panda.web.render import NAV_EXTRA_KEY, render

MAX_REPORT_REASON = 1000
_URL_RE = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""


def linkify(text: str) -> Markup:
    """Escape `text` and turn http(s) URLs into links (never other schemes, never raw HTML)."""
    out: list[str] = []
    pos = 0
    for match in _URL_RE.finditer(text):
        url = match.group(0)
        trimmed = url.rstrip(_TRAILING)
        end = match.start() + len(trimmed)
        out.append(str(escape(text[pos : match.start()])))
        safe = escape(trimmed)
        out.append(
            f'<a href="{safe}" rel="noopener noreferrer nofollow ugc" target="_blank">{safe}</a>'
        )
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))


def time_formatter(user: User) -> Callable[[str], str]:
    """A function showing an ISO time in the user's zone: "14:05" today, "3 Nov, 14:05" before."""
    try:
        zone = ZoneInfo(user.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    today = datetime.now(zone).date()

    def fmt(iso: str) -> str:
        local = datetime.fromisoformat(iso).astimezone(zone)
        if local.date() == today:
            return local.strftime("%H:%M")
        if local.year == today.year:
            return f"{local.day} {local.strftime('%b, %H:%M')}"
        return f"{local.day} {local.strftime('%b %Y, %H:%M')}"

    return fmt


def _int_param(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number.") from None
    if value < 0:
        raise BadRequest(f"{name} must be a whole number.")
    return value


def _path_id(request: web.Request, name: str = "id") -> int:
    try:
        return int(request.match_info[name])
    except (KeyError, ValueError):
        raise NotFound("There is no such conversation.") from None


def _user_json(user: User, online: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": user.id, "name": user.name, "role": user.role}
    if online is not None:
        body["online"] = online
    return body


async def _summaries_json(app: web.Application, user: User) -> dict[str, Any]:
    async with app[keys.sessionmaker]() as db:
        summaries = await store.list_conversations(db, user.id)
    items = []
    for s in summaries:
        items.append(
            {
                "id": s.conversation.id,
                "other": _user_json(s.other, await chat.is_online(app, s.other.id)),
                "unread": s.unread,
                "last_seq": s.conversation.last_seq,
                "other_read_seq": s.other_read_seq,
                "last_message": (
                    store.message_json(s.last_message, "") if s.last_message else None
                ),
                "last_message_at": (
                    s.conversation.last_message_at.isoformat()
                    if s.conversation.last_message_at
                    else None
                ),
            }
        )
    return {"conversations": items, "unread_total": sum(i["unread"] for i in items)}


async def _conversation_json(
    app: web.Application, user: User, conversation_id: int
) -> dict[str, Any]:
    async with app[keys.sessionmaker]() as db:
        conversation, member = await store.conversation_for(db, conversation_id, user.id)
        other, other_read = await store.other_member(db, conversation_id, user.id)
    return {
        "id": conversation.id,
        "other": _user_json(other, await chat.is_online(app, other.id)),
        "last_seq": conversation.last_seq,
        "last_read_seq": member.last_read_seq,
        "other_read_seq": other_read,
        "unread": max(0, conversation.last_seq - member.last_read_seq),
    }


# -- JSON API ----------------------------------------------------------------------------------
async def api_list(request: web.Request) -> web.Response:
    """GET /api/conversations: the user's conversations with unread counts and presence."""
    user = require_user(request)
    return web.json_response(await _summaries_json(request.app, user))


async def api_open(request: web.Request) -> web.Response:
    """POST /api/conversations {"user_id"}: the conversation with that user, created once."""
    user = require_user(request)
    data = await read_json(request)
    other_id = data.get("user_id")
    if not isinstance(other_id, int) or isinstance(other_id, bool):
        raise ValidationError("user_id must be a user's id.", fields={"user_id": "Required."})
    async with request.app[keys.sessionmaker]() as db:
        conversation, created = await store.open_conversation(db, user, other_id)
    body = await _conversation_json(request.app, user, conversation.id)
    return web.json_response(body, status=201 if created else 200)


async def api_get(request: web.Request) -> web.Response:
    """GET /api/conversations/<id>: one conversation's state."""
    user = require_user(request)
    return web.json_response(await _conversation_json(request.app, user, _path_id(request)))


async def api_messages(request: web.Request) -> web.Response:
    """GET /api/conversations/<id>/messages?before=&after=&limit=: a page, oldest first."""
    user = require_user(request)
    conversation_id = _path_id(request)
    before = _int_param(request.query.get("before"), "before")
    after = _int_param(request.query.get("after"), "after")
    limit = _int_param(request.query.get("limit"), "limit") or chat.PAGE_SIZE
    if before is not None and after is not None:
        raise BadRequest("Use before or after, not both.")
    limit = max(1, min(limit, 200))
    async with request.app[keys.sessionmaker]() as db:
        conversation, _ = await store.conversation_for(db, conversation_id, user.id)
        _, other_read = await store.other_member(db, conversation_id, user.id)
    messages = await chat.history(
        request.app, conversation_id, conversation.last_seq, before=before, after=after, limit=limit
    )
    if after is not None:
        has_more = bool(messages) and messages[-1]["seq"] < conversation.last_seq
    else:
        has_more = bool(messages) and messages[0]["seq"] > 1
    return web.json_response(
        {
            "messages": messages,
            "has_more": has_more,
            "last_seq": conversation.last_seq,
            "other_read_seq": other_read,
        }
    )


async def api_send(request: web.Request) -> web.Response:
    """POST /api/conversations/<id>/messages {"text", "client_id"?}: store, then deliver."""
    user = require_user(request)
    conversation_id = _path_id(request)
    data = await read_json(request, max_bytes=32 * 1024)
    message, created = await chat.send_message(
        request.app, user, conversation_id, data.get("text"), data.get("client_id")
    )
    return web.json_response({"message": message}, status=201 if created else 200)


async def api_read(request: web.Request) -> web.Response:
    """POST /api/conversations/<id>/read {"seq"}: read receipt, returns unread counts."""
    user = require_user(request)
    conversation_id = _path_id(request)
    data = await read_json(request)
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValidationError("seq must be a whole number.", fields={"seq": "Required."})
    return web.json_response(await chat.mark_read(request.app, user, conversation_id, seq))


async def api_report(request: web.Request) -> web.Response:
    """POST /api/messages/<id>/report {"reason"}: put a message in the admin review queue."""
    user = require_user(request)
    message_id = _path_id(request)
    data = await read_json(request)
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise ValidationError("reason must be text.", fields={"reason": "Text only."})
    reason = reason.strip()[:MAX_REPORT_REASON]
    async with request.app[keys.sessionmaker]() as db:
        report, created = await store.report_message(db, message_id, user.id, reason)
    return web.json_response(
        {"report_id": report.id, "status": report.status}, status=201 if created else 200
    )


# -- pages -------------------------------------------------------------------------------------
async def messages_page(request: web.Request) -> web.StreamResponse:
    """/messages: the list of conversations with unread counts."""
    user = require_user(request)
    data = await _summaries_json(request.app, user)
    return render(
        request,
        "chat/list.html",
        {"data": data, "user": user, "fmt_time": time_formatter(user)},
    )


async def start_conversation(request: web.Request) -> web.StreamResponse:
    """POST /messages/start (user_id): open the conversation with that user and go there."""
    user = require_user(request)
    form = await read_form(request)
    other_id = _int_param(form.get("user_id"), "user_id")
    if other_id is None:
        raise BadRequest("Choose who to message.")
    async with request.app[keys.sessionmaker]() as db:
        conversation, _ = await store.open_conversation(db, user, other_id)
    raise web.HTTPSeeOther(f"/messages/{conversation.id}")


async def conversation_page(request: web.Request) -> web.StreamResponse:
    """/messages/<id>: history (newest at the bottom) and the send form; JS makes it live."""
    user = require_user(request)
    conversation_id = _path_id(request)
    before = _int_param(request.query.get("before"), "before")
    info = await _conversation_json(request.app, user, conversation_id)
    messages = await chat.history(
        request.app, conversation_id, info["last_seq"], before=before, limit=chat.PAGE_SIZE
    )
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": info,
            "messages": messages,
            "older_than": messages[0]["seq"] if messages and messages[0]["seq"] > 1 else None,
            "is_older_page": before is not None,
            "max_chars": chat.MAX_MESSAGE_CHARS,
            "linkify": linkify,
            "fmt_time": time_formatter(user),
            "user": user,
        },
    )


async def conversation_send(request: web.Request) -> web.StreamResponse:
    """POST /messages/<id>: the no-JavaScript send form."""
    user = require_user(request)
    conversation_id = _path_id(request)
    form = await read_form(request)
    try:
        await chat.send_message(
            request.app, user, conversation_id, form.get("text"), form.get("client_id")
        )
    except ValidationError:
        flash(request, "Write a message first.", "error")
    raise web.HTTPSeeOther(f"/messages/{conversation_id}#composer")


async def report_form(request: web.Request) -> web.StreamResponse:
    """POST /messages/report/<id>: the no-JavaScript report button."""
    user = require_user(request)
    message_id = _path_id(request)
    form = await read_form(request)
    async with request.app[keys.sessionmaker]() as db:
        await store.report_message(
            db, message_id, user.id, (form.get("reason") or "").strip()[:MAX_REPORT_REASON]
        )
        message = await store.get_message(db, message_id)
    flash(request, "Thank you. Our team will review this message.", "success")
    target = message.conversation_id if message else ""
    raise web.HTTPSeeOther(f"/messages/{target}")


# -- admin -------------------------------------------------------------------------------------
async def admin_reports(request: web.Request) -> web.StreamResponse:
    """/admin/chat/reports: reported messages waiting for review."""
    require_role(request, "admin")
    status = request.query.get("status", "open")
    if status not in ("open", "dismissed", "actioned"):
        raise BadRequest("Unknown status.")
    async with request.app[keys.sessionmaker]() as db:
        rows = await store.list_reports(db, status)
    return render(
        request, "chat/admin_reports.html", {"rows": rows, "status": status, "linkify": linkify}
    )


async def admin_resolve(request: web.Request) -> web.StreamResponse:
    """POST /admin/chat/reports/<id> (action=dismiss|hide): close a report (audit logged)."""
    admin = require_role(request, "admin")
    report_id = _path_id(request)
    form = await read_form(request)
    async with request.app[keys.sessionmaker]() as db:
        report = await store.resolve_report(db, report_id, admin.id, form.get("action", ""))
    if report.status == "actioned":
        await chat.forget_cache(request.app, report.conversation_id)
        await chat.announce_hidden(request.app, report.message_id)
        flash(request, "The message is hidden and the report closed.", "success")
    else:
        flash(request, "The report was dismissed.", "success")
    raise web.HTTPSeeOther("/admin/chat/reports")


async def admin_conversation(request: web.Request) -> web.StreamResponse:
    """/admin/chat/conversations/<id>: an admin reads a reported conversation (audit logged)."""
    admin = require_role(request, "admin")
    conversation_id = _path_id(request)
    async with request.app[keys.sessionmaker]() as db:
        if not await store.conversation_has_report(db, conversation_id):
            raise Forbidden(
                "Admins can read a conversation only after a message in it is reported."
            )
        members = await store.member_ids(db, conversation_id)
        users = [await db.get(User, uid) for uid in members]
        store.add_audit(
            db, admin.id, "chat.read_conversation", "chat_conversation", conversation_id, {}
        )
        await db.commit()
        rows = await store.messages_page(db, conversation_id, limit=500)
        reported = await store.reported_message_ids(db, conversation_id)
    return render(
        request,
        "chat/admin_conversation.html",
        {
            "conversation_id": conversation_id,
            "members": [u for u in users if u is not None],
            "messages": [(m, name) for m, name in rows],
            "reported": reported,
            "linkify": linkify,
        },
    )


_ERR = {"$ref": "#/components/schemas/Error"}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed input",
        401: "Not logged in",
        403: "Not a member of this conversation",
        404: "No such conversation",
        413: "Message too long",
        422: "Invalid input",
        429: "Too many messages; see Retry-After",
    }
    return {str(c): _resp(text[c], _ERR) for c in codes}


OPENAPI_SCHEMAS: dict[str, Any] = {
    "ChatMessage": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "conversation_id": {"type": "integer"},
            "seq": {"type": "integer", "description": "1, 2, 3... within the conversation"},
            "sender_id": {"type": "integer"},
            "sender_name": {"type": "string"},
            "text": {"type": "string", "description": "Plain text; render escaped"},
            "hidden": {"type": "boolean", "description": "Removed by a moderator"},
            "client_id": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Conversation": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "other": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "role": {"type": "string"},
                    "online": {"type": "boolean"},
                },
            },
            "unread": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "last_read_seq": {"type": "integer"},
            "other_read_seq": {"type": "integer"},
        },
    },
}
_CONV = {"$ref": "#/components/schemas/Conversation"}
_MSG = {"$ref": "#/components/schemas/ChatMessage"}

OPENAPI: dict[str, Any] = {
    "/api/conversations": {
        "get": {
            "summary": "Your conversations, newest activity first, with unread counts",
            "responses": {
                "200": _resp(
                    "Conversations",
                    {
                        "type": "object",
                        "properties": {
                            "conversations": {"type": "array", "items": _CONV},
                            "unread_total": {"type": "integer"},
                        },
                    },
                ),
                **_errors(401),
            },
        },
        "post": {
            "summary": "Open the conversation with a user (created once)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["user_id"],
                            "properties": {"user_id": {"type": "integer"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _resp("It existed already", _CONV),
                "201": _resp("Created", _CONV),
                **_errors(400, 401, 403, 404, 422),
            },
        },
    },
    "/api/conversations/{id}": {
        "get": {
            "summary": "One conversation's state",
            "parameters": _ID,
            "responses": {"200": _resp("The conversation", _CONV), **_errors(401, 403, 404)},
        }
    },
    "/api/conversations/{id}/messages": {
        "get": {
            "summary": "A page of messages, oldest first (newest page by default)",
            "parameters": [
                *_ID,
                {
                    "name": "before",
                    "in": "query",
                    "schema": {"type": "integer"},
                    "description": "Only messages with a smaller seq (load older)",
                },
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer"},
                    "description": "Only messages with a larger seq (catch up)",
                },
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 200}},
            ],
            "responses": {
                "200": _resp(
                    "Messages",
                    {
                        "type": "object",
                        "properties": {
                            "messages": {"type": "array", "items": _MSG},
                            "has_more": {"type": "boolean"},
                            "last_seq": {"type": "integer"},
                            "other_read_seq": {"type": "integer"},
                        },
                    },
                ),
                **_errors(400, 401, 403, 404),
            },
        },
        "post": {
            "summary": "Send a message (stored before it is delivered)",
            "parameters": _ID,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["text"],
                            "properties": {
                                "text": {"type": "string", "maxLength": 4000},
                                "client_id": {
                                    "type": "string",
                                    "description": "Idempotency key: a retry gets the same message",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _resp("Already sent with this client_id", {"type": "object"}),
                "201": _resp(
                    "Stored and delivered", {"type": "object", "properties": {"message": _MSG}}
                ),
                **_errors(400, 401, 403, 404, 413, 422, 429),
            },
        },
    },
    "/api/conversations/{id}/read": {
        "post": {
            "summary": "Mark messages read up to a seq (read receipt)",
            "parameters": _ID,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["seq"],
                            "properties": {"seq": {"type": "integer"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _resp("Unread counts", {"type": "object"}),
                **_errors(401, 403, 404, 422),
            },
        }
    },
    "/api/messages/{id}/report": {
        "post": {
            "summary": "Report a message to the moderators",
            "parameters": _ID,
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"reason": {"type": "string"}}}
                    }
                }
            },
            "responses": {
                "200": _resp("Already reported", {"type": "object"}),
                "201": _resp("Reported", {"type": "object"}),
                **_errors(401, 403, 404, 422),
            },
        }
    },
}


def setup(app: web.Application) -> None:
    """Register chat pages, API and admin review routes."""
    setup_bus(app)
    app.setdefault(NAV_EXTRA_KEY, []).append(
        {"href": "/messages", "label": "Messages", "role": "student,tutor"}
    )
    r = app.router
    r.add_get("/api/conversations", api_list)
    r.add_post("/api/conversations", api_open)
    r.add_get("/api/conversations/{id}", api_get)
    r.add_get("/api/conversations/{id}/messages", api_messages)
    r.add_post("/api/conversations/{id}/messages", api_send)
    r.add_post("/api/conversations/{id}/read", api_read)
    r.add_post("/api/messages/{id}/report", api_report)
    r.add_get("/messages", messages_page, name="messages")
    r.add_post("/messages/start", start_conversation)
    r.add_post("/messages/report/{id}", report_form)
    r.add_get("/messages/{id}", conversation_page, name="conversation")
    r.add_post("/messages/{id}", conversation_send)
    r.add_get("/admin/chat/reports", admin_reports, name="chat_reports")
    r.add_post("/admin/chat/reports/{id}", admin_resolve)
    r.add_get("/admin/chat/conversations/{id}", admin_conversation)
