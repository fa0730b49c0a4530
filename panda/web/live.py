"""`/ws/live`: one websocket per browser tab carrying JSON events for the logged-in user.

Events (server → client): `hello`, `message` (chat; exactly once and in order per conversation),
`read` (receipts), `unread`, `presence`, plus whatever other areas publish with
`publish_to_user` / `publish_to_admins` (`notification`, `booking`, `sessions`, ...).
Client → server: `watch` {conversation_id, after_seq} (resume a conversation from the last seq
the page has), `read` {conversation_id, seq}, `ping`.

A tab that reconnects names the conversations it watches in the URL:
`/ws/live?watch=<conversation id>:<last seq it has>` (repeatable; `watch=<id>` means "from now").
Those are filled from the database before any bus event is forwarded, so nothing published
around the reconnect can overtake the fill.

Delivery rule per watched conversation: the connection remembers the last seq it delivered; a bus
event that skips ahead is preceded by the missing messages read from the database, an event at or
below it is dropped. After the bus reconnects (Redis restarted) every watched conversation is
re-read from the database. So a page never loses or duplicates a message. Every `message` event
says `"watched": true` when it comes under that rule. Messages of conversations the connection
does not watch (yet) are passed on as they come with `"watched": false` (for unread badges): they
may arrive out of order and again in the fill of a later `watch`, so a page must not move its
resume point with them and must dedupe by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from sqlalchemy import select

from panda import chat, keys
from panda.bus import BUS, RESYNC_TYPE, BusUnavailable, Subscription, setup_bus
from panda.errors import PandaError
from panda.store import chat as store
from panda.store.models import ConversationMember, User
from panda.web import ws_sessions

log = logging.getLogger(__name__)

ADMIN_CHANNEL = "admins"
PRESENCE_TTL = 60.0
PRESENCE_REFRESH = 20.0
FILL_PAGE = 200
MAX_URL_WATCHES = 50
MAX_CLIENT_MESSAGE = 4096
CLIENT_MESSAGES_PER_SECOND = 20

SnapshotProvider = Callable[[web.Application, User], Awaitable[list[dict[str, Any]]]]
# Other areas append providers here to send their current state when a tab connects
# (e.g. the admin's list of sessions in progress).
LIVE_SNAPSHOTS: web.AppKey[list[SnapshotProvider]] = web.AppKey("live_snapshots", list)
CONNECTIONS: web.AppKey[set[LiveConnection]] = web.AppKey("live_connections", set)


async def publish_to_user(app: web.Application, user_id: int, event: dict[str, Any]) -> bool:
    """Push `event` (a JSON-able dict with a "type") to every open tab of `user_id`."""
    return await app[BUS].publish(chat.user_channel(user_id), event)


async def publish_to_admins(app: web.Application, event: dict[str, Any]) -> bool:
    """Push `event` to every open tab of every admin (e.g. {"type": "sessions", ...})."""
    return await app[BUS].publish(ADMIN_CHANNEL, event)


async def sessions_in_progress(app: web.Application) -> dict[str, Any]:
    """The admins' `sessions` event: bookings in progress or scheduled for right now."""
    from sqlalchemy.orm import aliased

    from panda.store.models import Booking
    from panda.store.types import utcnow

    student = aliased(User)
    tutor = aliased(User)
    now = utcnow()
    async with app[keys.sessionmaker]() as db:
        rows = await db.execute(
            select(Booking, student.name, tutor.name)
            .join(student, student.id == Booking.student_id)
            .join(tutor, tutor.id == Booking.tutor_id)
            .where(
                (Booking.status == "in_progress")
                | (
                    (Booking.status == "scheduled")
                    & (Booking.start_at <= now)
                    & (Booking.end_at > now)
                )
            )
            .order_by(Booking.start_at)
        )
        sessions = [
            {
                "id": booking.id,
                "subject": booking.subject,
                "status": booking.status,
                "student": student_name,
                "tutor": tutor_name,
                "start_at": booking.start_at.isoformat(),
                "end_at": booking.end_at.isoformat(),
            }
            for booking, student_name, tutor_name in rows.all()
        ]
    return {"type": "sessions", "sessions": sessions}


