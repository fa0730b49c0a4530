"""Websockets belong to the login session that opened them: when it ends (logout, password
change or reset, deactivation) the server closes them, in every process.

Every websocket a browser session opens (`/ws/live`, the call socket) is registered when its
handshake is prepared. `end_sessions` tells every process over the bus; each closes its matching
sockets with code 4005. A periodic check against the database catches what a bus outage lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import select

from panda import keys
from panda.bus import BUS, RESYNC_TYPE, BusUnavailable
from panda.store.models import User, UserSession
from panda.store.types import utcnow
from panda.web.auth import SESSION_LIFETIME

log = logging.getLogger(__name__)

CHANNEL = "sessions:ended"
CLOSE_SESSION_ENDED = 4005  # 4001 already means "replaced" on the call socket
RECHECK_INTERVAL = 30.0


class SocketRegistry:
    """This process's open websockets by login session id."""

    def __init__(self) -> None:
        self._sockets: dict[str, weakref.WeakSet[web.WebSocketResponse]] = {}
        self._users: dict[str, int] = {}

    def add(self, sid: str, user_id: int, ws: web.WebSocketResponse) -> None:
        """Remember `ws` as opened by session `sid` of `user_id`."""
        self._sockets.setdefault(sid, weakref.WeakSet()).add(ws)
        self._users[sid] = user_id

    def sids(self) -> list[str]:
        """Sessions with at least one open websocket here."""
        self._prune()
        return list(self._sockets)

    def matching(self, user_id: int, sid: str | None, keep: str | None) -> list[str]:
        """Sessions an end-of-session event names: `sid` alone, or all of `user_id` but `keep`."""
        if sid is not None:
            return [sid] if sid in self._sockets else []
        return [s for s, uid in self._users.items() if uid == user_id and s != keep]

    async def close(self, sids: list[str]) -> int:
        """Close every open websocket of `sids`; how many were closed."""
        closed = 0
        for sid in sids:
            sockets = list(self._sockets.pop(sid, ()))
            self._users.pop(sid, None)
            for ws in sockets:
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close(code=CLOSE_SESSION_ENDED, message=b"session ended")
                    closed += 1
        return closed

    def _prune(self) -> None:
        gone = [s for s, socks in self._sockets.items() if all(w.closed for w in socks)]
        for sid in gone:
            del self._sockets[sid]
            self._users.pop(sid, None)


REGISTRY: web.AppKey[SocketRegistry] = web.AppKey("ws_session_registry", SocketRegistry)


async def end_sessions(
    app: web.Application, user_id: int, *, sid: str | None = None, keep: str | None = None
) -> None:
    """Close the websockets of session `sid`, or of every session of `user_id` except `keep`,
    in every process. Call it after the revocation is committed."""
    event = {"type": "ended", "user_id": user_id, "sid": sid, "keep": keep}
    try:
        sent = await app[BUS].publish(CHANNEL, event)
    except BusUnavailable:
        sent = False
    if not sent:
        # This process at least; the others find out on their next database check.
        registry = app[REGISTRY]
        await registry.close(registry.matching(user_id, sid, keep))


async def revoked_among(app: web.Application, sids: list[str]) -> list[str]:
    """The sessions of `sids` that no longer log anyone in (revoked, user deactivated, gone)."""
    if not sids:
        return []
    async with app[keys.sessionmaker]() as db:
        rows = await db.execute(
            select(UserSession.id)
            .join(User, User.id == UserSession.user_id)
            .where(
                UserSession.id.in_(sids),
                UserSession.revoked_at.is_(None),
                UserSession.created_at > utcnow() - SESSION_LIFETIME,
                User.is_active.is_(True),
            )
        )
        alive = set(rows.scalars())
    return [sid for sid in sids if sid not in alive]


async def recheck(app: web.Application) -> int:
    """Close websockets whose session ended without this process hearing of it."""
    registry = app[REGISTRY]
    return await registry.close(await revoked_among(app, registry.sids()))


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if not isinstance(response, web.WebSocketResponse):
        return
    sid = request.get(keys.session_id)
    user = request.get(keys.user)
    if sid and user is not None:
        request.app[REGISTRY].add(sid, user.id, response)


async def _listen(app: web.Application) -> None:
    registry = app[REGISTRY]
    while True:
        try:
            sub = await app[BUS].subscribe(CHANNEL)
        except BusUnavailable:
            await asyncio.sleep(5)  # the periodic database check covers the meantime
            continue
        break
    async with sub:
        while True:
            event = await sub.get()
            try:
                if event.get("type") == RESYNC_TYPE:
                    await recheck(app)
                elif event.get("type") == "ended":
                    sids = registry.matching(
                        int(event["user_id"]), event.get("sid"), event.get("keep")
                    )
                    await registry.close(sids)
            except Exception:
                log.exception("closing websockets of ended sessions failed")


async def _recheck_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(RECHECK_INTERVAL)
        try:
            await recheck(app)
        except Exception:
            log.exception("websocket session check failed")


async def _ctx(app: web.Application) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(_listen(app)), asyncio.create_task(_recheck_forever(app))]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def setup(app: web.Application) -> None:
    """Register websockets as they open and close them when their session ends (needs the
    bus: call after `setup_bus`)."""
    app[REGISTRY] = SocketRegistry()
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_ctx)
