"""Recordings in the web UI and the API: lists, the recording page, media files (Range-served),
downloads, deletion, settings, and starting/stopping a call's recording."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from panda import keys
from panda.errors import BadRequest, Forbidden, NotFound, ValidationError
from panda.media.recording_service import COMBINED_NAME, RECORDINGS, recordings_ctx
from panda.store import recordings as store
from panda.store.models import RECORDING_STATUSES, AuditEntry, Recording, RecordingFile, User
from panda.web.auth import flash, require_role, require_user
from panda.web.call_remote import COMMANDS, owner_elsewhere
from panda.web.call_ws import CALL_HUB, ROOMS, room_key
from panda.web.forms import read_form, read_json
from panda.web.render import NAV_EXTRA_KEY, render

MEDIA_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska"}
MAX_RETENTION_DAYS = 3650
PAGE_SIZE = 50
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

_RECORDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "session_id", "status", "started_at", "duration_seconds", "size_bytes"],
    "properties": {
        "id": {"type": "integer"},
        "session_id": {"type": "integer"},
        "subject": {"type": "string"},
        "tutor": {"type": ["object", "null"]},
        "student": {"type": ["object", "null"]},
        "status": {"type": "string", "enum": list(RECORDING_STATUSES)},
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "duration_seconds": {"type": "number"},
        "size_bytes": {"type": "integer"},
        "page_url": {"type": "string"},
        "combined": {"type": "object"},
        "files": {"type": "array", "items": {"type": "object"}},
    },
}
_ID_PARAM = {"name": "recording_id", "in": "path", "required": True,
             "schema": {"type": "integer"}}
_ERRORS = {
    "401": {"description": "Not logged in"},
    "403": {"description": "Not allowed"},
    "404": {"description": "No such recording (or not yours)"},
}
OPENAPI: dict[str, Any] = {
    "/api/recordings": {
        "get": {
            "summary": "Recordings the caller may see (admins: all; tutors: their sessions)",
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": s}
                for n, s in (
                    ("tutor", {"type": "integer"}),
                    ("student", {"type": "integer"}),
                    ("from", {"type": "string", "format": "date"}),
                    ("to", {"type": "string", "format": "date"}),
                    ("status", {"type": "string", "enum": list(RECORDING_STATUSES)}),
                    ("page", {"type": "integer", "minimum": 1}),
                )
            ],
            "responses": {
                "200": {
                    "description": "A page of recordings",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "recordings": {"type": "array",
                                           "items": {"$ref": "#/components/schemas/Recording"}},
                            "total": {"type": "integer"},
                        },
                    }}},
                },
                "400": {"description": "Bad filter"},
                **_ERRORS,
            },
        }
    },
    "/api/recordings/{recording_id}": {
        "get": {
            "summary": "One recording with its file URLs",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "The recording", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Recording"}}}},
                **_ERRORS,
            },
        }
    },
    "/api/sessions/{session_id}/recording": {
        "post": {
            "summary": "Start or stop recording a running call (the tutor or an admin)",
            "parameters": [{"name": "session_id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["action"],
                "properties": {"action": {"type": "string", "enum": ["start", "stop"]}},
            }}}},
            "responses": {
                "200": {"description": "Recording started or stopped"},
                "409": {"description": "Not running / already recording"},
                "422": {"description": "Bad action"},
                "503": {"description": "The server process holding the call did not answer"},
                **_ERRORS,
            },
        }
    },
}
OPENAPI_SCHEMAS: dict[str, Any] = {"Recording": _RECORDING_SCHEMA}


# ----- helpers -----------------------------------------------------------------------------


async def _students_can_view(request: web.Request) -> bool:
    async with request.app[keys.sessionmaker]() as db:
        settings = await store.get_settings(db)
        await db.commit()
        return settings.students_can_view


def _recording_id(request: web.Request) -> int:
    try:
        return int(request.match_info["recording_id"])
    except (KeyError, ValueError):
        raise NotFound("There is no such recording.") from None


def _parse_filters(query: Any) -> store.RecordingFilters:
    def int_or_none(name: str) -> int | None:
        raw = (query.get(name) or "").strip()
        if not raw:
            return None
        if not raw.isdigit() or len(raw) > 12:
            raise BadRequest(f"The {name} filter must be a number.")
        return int(raw)

    def date_or_none(name: str) -> datetime | None:
        raw = (query.get(name) or "").strip()
        if not raw:
            return None
        try:
            if not _DATE.match(raw):
                raise ValueError(raw)
            return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise BadRequest(f"The {name} date must look like 2026-01-31.") from None

    status = (query.get("status") or "").strip() or None
    if status is not None and status not in RECORDING_STATUSES:
        raise BadRequest("Unknown status filter.")
    date_to = date_or_none("to")
    return store.RecordingFilters(
        tutor_id=int_or_none("tutor"),
        student_id=int_or_none("student"),
        date_from=date_or_none("from"),
        date_to=date_to + timedelta(days=1) if date_to else None,
        status=status,
    )


def _page(query: Any) -> int:
    raw = (query.get("page") or "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise BadRequest("The page must be a positive number.")
    return int(raw)


def _file_path(request: web.Request, recording: Recording, name: str) -> Path:
    base = request.app[RECORDINGS].directory_of(recording).resolve()
    path = (base / name).resolve()
    if path.parent != base or not path.is_file():
        raise NotFound("This file is not available.")
    return path


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _file_json(recording_id: int, row: RecordingFile) -> dict[str, Any]:
    url = f"/recordings/{recording_id}/files/{row.id}"
    return {
        "id": row.id,
        "participant_id": row.participant_id,
        "user_id": row.user_id,
        "source": row.source_group,
        "kinds": [k for k in row.kinds.split(",") if k],
        "start_offset": row.start_offset,
        "duration_seconds": row.duration_seconds,
        "size_bytes": row.size_bytes,
        "status": row.status,
        "url": url,
        "download_url": f"{url}?download=1",
    }


def _recording_json(row: store.RecordingRow, files: list[RecordingFile] | None) -> dict[str, Any]:
    rec = row.recording
    data: dict[str, Any] = {
        "id": rec.id,
        "session_id": rec.booking_id,
        "subject": row.subject,
        "tutor": {"id": rec.tutor_id, "name": row.tutor_name} if rec.tutor_id else None,
        "student": {"id": rec.student_id, "name": row.student_name} if rec.student_id else None,
        "status": rec.status,
        "started_at": _iso(rec.started_at),
        "ended_at": _iso(rec.ended_at),
        "duration_seconds": round(rec.duration_seconds, 3),
        "size_bytes": rec.size_bytes,
        "error": rec.error,
        "page_url": f"/recordings/{rec.id}",
        "combined": {
            "status": rec.combined_status,
            "progress": round(rec.combined_progress, 4),
            "size_bytes": rec.combined_size,
            "url": f"/recordings/{rec.id}/combined" if rec.combined_status == "ready" else None,
            "download_url": (f"/recordings/{rec.id}/combined?download=1"
                             if rec.combined_status == "ready" else None),
        },
    }
    if files is not None:
        data["files"] = [_file_json(rec.id, f) for f in files]
    return data


def _api_viewer(request: web.Request) -> User:
    # The API is for admins and tutors (students only ever see recordings in pages, if allowed).
    return require_role(request, "admin", "tutor")


# ----- pages --------------------------------------------------------------------------------


async def _list_page(request: web.Request, *, admin: bool) -> web.StreamResponse:
    user = require_role(request, "admin") if admin else require_user(request)
    filters = _parse_filters(request.query)
    page = _page(request.query)
    async with request.app[keys.sessionmaker]() as db:
        settings = await store.get_settings(db)
        await db.commit()
        if not admin and not (user.is_admin or user.is_tutor or
                              (user.is_student and settings.students_can_view)):
            raise Forbidden("Recordings are not available to you.")
        rows, total = await store.list_recordings(
            db, user, students_can_view=settings.students_can_view, filters=filters,
            limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        everyone, _ = await store.list_recordings(
            db, user, students_can_view=settings.students_can_view, limit=1000)
    people = store.participant_filter_users(everyone)
    return render(request, "recordings/list.html", {
        "admin": admin,
        "rows": rows,
        "total": total,
        "page": page,
        "pages": max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE),
        "query": {k: request.query.get(k, "") for k in ("tutor", "student", "from", "to",
                                                         "status")},
        "tutors": [(uid, name) for uid, name in people
                   if any(r.recording.tutor_id == uid for r in everyone)],
        "students": [(uid, name) for uid, name in people
                     if any(r.recording.student_id == uid for r in everyone)],
        "statuses": RECORDING_STATUSES,
        "settings": settings,
    })


async def admin_list(request: web.Request) -> web.StreamResponse:
    """Every recording, with filters, sizes, durations and the recording settings."""
    return await _list_page(request, admin=True)


async def my_list(request: web.Request) -> web.StreamResponse:
    """The recordings the logged-in user may see."""
    return await _list_page(request, admin=False)


async def admin_settings(request: web.Request) -> web.StreamResponse:
    """Change retention and whether students see their sessions' recordings."""
    user = require_role(request, "admin")
    form = await read_form(request)
    raw = form.get("retention_days", "").strip()
    retention: int | None = None
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_RETENTION_DAYS:
            raise ValidationError(
                "Please check the settings.",
                fields={"retention_days": f"A number of days from 1 to {MAX_RETENTION_DAYS}, "
                                          "or empty to keep recordings."})
        retention = int(raw)
    students = form.get("students_can_view") == "on"
    async with request.app[keys.sessionmaker]() as db:
        await store.update_settings(db, retention_days=retention, students_can_view=students)
        db.add(AuditEntry(actor_id=user.id, action="recording.settings",
                                target_type="recording_settings", target_id="1",
                                detail={"retention_days": retention,
                                        "students_can_view": students}))
        await db.commit()
    if retention:
        await request.app[RECORDINGS].purge_expired()
    flash(request, "Recording settings saved.", "success")
    raise web.HTTPSeeOther("/admin/recordings")