async def publish_sessions_changed(app: web.Application) -> bool:
    """Recompute the sessions in progress and push them to every admin tab (call it when a
    session starts or ends)."""
    return await publish_to_admins(app, await sessions_in_progress(app))


async def _admin_sessions_snapshot(app: web.Application, user: User) -> list[dict[str, Any]]:
    return [await sessions_in_progress(app)] if user.is_admin else []


def presence_key(user_id: int) -> str:
    """Bus presence set of a user's live connections."""
    return f"presence:user:{user_id}"


async def partner_ids(app: web.Application, user_id: int) -> list[int]:
    """Everyone `user_id` has a conversation with."""
    mine = select(ConversationMember.conversation_id).where(ConversationMember.user_id == user_id)
    async with app[keys.sessionmaker]() as db:
        rows = await db.execute(
            select(ConversationMember.user_id)
            .where(
                ConversationMember.conversation_id.in_(mine),
                ConversationMember.user_id != user_id,
            )
            .distinct()
        )
        return [int(r) for r in rows.scalars()]


class LiveConnection:
    """One tab's websocket: a bus subscription, cursors per conversation, presence."""

    def __init__(
        self,
        app: web.Application,
        user: User,
        ws: web.WebSocketResponse,
        watches: dict[int, int | None] | None = None,
    ) -> None:
        self.app = app
        self.user = user
        self.ws = ws
        self.initial_watches = dict(watches or {})
        self.conn_id = f"{app[BUS].node_id}/{secrets.token_hex(8)}"
        self.cursors: dict[int, int] = {}
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.sub: Subscription | None = None

    async def send(self, event: dict[str, Any]) -> None:
        """Send one event (dropped silently once the socket is closing)."""
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(event))

    async def run(self) -> None:
        """Serve the connection until the client leaves or the server stops."""
        bus = self.app[BUS]
        channels = [chat.user_channel(self.user.id)]
        if self.user.is_admin:
            channels.append(ADMIN_CHANNEL)
        # Subscribe before reading anything, so nothing published from here on is missed.
        self.sub = await bus.subscribe(*channels)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._presence_join()
            async with self.app[keys.sessionmaker]() as db:
                total = await store.unread_total(db, self.user.id)
            await self.send(
                {
                    "type": "hello",
                    "user_id": self.user.id,
                    "node": bus.node_id,
                    "unread_total": total,
                }
            )
            for provider in self.app.get(LIVE_SNAPSHOTS, []):
                try:
                    for event in await provider(self.app, self.user):
                        await self.send(event)
                except Exception:
                    log.exception("live snapshot provider failed")
            # Bus events wait in the subscription until these fills are sent (see module doc).
            for conversation_id, after in self.initial_watches.items():
                try:
                    await self._watch(conversation_id, after)
                except PandaError as exc:
                    await self.send(
                        {
                            "type": "error",
                            "error": exc.message,
                            "status": exc.status,
                            "conversation_id": conversation_id,
                        }
                    )
            tasks = [
                asyncio.create_task(self._read_client()),
                asyncio.create_task(self._forward_bus()),
                asyncio.create_task(self._refresh_presence()),
            ]
            await self._process()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.sub.close()
            await asyncio.shield(self._presence_leave())

    # -- sources ---------------------------------------------------------------------------------
    async def _read_client(self) -> None:
        loop = asyncio.get_running_loop()
        window_start, count = loop.time(), 0
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                now = loop.time()
                if now - window_start >= 1.0:
                    window_start, count = now, 0
                count += 1
                if count > CLIENT_MESSAGES_PER_SECOND:
                    if count == CLIENT_MESSAGES_PER_SECOND + 1:
                        await self.inbox.put(("error", {"error": "Slow down.", "status": 429}))
                    continue
                if len(msg.data) > MAX_CLIENT_MESSAGE:
                    await self.inbox.put(("error", {"error": "Message too large."}))
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await self.inbox.put(("error", {"error": "Send JSON objects."}))
                    continue
                if isinstance(data, dict):
                    await self.inbox.put(("client", data))
                else:
                    await self.inbox.put(("error", {"error": "Send JSON objects."}))
        finally:
            await self.inbox.put(("closed", {}))

    async def _forward_bus(self) -> None:
        assert self.sub is not None
        while True:
            await self.inbox.put(("bus", await self.sub.get()))

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            with contextlib.suppress(BusUnavailable):
                await self.app[BUS].presence_add(
                    presence_key(self.user.id), self.conn_id, PRESENCE_TTL
                )

    # -- the single consumer -------------------------------------------------------------------
    async def _process(self) -> None:
        while True:
            source, data = await self.inbox.get()
            if source == "closed":
                return
            try:
                if source == "bus":
                    await self._on_bus(data)
                elif source == "client":
                    await self._on_client(data)
                else:
                    await self.send({"type": "error", **data})
            except ConnectionResetError:
                return
            except PandaError as exc:
                await self.send({"type": "error", "error": exc.message, "status": exc.status})

    async def _on_bus(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == RESYNC_TYPE:
            with contextlib.suppress(BusUnavailable):
                await self.app[BUS].presence_add(
                    presence_key(self.user.id), self.conn_id, PRESENCE_TTL
                )
            for conversation_id in list(self.cursors):
                await self._fill(conversation_id)
            async with self.app[keys.sessionmaker]() as db:
                total = await store.unread_total(db, self.user.id)
            await self.send({"type": "unread", "unread_total": total})
            return
        if kind == "message":
            await self._on_message(event)
            return
        await self.send(event)

    async def _on_message(self, event: dict[str, Any]) -> None:
        conversation_id = int(event["conversation_id"])
        seq = int(event["message"]["seq"])
        cursor = self.cursors.get(conversation_id)
        if cursor is None:
            # Not watched by this connection (e.g. the conversation list): a notification only.
            await self.send({**event, "watched": False})
            return
        if seq <= cursor:
            return  # already delivered (from the database or an earlier event)
        if seq > cursor + 1:
            # Events can overtake each other between processes: deliver in stored order.
            await self._fill(conversation_id)
            if seq <= self.cursors[conversation_id]:
                return
        await self.send({**event, "watched": True})
        self.cursors[conversation_id] = seq

    async def _fill(self, conversation_id: int) -> None:
        """Send every stored message after the cursor, oldest first."""
        while True:
            after = self.cursors.get(conversation_id, 0)
            async with self.app[keys.sessionmaker]() as db:
                rows = await store.messages_page(db, conversation_id, after=after, limit=FILL_PAGE)
            for message, name in rows:
                await self.send(
                    {
                        "type": "message",
                        "conversation_id": conversation_id,
                        "message": store.message_json(message, name),
                        "watched": True,
                    }
                )
                self.cursors[conversation_id] = message.seq
            if len(rows) < FILL_PAGE:
                return

    async def _on_client(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "watch":
            conversation_id = _int_field(data, "conversation_id")
            after = data.get("after_seq")
            if after is not None and (
                not isinstance(after, int) or isinstance(after, bool) or after < 0
            ):
                raise _ClientError("after_seq must be a whole number.")
            await self._watch(conversation_id, after)
        elif kind == "read":
            conversation_id = _int_field(data, "conversation_id")
            seq = _int_field(data, "seq")
            await chat.mark_read(self.app, self.user, conversation_id, seq)
        else:
            raise _ClientError("Unknown message type.")

    async def _watch(self, conversation_id: int, after: int | None) -> None:
        """Start (or continue) delivering a conversation after seq `after` (None: from now)."""
        async with self.app[keys.sessionmaker]() as db:
            conversation, _ = await store.conversation_for(db, conversation_id, self.user.id)
        start = conversation.last_seq if after is None else after
        known = self.cursors.get(conversation_id)
        # Watching again on the same connection never goes back (nothing is sent twice).
        self.cursors[conversation_id] = start if known is None else max(start, known)
        await self._fill(conversation_id)
        await self.send(
            {
                "type": "watching",
                "conversation_id": conversation_id,
                "seq": self.cursors[conversation_id],
            }
        )

    # -- presence --------------------------------------------------------------------------------
    async def _presence_join(self) -> None:
        try:
            count = await self.app[BUS].presence_add(
                presence_key(self.user.id), self.conn_id, PRESENCE_TTL
            )
        except BusUnavailable:
            return
        if count == 1:
            await self._announce(online=True)

    async def _presence_leave(self) -> None:
        try:
            count = await self.app[BUS].presence_remove(presence_key(self.user.id), self.conn_id)
        except BusUnavailable:
            return
        if count == 0:
            await self._announce(online=False)

    async def _announce(self, online: bool) -> None:
        event = {"type": "presence", "user_id": self.user.id, "online": online}
        try:
            partners = await partner_ids(self.app, self.user.id)
        except Exception:
            log.exception("presence: could not load partners")
            return
        await chat.publish_to_members(self.app[BUS], partners, event)


class _ClientError(PandaError):
    status = 400


def _int_field(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _ClientError(f"{name} must be a whole number.")
    return value


def parse_watches(values: list[str]) -> dict[int, int | None]:
    """`watch` query values (`<conversation id>` or `<id>:<after seq>`) as {id: after seq}.

    Raises ValueError on anything else, or on more than MAX_URL_WATCHES conversations.
    """
    watches: dict[int, int | None] = {}
    for value in values:
        conv, sep, seq = value.partition(":")
        if not conv.isdigit() or (sep and not seq.isdigit()) or len(value) > 40:
            raise ValueError(f"bad watch value {value!r}")
        watches[int(conv)] = int(seq) if sep else None
    if len(watches) > MAX_URL_WATCHES:
        raise ValueError("too many watches")
    return watches


def origin_allowed(request: web.Request) -> bool:
    """Browsers send Origin on websocket upgrades: it must be our own site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (API client); the session cookie or token still applies
    allowed = {request.app[keys.settings].base_url.rstrip("/")}
    host = request.headers.get("Host")
    if host:
        allowed.add(f"{request.scheme}://{host}")
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" in allowed


async def live_ws(request: web.Request) -> web.StreamResponse:
    """Upgrade to the live-events websocket for the logged-in user."""
    user = request.get(keys.user)
    if user is None:
        return web.json_response({"error": "Please log in."}, status=401)
    if not origin_allowed(request):
        return web.json_response({"error": "Cross-site websocket refused."}, status=403)
    try:
        watches = parse_watches(request.query.getall("watch", []))
    except ValueError:
        return web.json_response(
            {"error": f"watch must be <conversation id>[:<seq>], at most {MAX_URL_WATCHES}."},
            status=400,
        )
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(request)
    conn = LiveConnection(request.app, user, ws, watches)
    request.app[CONNECTIONS].add(conn)
    try:
        await conn.run()
    finally:
        request.app[CONNECTIONS].discard(conn)
        if not ws.closed:
            await ws.close()
    return ws


async def _close_all(app: web.Application) -> None:
    for conn in list(app[CONNECTIONS]):
        with contextlib.suppress(Exception):
            await conn.ws.close(code=1001, message=b"server shutdown")


def setup(app: web.Application) -> None:
    """Register /ws/live and make sure the bus exists."""
    setup_bus(app)
    app[CONNECTIONS] = set()
    app.setdefault(LIVE_SNAPSHOTS, []).append(_admin_sessions_snapshot)
    app.on_shutdown.append(_close_all)
    app.router.add_get("/ws/live", live_ws, name="live_ws")
    ws_sessions.setup(app)
