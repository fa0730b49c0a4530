"""The landing page, the dashboard entry point and the health check."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import text

from panda import __version__, keys
from panda.web.auth import require_user
from panda.web.render import render

OPENAPI: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "Liveness and database status",
            "security": [],
            "responses": {
                "200": {"description": "Healthy"},
                "503": {"description": "The database is unreachable"},
            },
        }
    }
}


async def index(request: web.Request) -> web.StreamResponse:
    """Landing page: what Panda Professor is and how to get started."""
    return render(request, "index.html")


async def dashboard(request: web.Request) -> web.StreamResponse:
    """The logged-in user's home; each role gets its own."""
    user = require_user(request)
    ctx: dict[str, Any] = {"user": user}
    for provider in request.app.get(keys.dashboard_providers, []):
        ctx.update(await provider(request, user))
    return render(request, "dashboard.html", ctx)


async def healthz(request: web.Request) -> web.Response:
    """JSON with the database status and the version (used by Docker's HEALTHCHECK)."""
    try:
        async with request.app[keys.sessionmaker]() as db:
            await db.execute(text("SELECT 1"))
        database = "ok"
    except Exception:
        database = "unavailable"
    status = 200 if database == "ok" else 503
    return web.json_response(
        {
            "status": "ok" if status == 200 else "degraded",
            "database": database,
            "version": __version__,
        },
        status=status,
    )


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.router.add_get("/", index, name="index")
    app.router.add_get("/dashboard", dashboard, name="dashboard")
    app.router.add_get("/healthz", healthz, name="healthz")
