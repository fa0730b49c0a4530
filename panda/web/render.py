"""Jinja2 environment and the `render` helper every page handler uses."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from panda import __version__, keys

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


def _local_time(value: datetime | None, tz: str = "UTC", fmt: str = "%a %d %b %Y, %H:%M") -> str:
    """Format an aware UTC datetime in the viewer's time zone."""
    if value is None:
        return ""
    try:
        zone = ZoneInfo(tz)
    except Exception:
        zone = ZoneInfo("UTC")
    return value.astimezone(zone).strftime(fmt)


def create_environment() -> jinja2.Environment:
    """Autoescaping environment over templates/ with our filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=False,
    )
    env.filters["localtime"] = _local_time
    env.globals["version"] = __version__
    return env


def template_context(request: web.Request) -> dict[str, Any]:
    """What every page gets: the user, the CSRF token, flash messages, the CSP nonce."""
    from panda.web.auth import pop_flashes
    from panda.web.csrf import csrf_token

    user = request.get(keys.user)
    return {
        "request": request,
        "current_user": user,
        "csrf_token": csrf_token(request),
        "flashes": pop_flashes(request),
        "tz": user.timezone if user else "UTC",
        "path": request.path,
        "nav_extra": request.app.get(NAV_EXTRA_KEY, []),
    }


NAV_EXTRA_KEY: web.AppKey[list[dict[str, str]]] = web.AppKey("nav_extra")


def render(
    request: web.Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Render templates/<name> as an HTML response."""
    env = request.app[keys.templates]
    ctx = template_context(request)
    if context:
        ctx.update(context)
    body = env.get_template(name).render(ctx)
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=headers
    )
