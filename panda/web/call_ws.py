"""The signalling websocket of a call: `/ws/sessions/<id>/call` (protocol in docs/signalling.md).

Identity comes from the session cookie and the booking, never from the client. Every message is
size-limited and shape-checked before it reaches the media layer; a bad one gets an `error` back
and changes nothing. A participant whose socket dies (no pong to the 5 s heartbeat) is removed
from the media room and the others are told within seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from panda import keys
from panda.errors import Forbidden
from panda.media.errors import SignalError
from panda.store import calls as store
from panda.store.models import User
from panda.web.auth import current_user
from panda.web.call_placement import PLACEMENT

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024  # a browser offer with screen share is ~15 KB
HARD_MESSAGE_BYTES = 1024 * 1024  # beyond this aiohttp closes the socket (1009)
MAX_SDP_CHARS = 60_000
MAX_CANDIDATE_CHARS = 1024
MAX_SOURCES = 16
HEARTBEAT_SECONDS = 5.0
JOIN_TIMEOUT_SECONDS = 20.0
# Token bucket per connection: trickle ICE bursts fit easily, a flood does not.
RATE_PER_SECOND = 30.0
RATE_BURST = 60.0
# A client that keeps flooding after being told is disconnected.
MAX_DROPPED = 300
JOINS_PER_WINDOW = 6
JOIN_WINDOW_SECONDS = 10.0

CLIENT_TYPES = frozenset({"join", "offer", "answer", "ice-candidate", "leave", "media-state"})
SERVER_TYPES = frozenset(
    {
        "join",
        "offer",
        "answer",
        "ice-candidate",
        "leave",
        "media-state",
        "participant-joined",
        "participant-left",
        "participant-state",
        "error",
        "redirect",
        "recording",
    }
)
SOURCES = frozenset({"camera", "microphone", "screen"})
CLOSE_REPLACED = 4001
CLOSE_ENDED = 4002
CLOSE_NOT_OPEN = 4003
CLOSE_REDIRECTED = 4004
CLOSE_POLICY = 4008

SendFn = Callable[[dict[str, Any]], Awaitable[None]]


def room_key(booking_id: int) -> str:
    """The media room key of a booked session."""
    return f"session-{booking_id}"


class MessageError(Exception):
    """A client message broke the protocol; `code` goes back to the browser."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bad(message: str) -> MessageError:
    return MessageError("bad-message", message)


def _sdp(msg: dict[str, Any]) -> str:
    sdp = msg.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise _bad("'sdp' must be a non-empty string.")
    if len(sdp) > MAX_SDP_CHARS:
        raise MessageError("too-large", "The session description is too long.")
    if "\x00" in sdp:
        raise _bad("'sdp' contains a NUL character.")
    return sdp


def validate(raw: str) -> dict[str, Any]:
    """Parse and shape-check one client message; return a clean copy with known keys only."""
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise MessageError("too-large", f"Messages are limited to {MAX_MESSAGE_BYTES} bytes.")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise _bad("Messages must be JSON.") from None
    if not isinstance(msg, dict):
        raise _bad("A message must be a JSON object.")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise MessageError("unknown-type", f"Unknown message type {shown!r}.")
    if kind in ("join", "leave"):
        return {"type": kind}
    if kind == "answer":
        return {"type": "answer", "sdp": _sdp(msg)}
    if kind == "offer":
        sources = msg.get("sources", {})
        if not isinstance(sources, dict) or len(sources) > MAX_SOURCES:
            raise _bad(f"'sources' must be an object with at most {MAX_SOURCES} entries.")
        clean_sources: dict[str, str] = {}
        for mid, source in sources.items():
            if not isinstance(mid, str) or not 0 < len(mid) <= 32:
                raise _bad("Each key of 'sources' must be a media id (1-32 characters).")
            if source not in SOURCES:
                raise _bad("Each source must be 'camera', 'microphone' or 'screen'.")
            clean_sources[mid] = source
        return {"type": "offer", "sdp": _sdp(msg), "sources": clean_sources}
    if kind == "ice-candidate":
        cand = msg.get("candidate")
        if cand is None or cand == "":
            return {"type": "ice-candidate", "candidate": None}
        if not isinstance(cand, dict):
            raise _bad("'candidate' must be an object, null or an empty string.")
        text = cand.get("candidate")
        mid = cand.get("sdpMid")
        index = cand.get("sdpMLineIndex")
        if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS:
            raise _bad("'candidate.candidate' must be a string of at most 1024 characters.")
        if mid is not None and (not isinstance(mid, str) or len(mid) > 32):
            raise _bad("'candidate.sdpMid' must be a short string or null.")
        if index is not None and (
            not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 64
        ):
            raise _bad("'candidate.sdpMLineIndex' must be an integer 0-63 or null.")
        if mid is None and index is None:
            raise _bad("A candidate needs 'sdpMid' or 'sdpMLineIndex'.")
        if text == "":
            return {"type": "ice-candidate", "candidate": None}
        return {
            "type": "ice-candidate",
            "candidate": {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index},
        }
    # media-state
    state: dict[str, Any] = {"type": "media-state"}
    for name in ("audio", "video", "screen"):
        value = msg.get(name)
        if not isinstance(value, bool):
            raise _bad(f"'{name}' must be true or false.")
        state[name] = value
    return state


