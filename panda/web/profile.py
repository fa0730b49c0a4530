"""The profile page: details, photo upload, password change; photos served with access checks."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from aiohttp import web
from sqlalchemy import select

from panda import keys
from panda.errors import BadRequest, NotFound, TooLarge
from panda.images import MAX_UPLOAD_BYTES, ImageRejected, process_photo_async
from panda.passwords import password_problem, verify_password_async
from panda.store.accounts import (
    active_sessions,
    clean_bio,
    clean_interests,
    clean_name,
    describe_user_agent,
    is_timezone,
    set_password,
    timezone_groups,
)
from panda.store.models import Booking, User
from panda.web import account_mail, ws_sessions
from panda.web.auth import (
    SESSION_LIFETIME,
    current_user,
    end_other_sessions,
    flash,
    require_user,
)
from panda.web.forms import read_form
from panda.web.render import render

PHOTO_DIR = "photos"


def photo_url(user: User) -> str | None:
    """Where the user's photo is served (the version in the query defeats stale caches)."""
    if not user.photo:
        return None
    return f"/users/{user.id}/photo?v={user.photo.split('.', 1)[0][:8]}"


def _photo_path(app: web.Application, name: str) -> Path:
    return app[keys.settings].uploads_dir / PHOTO_DIR / name


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def _context(user: User, **extra: object) -> dict[str, object]:
    ctx: dict[str, object] = {
        "user": user,
        "form": {
            "name": user.name,
            "timezone": user.timezone,
            "bio": user.bio,
            "interests": ", ".join(user.interests or []),
        },
        "errors": {},
        "photo_error": None,
        "password_errors": {},
        "timezone_groups": timezone_groups(),
    }
    ctx.update(extra)
    return ctx


async def _render_profile(
    request: web.Request, user: User, status: int = 200, **extra: object
) -> web.Response:
    async with request.app[keys.sessionmaker]() as db:
        sessions = await active_sessions(db, user.id, SESSION_LIFETIME)
    devices = [
        {
            "name": describe_user_agent(s.user_agent),
            "ip": s.ip or "",
            "last_seen_at": s.last_seen_at,
            "current": s.id == request.get(keys.session_id),
        }
        for s in sessions
    ]
    return render(request, "profile.html", _context(user, devices=devices, **extra), status=status)


async def profile_page(request: web.Request) -> web.StreamResponse:
    """The logged-in user's profile."""
    user = require_user(request)
    return await _render_profile(request, user)


async def end_sessions(request: web.Request) -> web.StreamResponse:
    """Log out every other device."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        await end_other_sessions(db, user.id, keep=request.get(keys.session_id))
        await db.commit()
    await ws_sessions.end_sessions(request.app, user.id, keep=request.get(keys.session_id))
    flash(request, "Your other devices are logged out.", "success")
    raise web.HTTPSeeOther("/profile")


async def profile_update(request: web.Request) -> web.StreamResponse:
    """Save name, time zone, bio and (students) subjects of interest."""
    user = require_user(request)
    form = await read_form(request)
    errors: dict[str, str] = {}
    name, problem = clean_name(form.get("name", ""))
    if problem:
        errors["name"] = problem
    timezone = form.get("timezone", "").strip()
    if not is_timezone(timezone):
        errors["timezone"] = "Choose a time zone from the list."
    bio, problem = clean_bio(form.get("bio", ""))
    if problem:
        errors["bio"] = problem
    interests, problem = clean_interests(form.get("interests", ""))
    if problem and user.is_student:
        errors["interests"] = problem
    if errors:
        values = {k: form.get(k, "") for k in ("name", "timezone", "bio", "interests")}
        return await _render_profile(request, user, 422, form=values, errors=errors)
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        fresh.name = name
        fresh.timezone = timezone
        fresh.bio = bio
        if fresh.is_student:
            fresh.interests = interests
        await db.commit()
    flash(request, "Your profile is saved.", "success")
    raise web.HTTPSeeOther("/profile")


async def photo_upload(request: web.Request) -> web.StreamResponse:
    """Accept a JPEG/PNG/WebP photo up to 5 MB; store a clean re-encoded copy."""
    user = require_user(request)
    if request.content_type != "multipart/form-data":
        raise BadRequest("Upload the photo with the form on your profile page.")
    data = await request.post()
    field = data.get("photo")
    if not isinstance(field, web.FileField):
        return await _render_profile(request, user, 422, photo_error="Choose a photo to upload.")
    raw = field.file.read(MAX_UPLOAD_BYTES + 1)
    if len(raw) > MAX_UPLOAD_BYTES:
        raise TooLarge("The photo is larger than 5 MB. Choose a smaller one.")
    try:
        processed = await process_photo_async(raw)
    except ImageRejected as exc:
        return await _render_profile(request, user, 422, photo_error=str(exc))
    name = f"{secrets.token_hex(16)}.webp"
    await asyncio.to_thread(_write_file, _photo_path(request.app, name), processed)
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        old = fresh.photo
        fresh.photo = name
        await db.commit()
    if old:
        await asyncio.to_thread(_remove_file, _photo_path(request.app, old))
    flash(request, "Your new photo is saved.", "success")
    raise web.HTTPSeeOther("/profile")


async def photo_delete(request: web.Request) -> web.StreamResponse:
    """Remove the photo."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        old, fresh.photo = fresh.photo, None
        await db.commit()
    if old:
        await asyncio.to_thread(_remove_file, _photo_path(request.app, old))
    flash(request, "Your photo is removed.", "success")
    raise web.HTTPSeeOther("/profile")