async def recording_page(request: web.Request) -> web.StreamResponse:
    """One recording: the combined file, the participants' files side by side, downloads."""
    user = require_user(request)
    recording_id = _recording_id(request)
    students_can_view = await _students_can_view(request)
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user,
                                                students_can_view=students_can_view)
        files = await store.recording_files(db, recording_id)
        entries = await store.audit_entries(db, recording_id) if user.is_admin else []
        await store.audit(db, user.id, "recording.viewed", recording_id)
        await db.commit()
    return render(request, "recordings/recording.html", {
        "row": row,
        "rec": row.recording,
        "files": [_file_json(recording_id, f) for f in files],
        "can_delete": store.can_manage(user),
        "audit": entries,
    })


async def recording_progress(request: web.Request) -> web.StreamResponse:
    """The combined file's progress, as a fragment the recording page polls."""
    user = require_user(request)
    recording_id = _recording_id(request)
    students_can_view = await _students_can_view(request)
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user,
                                                students_can_view=students_can_view)
    return render(request, "recordings/_progress.html", {"rec": row.recording})


async def _serve(request: web.Request, path: Path, download_name: str) -> web.StreamResponse:
    headers = {
        "Content-Type": MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        "Cache-Control": "private, max-age=0, must-revalidate",
        "X-Content-Type-Options": "nosniff",
    }
    if request.query.get("download") == "1":
        headers["Content-Disposition"] = (
            f"attachment; filename=\"{download_name}\"; filename*=UTF-8''{quote(download_name)}")
    return web.FileResponse(path, headers=headers)


