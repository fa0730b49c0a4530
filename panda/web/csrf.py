"""CSRF tokens: one random token per browser session, checked on every unsafe request."""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

from panda.errors import Forbidden

_SESSION_FIELD = "csrf"
_CACHE: web.RequestKey[str] = web.RequestKey("csrf_cached")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(request: web.Request) -> str:
    """The session's CSRF token, created on first use."""
    cached = request.get(_CACHE)
    if cached:
        return cached
    from panda.web.auth import browser_session

    session = browser_session(request)
    if session is None:
        return ""
    token = session.get(_SESSION_FIELD)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[_SESSION_FIELD] = token
    request[_CACHE] = token
    return token


def check_csrf(request: web.Request, submitted: str | None) -> None:
    """Raise Forbidden unless `submitted` matches the session's token."""
    expected = csrf_token(request)
    if not submitted or not expected or not hmac.compare_digest(submitted, expected):
        raise Forbidden(
            "Your form expired or came from another site. Reload the page and try again."
        )
