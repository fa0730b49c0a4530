"""The application factory: one place that wires settings, database, mail and every area."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import aiohttp_session
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from panda import keys
from panda.config import Settings
from panda.mail import Mailer
from panda.store.db import create_engine, create_sessionmaker
from panda.web.auth import SESSION_LIFETIME, auth_middleware
from panda.web.middleware import csrf_middleware, error_middleware, security_headers_middleware
from panda.web.render import create_environment
from panda.web.routes import setup_routes

log = logging.getLogger(__name__)

# Profile photos are the largest upload (5 MB); leave room for the multipart envelope.
MAX_REQUEST_BYTES = 6 * 1024 * 1024


def _cookie_storage(settings: Settings) -> EncryptedCookieStorage:
    # Bytes: aiohttp-session base64-encodes them into a Fernet key.
    key = hashlib.sha256(settings.secret_key.encode()).digest()
    return EncryptedCookieStorage(
        key,
        cookie_name="panda_session",
        httponly=True,
        samesite="Lax",
        secure=settings.secure_cookies,
        max_age=int(SESSION_LIFETIME.total_seconds()),
    )


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[keys.settings].database_url)
    app[keys.engine] = engine
    app[keys.sessionmaker] = create_sessionmaker(engine)
    yield
    await engine.dispose()


def create_app(settings: Settings) -> web.Application:
    """Build the whole application for `settings`; no I/O happens until it starts."""
    app = web.Application(
        client_max_size=MAX_REQUEST_BYTES,
        middlewares=[
            security_headers_middleware,
            error_middleware,
            aiohttp_session.session_middleware(_cookie_storage(settings)),
            auth_middleware,
            csrf_middleware,
        ],
    )
    app[keys.settings] = settings
    app[keys.templates] = create_environment()
    app[keys.mailer] = Mailer(settings)
    app[keys.services] = {}
    app.cleanup_ctx.append(_database_ctx)
    setup_routes(app)
    return app