async def _media(request: web.Request, *, combined: bool) -> web.StreamResponse:
    user = request.get(keys.user)
    if user is None:
        # Media URLs are not pages: no login redirect, nothing revealed.
        raise NotFound("This file is not available.")
    recording_id = _recording_id(request)
    students_can_view = await _students_can_view(request)
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user,
                                                students_can_view=students_can_view)
        recording = row.recording
        if combined:
            if recording.combined_status != "ready":
                raise NotFound("The combined file is not ready yet.")
            path = _file_path(request, recording, COMBINED_NAME)
            name = f"recording-{recording_id}.webm"
        else:
            try:
                file_id = int(request.match_info["file_id"])
            except ValueError:
                raise NotFound("This file is not available.") from None
            file_row = await db.get(RecordingFile, file_id)
            if file_row is None or file_row.recording_id != recording_id:
                raise NotFound("This file is not available.")
            path = _file_path(request, recording, file_row.name)
            name = f"recording-{recording_id}-{file_row.id}{path.suffix}"
        if request.query.get("download") == "1":
            await store.audit(db, user.id, "recording.downloaded", recording_id,
                              {"file": "combined" if combined else name})
            await db.commit()
    return await _serve(request, path, name)


async def file_media(request: web.Request) -> web.StreamResponse:
    """One participant's file (Range requests supported, so players can seek)."""
    return await _media(request, combined=False)