class TokenBucket:
    """Allows `rate` messages per second with bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """True when one more message is allowed now."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class CallConnection:
    """One participant's signalling socket."""

    def __init__(self, booking_id: int, user: User, role: str, ws: web.WebSocketResponse) -> None:
        self.booking_id = booking_id
        self.user_id = user.id
        self.name = user.name
        self.role = role
        self.ws = ws
        self.participant_id = str(user.id)
        self.media: dict[str, bool] = {"audio": False, "video": False, "screen": False}
        self.connection_state = "new"
        self.joined = False
        self.replaced = False
        # Bumped on every (re)join: messages from a replaced media participant are dropped.
        self.generation = 0
        self._lock = asyncio.Lock()

    async def send(self, msg: dict[str, Any]) -> None:
        """Deliver one message; silently dropped when the socket is gone."""
        if self.ws.closed:
            return
        try:
            async with self._lock:
                await self.ws.send_json(msg)
        except (ConnectionError, RuntimeError):
            pass

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (idempotent)."""
        if not self.ws.closed:
            try:
                await self.ws.close(code=code, message=reason.encode()[:120])
            except (ConnectionError, RuntimeError):
                pass

    def describe(self) -> dict[str, Any]:
        """What the others are told about this participant."""
        return {
            "participant_id": self.participant_id,
            "name": self.name,
            "role": self.role,
            "media": dict(self.media),
            "connection": self.connection_state,
        }


class CallHub:
    """Who is connected to which call, on this server process."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[int, CallConnection]] = {}

    def current(self, booking_id: int, user_id: int) -> CallConnection | None:
        """The live connection of a user in a call."""
        return self.calls.get(booking_id, {}).get(user_id)

    def connections(self, booking_id: int) -> list[CallConnection]:
        """Every joined connection of a call."""
        return list(self.calls.get(booking_id, {}).values())

    def install(self, conn: CallConnection) -> CallConnection | None:
        """Make `conn` the user's connection; returns the one it replaces."""
        room = self.calls.setdefault(conn.booking_id, {})
        old = room.get(conn.user_id)
        room[conn.user_id] = conn
        return old if old is not conn else None

    def remove(self, conn: CallConnection) -> bool:
        """Forget `conn` if it is still current; True when it was."""
        room = self.calls.get(conn.booking_id)
        if not room or room.get(conn.user_id) is not conn:
            return False
        del room[conn.user_id]
        if not room:
            del self.calls[conn.booking_id]
        return True

    async def broadcast(
        self, booking_id: int, msg: dict[str, Any], exclude: CallConnection | None = None
    ) -> None:
        """Send `msg` to every joined participant of a call except `exclude`."""
        targets = [c for c in self.connections(booking_id) if c is not exclude and c.joined]
        await asyncio.gather(*(c.send(msg) for c in targets))

    async def end(self, booking_id: int, reason: str = "ended") -> None:
        """Tell everyone the call is over and close their sockets."""
        conns = self.connections(booking_id)
        self.calls.pop(booking_id, None)
        for conn in conns:
            await conn.send({"type": "leave", "reason": reason})
            await conn.close(CLOSE_ENDED, "call ended")


CALL_HUB: web.AppKey[CallHub] = web.AppKey("call_hub", CallHub)
# The media RoomRegistry (panda.media.room), or None when media is unavailable.
ROOMS: web.AppKey[Any] = web.AppKey("call_rooms", object)


def recordings_of(app: web.Application) -> Any:
    """The recording service, when the recordings area is part of this app."""
    try:
        from panda.media.recording_service import RECORDINGS
    except ImportError:  # pragma: no cover - recordings are an optional part
        return None
    return app.get(RECORDINGS)


def allowed_origins(request: web.Request) -> set[str]:
    """The origins a call page can be served from: the configured base URL and this host."""
    base = urlsplit(request.app[keys.settings].base_url)
    origins = {f"{base.scheme}://{base.netloc}"}
    origins.add(f"{request.scheme}://{request.host}")
    return origins


def check_origin(request: web.Request) -> None:
    """Refuse cross-site websocket upgrades (and clients that send no Origin)."""
    origin = request.headers.get("Origin")
    if not origin or origin.rstrip("/") not in allowed_origins(request):
        raise Forbidden("This call can only be joined from this site.")


