"""Every typed key the application and requests carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import jinja2
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from panda.config import Settings
    from panda.mail import Mailer
    from panda.store.models import User

settings: web.AppKey[Settings] = web.AppKey("settings")
engine: web.AppKey[AsyncEngine] = web.AppKey("engine")
sessionmaker: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessionmaker")
templates: web.AppKey[jinja2.Environment] = web.AppKey("templates")
mailer: web.AppKey[Mailer] = web.AppKey("mailer")
# Area modules keep their long-lived services here (rooms, bus, rate limiter, recorder, ...),
# each under its own AppKey declared in its module.
services: web.AppKey[dict[str, Any]] = web.AppKey("services")
# Async callables (request, user) -> dict merged into the dashboard's template context.
dashboard_providers: web.AppKey[list[Any]] = web.AppKey("dashboard_providers")

# Per request: the logged-in user (or None) and how they authenticated ("session" | "bearer").
user: web.RequestKey[User | None] = web.RequestKey("user")
auth_method: web.RequestKey[str | None] = web.RequestKey("auth_method")
session_id: web.RequestKey[str | None] = web.RequestKey("session_id")
csp_nonce: web.RequestKey[str] = web.RequestKey("csp_nonce")
