"""The route table: each area module adds its own routes and resources."""

from __future__ import annotations

from aiohttp import web

from panda.web import (
    accounts,
    admin,
    admin_market,
    api_auth,
    bookings,
    calendar,
    calls,
    chat,
    home,
    live,
    market_dashboard,
    notifications,
    openapi,
    profile,
    questions,
    recordings,
    tutors,
)
from panda.web.render import STATIC_DIR

# Area modules, each with `setup(app)`; add new areas here.
AREAS = [
    home,
    accounts,
    profile,
    admin,
    api_auth,
    tutors,
    bookings,
    calendar,
    notifications,
    market_dashboard,
    admin_market,
    questions,
    calls,
    chat,
    live,
    recordings,
]


def setup_routes(app: web.Application) -> None:
    """Register every area's routes, the OpenAPI document and static files."""
    for area in AREAS:
        area.setup(app)
    openapi.setup(app, AREAS)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