async def password_change(request: web.Request) -> web.StreamResponse:
    """Change the password (the current one is required); other sessions and tokens end."""
    user = require_user(request)
    form = await read_form(request)
    errors: dict[str, str] = {}
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        if not await verify_password_async(fresh.password_hash, form.get("current_password", "")):
            errors["current_password"] = "That is not your current password."
        new = form.get("password", "")
        problem = password_problem(new, email=fresh.email, name=fresh.name)
        if problem:
            errors["password"] = problem
        elif form.get("password_confirm", "") != new:
            errors["password_confirm"] = "The two passwords do not match."
        if errors:
            return await _render_profile(request, user, 422, password_errors=errors)
        await set_password(db, fresh, new)
        await end_other_sessions(db, fresh.id, keep=request.get(keys.session_id))
        await db.commit()
    await ws_sessions.end_sessions(request.app, fresh.id, keep=request.get(keys.session_id))
    await account_mail.send_password_changed(request.app, fresh)
    flash(request, "Your password is changed. Other devices were logged out.", "success")
    raise web.HTTPSeeOther("/profile")


async def _booked_together(request: web.Request, tutor_id: int, student_id: int) -> bool:
    async with request.app[keys.sessionmaker]() as db:
        row = (
            await db.execute(
                select(Booking.id)
                .where(Booking.tutor_id == tutor_id, Booking.student_id == student_id)
                .limit(1)
            )
        ).first()
    return row is not None


async def may_see_photo(request: web.Request, owner: User) -> bool:
    """Approved tutors' photos are public; others only to themselves, admins and booked peers."""
    viewer = current_user(request)
    if owner.is_tutor and owner.tutor_status == "approved" and owner.is_active:
        return True
    if viewer is None:
        return False
    if viewer.id == owner.id or viewer.is_admin:
        return True
    if viewer.is_tutor and owner.is_student:
        return await _booked_together(request, viewer.id, owner.id)
    if viewer.is_student and owner.is_tutor:
        return await _booked_together(request, owner.id, viewer.id)
    return False


async def photo(request: web.Request) -> web.StreamResponse:
    """A user's photo, when the viewer may see it (404 otherwise, revealing nothing)."""
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise NotFound("We could not find that photo.") from None
    async with request.app[keys.sessionmaker]() as db:
        owner = await db.get(User, user_id)
    if owner is None or not owner.photo or not await may_see_photo(request, owner):
        raise NotFound("We could not find that photo.")
    path = _photo_path(request.app, owner.photo)
    if not path.is_file():
        raise NotFound("We could not find that photo.")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "image/webp",
            "Cache-Control": "private, max-age=86400",
            "Content-Disposition": "inline",
        },
    )


def setup(app: web.Application) -> None:
    """Register the routes of this area and the `photo_url` template helper."""
    app[keys.templates].globals["photo_url"] = photo_url
    app.router.add_get("/profile", profile_page, name="profile")
    app.router.add_post("/profile", profile_update)
    app.router.add_post("/profile/photo", photo_upload, name="profile_photo")
    app.router.add_post("/profile/photo/delete", photo_delete)
    app.router.add_post("/profile/password", password_change, name="profile_password")
    app.router.add_post("/profile/sessions/end-others", end_sessions)
    app.router.add_get(r"/users/{user_id}/photo", photo, name="user_photo")
