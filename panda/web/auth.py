"""Who is asking: browser sessions (server-side rows behind a signed cookie) and bearer tokens."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp_session
from aiohttp import web
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from panda import keys
from panda.errors import Forbidden, NotAuthenticated
from panda.store.models import User, UserSession
from panda.store.types import utcnow

SESSION_LIFETIME = timedelta(days=14)
API_TOKEN_LIFETIME = timedelta(hours=1)
_BROWSER_SESSION: web.RequestKey[aiohttp_session.Session] = web.RequestKey("browser_session")
_LAST_SEEN_GRANULARITY = timedelta(minutes=5)


def browser_session(request: web.Request) -> aiohttp_session.Session | None:
    """The cookie session loaded by the middleware (None outside it)."""
    return request.get(_BROWSER_SESSION)


def current_user(request: web.Request) -> User | None:
    """The logged-in user, or None."""
    return request.get(keys.user)


def require_user(request: web.Request) -> User:
    """The logged-in, active user; NotAuthenticated otherwise."""
    user = request.get(keys.user)
    if user is None:
        raise NotAuthenticated("Please log in to continue.")
    return user


def require_role(request: web.Request, *roles: str) -> User:
    """The logged-in user if their role is one of `roles`; Forbidden otherwise."""
    user = require_user(request)
    if user.role not in roles:
        raise Forbidden("You do not have access to this page.")
    return user


def require_verified(request: web.Request) -> User:
    """The logged-in user with a verified e-mail address; Forbidden otherwise."""
    user = require_user(request)
    if not user.is_verified:
        raise Forbidden("Please verify your e-mail address first: check your inbox.")
    return user


def flash(request: web.Request, message: str, category: str = "info") -> None:
    """Show `message` on the next page this browser renders."""
    session = browser_session(request)
    if session is not None:
        session.setdefault("flashes", []).append([category, message])
        session.changed()


def pop_flashes(request: web.Request) -> list[tuple[str, str]]:
    """Messages queued for this browser, removed as they are read."""
    session = browser_session(request)
    if session is None or not session.get("flashes"):
        return []
    items = session.pop("flashes")
    return [(str(c), str(m)) for c, m in items]


async def login_user(request: web.Request, db: AsyncSession, user: User) -> str:
    """Start a fresh server-side session for `user` (a new cookie: no fixation)."""
    sid = secrets.token_urlsafe(32)
    db.add(
        UserSession(
            id=sid,
            user_id=user.id,
            ip=request.remote,
            user_agent=(request.headers.get("User-Agent") or "")[:255],
        )
    )
    old = browser_session(request)
    flashes = old.get("flashes", []) if old is not None else []
    session = await aiohttp_session.new_session(request)
    session["sid"] = sid
    session["csrf"] = secrets.token_urlsafe(32)
    if flashes:
        session["flashes"] = flashes
    request[_BROWSER_SESSION] = session
    request[keys.user] = user
    request[keys.session_id] = sid
    return sid


async def logout_user(request: web.Request, db: AsyncSession) -> None:
    """End this browser's session on the server and drop the cookie."""
    sid = request.get(keys.session_id)
    if sid:
        await db.execute(
            update(UserSession).where(UserSession.id == sid).values(revoked_at=utcnow())
        )
    session = browser_session(request)
    if session is not None:
        session.invalidate()
    request[keys.user] = None
    request[keys.session_id] = None


async def end_other_sessions(db: AsyncSession, user_id: int, keep: str | None = None) -> None:
    """Revoke every session of `user_id` except `keep` (after a password change)."""
    stmt = update(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
    )
    if keep:
        stmt = stmt.where(UserSession.id != keep)
    await db.execute(stmt.values(revoked_at=utcnow()))


def _token_serializer(request_or_app: web.Request | web.Application) -> URLSafeTimedSerializer:
    app = request_or_app.app if isinstance(request_or_app, web.Request) else request_or_app
    return URLSafeTimedSerializer(app[keys.settings].secret_key, salt="panda.api-token")


def issue_api_token(app: web.Application, user: User) -> tuple[str, Any]:
    """A short-lived signed bearer token; it dies when the password changes."""
    token = _token_serializer(app).dumps(
        {"uid": user.id, "pwc": int(user.password_changed_at.timestamp())}
    )
    return token, utcnow() + API_TOKEN_LIFETIME


async def _user_from_bearer(request: web.Request, db: AsyncSession, token: str) -> User | None:
    try:
        data = _token_serializer(request).loads(
            token, max_age=int(API_TOKEN_LIFETIME.total_seconds())
        )
    except (BadSignature, SignatureExpired):
        return None
    if not isinstance(data, dict):
        return None
    user = await db.get(User, data.get("uid"))
    if user is None or not user.is_active:
        return None
    if int(user.password_changed_at.timestamp()) != data.get("pwc"):
        return None
    return user


async def _user_from_session(
    db: AsyncSession, session: aiohttp_session.Session
) -> tuple[User | None, str | None]:
    sid = session.get("sid")
    if not isinstance(sid, str):
        return None, None
    row = (
        await db.execute(
            select(UserSession, User)
            .join(User, User.id == UserSession.user_id)
            .where(UserSession.id == sid)
        )
    ).first()
    if row is None:
        return None, None
    user_session, user = row
    now = utcnow()
    if (
        user_session.revoked_at is not None
        or not user.is_active
        or user_session.created_at + SESSION_LIFETIME < now
    ):
        return None, None
    if now - user_session.last_seen_at > _LAST_SEEN_GRANULARITY:
        user_session.last_seen_at = now
        await db.commit()
    return user, sid


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Load the cookie session and the user (session or bearer) before every handler."""
    request[keys.user] = None
    request[keys.auth_method] = None
    request[keys.session_id] = None
    if request.path.startswith("/static/"):
        return await handler(request)
    request[_BROWSER_SESSION] = await aiohttp_session.get_session(request)
    auth_header = request.headers.get("Authorization", "")
    async with request.app[keys.sessionmaker]() as db:
        if auth_header.lower().startswith("bearer ") and request.path.startswith("/api/"):
            user = await _user_from_bearer(request, db, auth_header[7:].strip())
            if user is None:
                raise NotAuthenticated("The access token is invalid or expired.")
            request[keys.user] = user
            request[keys.auth_method] = "bearer"
        else:
            user, sid = await _user_from_session(db, request[_BROWSER_SESSION])
            if user is not None:
                request[keys.user] = user
                request[keys.auth_method] = "session"
                request[keys.session_id] = sid
    return await handler(request)