async def combined_media(request: web.Request) -> web.StreamResponse:
    """The combined file of a recording."""
    return await _media(request, combined=True)


async def delete_page(request: web.Request) -> web.StreamResponse:
    """Ask for confirmation before deleting."""
    user = require_role(request, "admin")
    recording_id = _recording_id(request)
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user, students_can_view=False)
    return render(request, "recordings/delete.html", {"row": row, "rec": row.recording})


async def delete_submit(request: web.Request) -> web.StreamResponse:
    """Delete a recording: its files and its row (admins)."""
    user = require_role(request, "admin")
    recording_id = _recording_id(request)
    form = await read_form(request)
    if form.get("confirm") != "yes":
        raise ValidationError("Please confirm the deletion.",
                              fields={"confirm": "Tick the box to confirm."})
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user, students_can_view=False)
    await request.app[RECORDINGS].delete(row.recording, actor_id=user.id, reason="admin")
    flash(request, "The recording was deleted.", "success")
    raise web.HTTPSeeOther("/admin/recordings")


def call_recording_context(app: web.Application, tutor_id: int, booking_id: int,
                           user: User) -> dict[str, Any]:
    """What the call page's record slot needs (include recordings/_call_record_control.html)."""
    service = app.get(RECORDINGS)
    return {
        "recording_active": bool(service and service.is_recording(booking_id)),
        "can_record": bool(user.is_admin or user.id == tutor_id),
    }


# ----- API ------------------------------------------------------------------------------------


async def api_list(request: web.Request) -> web.StreamResponse:
    """GET /api/recordings."""
    user = _api_viewer(request)
    filters = _parse_filters(request.query)
    page = _page(request.query)
    async with request.app[keys.sessionmaker]() as db:
        rows, total = await store.list_recordings(
            db, user, students_can_view=False, filters=filters, limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE)
        result = []
        for row in rows:
            files = await store.recording_files(db, row.recording.id)
            result.append(_recording_json(row, files))
    return web.json_response({"recordings": result, "total": total, "page": page})


async def api_get(request: web.Request) -> web.StreamResponse:
    """GET /api/recordings/{id}."""
    user = _api_viewer(request)
    recording_id = _recording_id(request)
    async with request.app[keys.sessionmaker]() as db:
        row = await store.get_visible_recording(db, recording_id, user, students_can_view=False)
        files = await store.recording_files(db, recording_id)
    return web.json_response(_recording_json(row, files))