async def check_call_origin(request: web.Request) -> None:
    """Like `check_origin`, also accepting a page served by a sibling process (a redirect)."""
    origin = (request.headers.get("Origin") or "").rstrip("/")
    if origin and origin not in allowed_origins(request):
        placement = request.app.get(PLACEMENT)
        if placement is not None and await placement.known_origin(origin):
            return
    check_origin(request)


def _booking_id(request: web.Request) -> int:
    from panda.web.calls import session_id_from

    return session_id_from(request)


class CallSession:
    """Runs one signalling socket from upgrade to cleanup."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, user: User, role: str
    ) -> None:
        self.request = request
        self.app = request.app
        self.ws = ws
        self.user = user
        self.booking_id = _booking_id(request)
        self.hub = request.app[CALL_HUB]
        self.conn = CallConnection(self.booking_id, user, role, ws)
        self.bucket = TokenBucket(RATE_PER_SECOND, RATE_BURST)
        self.dropped = 0
        self.last_limit_notice = 0.0
        self.join_times: list[float] = []
        self.participant: Any = None

    async def error(self, code: str, message: str, **extra: Any) -> None:
        """Tell the browser what was wrong with its message."""
        await self.conn.send({"type": "error", "code": code, "message": message, **extra})

    async def run(self) -> None:
        """The message loop; cleanup always runs."""
        try:
            await self._loop()
        finally:
            await asyncio.shield(self._cleanup())

    async def _loop(self) -> None:
        joined_deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        while not self.ws.closed:
            timeout = None if self.conn.joined else max(0.1, joined_deadline - time.monotonic())
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                await self.error("join-timeout", "Send a join message first.")
                await self.conn.close(CLOSE_POLICY, "no join")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                return
            if not self.bucket.take():
                self.dropped += 1
                if self.dropped > MAX_DROPPED:
                    await self.error("rate-limited", "Too many messages; disconnecting.")
                    await self.conn.close(CLOSE_POLICY, "flood")
                    return
                now = time.monotonic()
                if now - self.last_limit_notice > 1.0:
                    self.last_limit_notice = now
                    await self.error("rate-limited", "Too many messages; some were ignored.")
                continue
            if msg.type != WSMsgType.TEXT:
                await self.error("bad-message", "Only JSON text messages are accepted.")
                continue
            try:
                clean = validate(msg.data)
                await self._handle(clean)
            except MessageError as exc:
                await self.error(exc.code, exc.message)
            except SignalError as exc:
                await self.error(exc.code, exc.message)
            if self.conn.replaced:
                return

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "join":
            await self._join()
            return
        if kind == "leave":
            await self.conn.close(WSCloseCode.OK, "left")
            return
        if not self.conn.joined or self.participant is None:
            raise MessageError("not-joined", "Send a join message first.")
        if kind == "media-state":
            self.conn.media = {k: msg[k] for k in ("audio", "video", "screen")}
            await self.hub.broadcast(
                self.booking_id,
                {
                    "type": "media-state",
                    "participant_id": self.conn.participant_id,
                    **self.conn.media,
                },
                exclude=self.conn,
            )
            return
        try:
            await self.participant.handle_signal(msg)
        except SignalError:
            raise
        except Exception:
            # The media layer promised SignalError for bad input; anything else is our bug,
            # reported without taking the socket down.
            log.exception("signal %s failed in session %s", kind, self.booking_id)
            raise MessageError("internal", "The server could not apply that message.") from None

    async def _join(self) -> None:
        now = time.monotonic()
        self.join_times = [t for t in self.join_times if now - t < JOIN_WINDOW_SECONDS]
        if len(self.join_times) >= JOINS_PER_WINDOW:
            raise MessageError("rate-limited", "Too many join attempts; wait a few seconds.")
        self.join_times.append(now)
        async with self.app[keys.sessionmaker]() as db:
            access = await store.get_access(db, self.booking_id, self.user)
            room_row = await store.get_room(db, self.booking_id)
            state = store.window_state(access.booking, room_row)
            if state == "not_open":
                await self.error(
                    "room-not-open",
                    "The room is not open yet.",
                    opens_at=store.opens_at(access.booking).isoformat(),
                )
                await self.conn.close(CLOSE_NOT_OPEN, "not open")
                return
            if state != "open":
                await self.error("room-ended", "This session's call has ended.")
                await self.conn.close(CLOSE_ENDED, "ended")
                return
            if not await self._placed_here():
                return
            await store.participant_joined(db, access, self.user)
            await db.commit()
        rooms = self.app.get(ROOMS)
        if rooms is None:
            await self.error("media-unavailable", "Calls are not available on this server.")
            await self.conn.close(WSCloseCode.TRY_AGAIN_LATER, "no media")
            return
        old = self.hub.install(self.conn)
        if old is not None:
            old.replaced = True
            await old.send({"type": "leave", "reason": "replaced"})
            await old.close(CLOSE_REPLACED, "replaced")
        first_join = not self.conn.joined
        self.conn.joined = True
        self.conn.generation += 1
        generation = self.conn.generation
        self.participant = None
        self.conn.connection_state = "connecting"
        others = [c.describe() for c in self.hub.connections(self.booking_id) if c is not self.conn]
        settings = self.app[keys.settings]
        await self.conn.send(
            {
                "type": "join",
                "participant_id": self.conn.participant_id,
                "role": self.conn.role,
                "participants": others,
                "ice_servers": list(settings.ice_servers),
                "recording": bool(
                    (service := recordings_of(self.app)) is not None
                    and service.is_recording(self.booking_id)
                ),
            }
        )
        room = rooms.get_or_create(room_key(self.booking_id))
        try:
            self.participant = await room.join(
                self.conn.participant_id,
                name=self.conn.name,
                role=self.conn.role,
                send=self._sender(generation),
                on_state=self._state_listener(generation),
            )
        except SignalError:
            raise
        except Exception:
            log.exception("joining the media room of session %s failed", self.booking_id)
            raise MessageError(
                "media-failed", "The call could not be set up; retrying may help."
            ) from None
        if first_join or old is not None:
            await self.hub.broadcast(
                self.booking_id,
                {"type": "participant-joined", **self.conn.describe()},
                exclude=self.conn,
            )

    async def _placed_here(self) -> bool:
        """True when the room lives (or now starts) on this process; else the browser is sent on."""
        placement = self.app.get(PLACEMENT)
        if placement is None:
            return True
        where = await placement.claim(self.booking_id, self)
        if where.local:
            return True
        if where.url is not None:
            await self.conn.send({"type": "redirect", "url": where.url})
            await self.conn.close(CLOSE_REDIRECTED, "redirected")
            return False
        await self.error("media-failed", "The call cannot be placed right now; retrying may help.")
        await self.conn.close(WSCloseCode.TRY_AGAIN_LATER, "no placement")
        return False

    def _sender(self, generation: int) -> SendFn:
        async def send(msg: dict[str, Any]) -> None:
            if generation == self.conn.generation:
                await self.conn.send(msg)

        return send

    def _state_listener(self, generation: int) -> Callable[[str], Awaitable[None]]:
        async def on_state(state: str) -> None:
            if generation == self.conn.generation:
                await self._on_state(state)

        return on_state

    async def _on_state(self, state: str) -> None:
        if self.hub.current(self.booking_id, self.user.id) is not self.conn:
            return
        self.conn.connection_state = state
        await self.hub.broadcast(
            self.booking_id,
            {
                "type": "participant-state",
                "participant_id": self.conn.participant_id,
                "connection": state,
            },
        )

    async def _cleanup(self) -> None:
        try:
            await self._leave_call()
        finally:
            placement = self.app.get(PLACEMENT)
            if placement is not None:
                await placement.leave(self.booking_id, self)

    async def _leave_call(self) -> None:
        await self.conn.close(WSCloseCode.GOING_AWAY, "bye")
        if not self.hub.remove(self.conn):
            return  # replaced by a newer connection of the same person, or the call ended
        if not self.conn.joined:
            return
        rooms = self.app.get(ROOMS)
        room = rooms.get(room_key(self.booking_id)) if rooms is not None else None
        if room is not None:
            try:
                await room.leave(self.conn.participant_id)
            except Exception:
                log.exception("leaving the media room of session %s failed", self.booking_id)
        try:
            async with self.app[keys.sessionmaker]() as db:
                await store.participant_left(db, self.booking_id, self.user.id)
                await db.commit()
        except Exception:
            log.exception("recording the departure in session %s failed", self.booking_id)
        await self.hub.broadcast(
            self.booking_id,
            {"type": "participant-left", "participant_id": self.conn.participant_id},
        )


async def call_socket(request: web.Request) -> web.StreamResponse:
    """Upgrade to the signalling websocket of a call the logged-in user belongs to."""
    user = current_user(request)
    if user is None:
        # A redirect to the login page means nothing to a websocket client.
        raise web.HTTPUnauthorized(text="Please log in to join the call.")
    await check_call_origin(request)
    booking_id = _booking_id(request)
    async with request.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking_id, user)
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS, max_msg_size=HARD_MESSAGE_BYTES, autoping=True
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="This address only speaks WebSocket.")
    await ws.prepare(request)
    await CallSession(request, ws, user, access.role).run()
    return ws


def setup(app: web.Application) -> None:
    """Register the signalling route and the connection hub."""
    app[CALL_HUB] = CallHub()
    app.router.add_get("/ws/sessions/{session_id}/call", call_socket, name="call_ws")
