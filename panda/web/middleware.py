"""Cross-cutting middlewares: error pages, security headers, CSRF enforcement."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from panda import keys
from panda.errors import NotAuthenticated, PandaError, RateLimited
from panda.web.csrf import SAFE_METHODS, check_csrf
from panda.web.render import render

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": (
        "camera=(self), microphone=(self), display-capture=(self), geolocation=()"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
}
_STATUS_TITLES = {
    400: "Bad request",
    401: "Please log in",
    403: "Not allowed",
    404: "Page not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Please check your input",
    429: "Too many attempts",
    500: "Something went wrong",
}


def is_api(request: web.Request) -> bool:
    """True for the JSON API, whose errors are JSON."""
    return request.path.startswith("/api/")


def error_response(
    request: web.Request,
    status: int,
    message: str,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The error as JSON under /api/, as a page elsewhere."""
    if is_api(request):
        body: dict[str, object] = {"error": message}
        if fields:
            body["fields"] = fields
        return web.json_response(body, status=status, headers=headers)
    title = _STATUS_TITLES.get(status, "Error")
    try:
        return render(
            request,
            "error.html",
            {"status": status, "title": title, "message": message},
            status=status,
            headers=headers,
        )
    except Exception:
        log.exception("error page failed to render")
        return web.Response(text=f"{status} {title}: {message}", status=status, headers=headers)


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add our security headers to every response that does not set its own."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        for name, value in SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        raise
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn domain errors and HTTP errors into clear pages/JSON; never show a traceback."""
    try:
        return await handler(request)
    except NotAuthenticated as exc:
        if is_api(request) or request.method not in SAFE_METHODS:
            return error_response(request, 401, exc.message)
        raise web.HTTPSeeOther(f"/login?next={request.rel_url}") from None
    except RateLimited as exc:
        return error_response(
            request, 429, exc.message, headers={"Retry-After": str(exc.retry_after)}
        )
    except PandaError as exc:
        return error_response(request, exc.status, exc.message, exc.fields)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, 413, "That upload is too large.")
    except web.HTTPException as exc:
        if exc.status >= 400 and (exc.text is None or exc.content_type == "text/plain"):
            message = {
                404: "We could not find that page.",
                405: "That action is not available here.",
            }.get(exc.status, exc.reason)
            return error_response(request, exc.status, message)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if request.app[keys.settings].debug:
            raise
        return error_response(request, 500, "We hit an unexpected problem. Please try again.")


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Deny unsafe requests without the session's CSRF token (bearer-token API calls excepted)."""
    if request.method in SAFE_METHODS or request.get(keys.auth_method) == "bearer":
        return await handler(request)
    if request.path == "/api/auth/token":
        # Exchanges credentials for a bearer token; carries no ambient authority.
        return await handler(request)
    submitted = request.headers.get("X-CSRF-Token")
    if submitted is None and not is_api(request):
        ctype = request.content_type
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            value = form.get("csrf_token")
            submitted = value if isinstance(value, str) else None
    check_csrf(request, submitted)
    return await handler(request)
