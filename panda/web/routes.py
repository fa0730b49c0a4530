"""The route table: each area module adds its own routes and resources."""

from __future__ import annotations

from aiohttp import web

from panda.web import (
    accounts,
    admin_market,
    bookings,
    calendar,
    home,
    market_dashboard,
    notifications,
    openapi,
    questions,
    tutors,
)
from panda.web.render import STATIC_DIR

# Area modules, each with `setup(app)`; add new areas here.
AREAS = [
    home,
    accounts,
    tutors,
    bookings,
    calendar,
    notifications,
    market_dashboard,
    admin_market,
    questions,
]


def setup_routes(app: web.Application) -> None:
    """Register every area's routes, the OpenAPI document and static files."""
    for area in AREAS:
        area.setup(app)
    openapi.setup(app, AREAS)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