async def api_session_recording(request: web.Request) -> web.StreamResponse:
    """POST /api/sessions/{id}/recording {"action": "start"|"stop"}: the call's record button."""
    user = require_user(request)
    try:
        booking_id = int(request.match_info["session_id"])
    except ValueError:
        raise NotFound("There is no such session.") from None
    body = await read_json(request)
    action = body.get("action")
    if action not in ("start", "stop"):
        raise ValidationError("Unknown action.", fields={"action": "start or stop"})
    # The recorder taps the media room: with several processes, the one holding it records.
    owner = await owner_elsewhere(request.app, booking_id)
    if owner is not None:
        body = await request.app[COMMANDS].ask(
            owner, "recording", booking_id=booking_id, user_id=user.id, action=action
        )
        return web.json_response(body)
    return web.json_response(await _record(request.app, booking_id, user, action))


async def _record(app: web.Application, booking_id: int, user: User, action: str) -> dict[str, Any]:
    service = app[RECORDINGS]
    if action == "start":
        recording = await service.start(booking_id, user)
        return {"recording": True, "recording_id": recording.id}
    recording_id = await service.stop(booking_id, user)
    return {"recording": False, "recording_id": recording_id}


async def _connect_calls(app: web.Application) -> AsyncIterator[None]:
    """Let the service find a session's media room and tell the people in the call."""
    service = app[RECORDINGS]

    def room_lookup(booking_id: int) -> Any:
        rooms = app.get(ROOMS)
        return rooms.get(room_key(booking_id)) if rooms is not None else None

    async def tell_call(booking_id: int, message: dict[str, Any]) -> None:
        hub = app.get(CALL_HUB)
        if hub is not None:
            await hub.broadcast(booking_id, message)

    async def remote_record(args: dict[str, Any]) -> dict[str, Any]:
        # Asked by the process that received the record button's request.
        async with app[keys.sessionmaker]() as db:
            user = await db.get(User, int(args["user_id"]))
        if args.get("action") not in ("start", "stop"):
            raise BadRequest("Unknown action.")
        if user is None:
            raise NotFound("There is no such user.")
        return await _record(app, int(args["booking_id"]), user, str(args["action"]))

    service.room_lookup = room_lookup
    service.add_listener(tell_call)
    commands = app.get(COMMANDS)
    if commands is not None:
        commands.register("recording", remote_record)
    yield


def setup(app: web.Application) -> None:
    """Register the routes, the service and the navigation entry of this area."""
    app.cleanup_ctx.append(recordings_ctx)
    app.cleanup_ctx.append(_connect_calls)
    app[keys.templates].globals["recording_call_state"] = (
        lambda booking, user: call_recording_context(app, booking.tutor_id, booking.id, user))
    rid = r"{recording_id:\d{1,12}}"
    app.router.add_get("/admin/recordings", admin_list, name="admin_recordings")
    app.router.add_post("/admin/recordings/settings", admin_settings)
    app.router.add_get("/recordings", my_list, name="recordings")
    app.router.add_get(f"/recordings/{rid}", recording_page, name="recording")
    app.router.add_get(f"/recordings/{rid}/progress", recording_progress)
    app.router.add_get(f"/recordings/{rid}/combined", combined_media)
    app.router.add_get(f"/recordings/{rid}/files/{{file_id:\\d{{1,12}}}}", file_media)
    app.router.add_get(f"/recordings/{rid}/delete", delete_page)
    app.router.add_post(f"/recordings/{rid}/delete", delete_submit)
    app.router.add_get("/api/recordings", api_list)
    app.router.add_get(f"/api/recordings/{rid}", api_get)
    app.router.add_post(r"/api/sessions/{session_id:\d{1,12}}/recording", api_session_recording)
    nav = app.get(NAV_EXTRA_KEY)
    if nav is None:
        nav = []
        app[NAV_EXTRA_KEY] = nav
    nav.append({"href": "/recordings", "label": "Recordings", "role": "tutor"})
