"""The call page of a booked session and the room JSON API; wires the media rooms into the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from sqlalchemy import select

from panda import keys
from panda.bus import BUS, setup_bus
from panda.errors import Conflict, Forbidden, NotFound, PandaError
from panda.store import calls as store
from panda.store.models import User
from panda.web import call_ws
from panda.web.auth import require_user
from panda.web.call_placement import PLACEMENT, RoomPlacement
from panda.web.call_remote import COMMANDS, OwnerUnavailable, RoomCommands, owner_elsewhere
from panda.web.call_ws import CALL_HUB, ROOMS, room_key
from panda.web.call_ws import recordings_of as _recordings
from panda.web.render import render

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
_MAX_ID = 2**31 - 1

_ROOM_SCHEMA = {
    "type": "object",
    "properties": {
        "session_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["waiting", "active", "ended"]},
        "is_open": {"type": "boolean"},
        "window": {"type": "string", "enum": ["not_open", "open", "ended", "unavailable"]},
        "opens_at": {"type": "string", "format": "date-time"},
        "closes_at": {"type": "string", "format": "date-time"},
        "session_start": {"type": "string", "format": "date-time"},
        "session_end": {"type": "string", "format": "date-time"},
        "booking_status": {"type": "string"},
        "opened_at": {"type": ["string", "null"], "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {"type": ["string", "null"]},
        "your_role": {"type": "string", "enum": ["student", "tutor", "admin"]},
        "participants": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "user_id": {"type": "integer"},
                    "name": {"type": "string"},
                    "role": {"type": "string"},
                    "joined_at": {"type": "string", "format": "date-time"},
                    "first_joined_at": {"type": "string", "format": "date-time"},
                    "left_at": {"type": ["string", "null"], "format": "date-time"},
                    "is_online": {"type": "boolean"},
                    "media": {"type": "object"},
                },
            },
        },
    },
}
OPENAPI_SCHEMAS: dict[str, Any] = {"CallRoom": _ROOM_SCHEMA}
_ID_PARAM = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer"},
    "description": "The booked session (booking) id",
}
_ROOM_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/CallRoom"}}}
_ERR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
OPENAPI: dict[str, Any] = {
    "/api/sessions/{session_id}/room": {
        "get": {
            "summary": "The call room of a session, with its participants",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "Room information", "content": _ROOM_REF},
                "403": {"description": "Not a participant of this session", "content": _ERR},
                "404": {"description": "No such session", "content": _ERR},
            },
        },
        "post": {
            "summary": "Open the call room (allowed from 10 minutes before the start)",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "The open room", "content": _ROOM_REF},
                "403": {"description": "Not a participant of this session", "content": _ERR},
                "404": {"description": "No such session", "content": _ERR},
                "409": {"description": "Not open yet, ended, or not booked", "content": _ERR},
            },
        },
    },
    "/api/sessions/{session_id}/room/end": {
        "post": {
            "summary": "End the call now (tutor or admin); settles the booking",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "The ended room", "content": _ROOM_REF},
                "403": {"description": "Only the tutor or an admin may end it", "content": _ERR},
                "404": {"description": "No such session", "content": _ERR},
                "409": {"description": "The session is not booked", "content": _ERR},
                "503": {
                    "description": "The server process holding the call did not answer",
                    "content": _ERR,
                },
            },
        }
    },
    "/api/sessions/{session_id}/room/stats": {
        "get": {
            "summary": "Live per-participant media statistics (admins)",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {
                    "description": "Statistics per participant id: bitrate_in/out (bit/s), "
                    "packets_lost, rtt_ms, frames_forwarded, keyframes_requested, transport, "
                    "ice_state",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "session_id": {"type": "integer"},
                                    "live": {"type": "boolean"},
                                    "participants": {
                                        "type": "object",
                                        "additionalProperties": {"type": "object"},
                                    },
                                },
                            }
                        }
                    },
                },
                "403": {"description": "Admins only", "content": _ERR},
                "404": {"description": "No such session", "content": _ERR},
                "503": {
                    "description": "The server process holding the call did not answer",
                    "content": _ERR,
                },
            },
        }
    },
}


def session_id_from(request: web.Request) -> int:
    """The session id in the path; NotFound for anything but a sane positive integer."""
    raw = request.match_info.get("session_id", "")
    if not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) <= _MAX_ID:
        raise NotFound("There is no such session.")
    return int(raw)


LIVE_TIMEOUT = 2.0  # the live part of room info is optional: do not hold the page up for it


def _local_live(app: web.Application, booking_id: int) -> dict[int, dict[str, Any]]:
    hub = app[CALL_HUB]
    return {c.user_id: c.describe() for c in hub.connections(booking_id) if c.joined}


async def _live(app: web.Application, booking_id: int) -> dict[int, dict[str, Any]]:
    """Who is connected to the call and how, asked of the process holding it when elsewhere."""
    try:
        owner = await owner_elsewhere(app, booking_id)
        if owner is None:
            return _local_live(app, booking_id)
        body = await app[COMMANDS].ask(owner, "live", booking_id=booking_id, wait_s=LIVE_TIMEOUT)
    except PandaError:
        return {}
    people = body.get("participants")
    return {int(k): v for k, v in people.items()} if isinstance(people, dict) else {}


async def _room_json(request: web.Request, db: Any, access: store.CallAccess) -> dict[str, Any]:
    info = await store.room_info(db, access.booking)
    live = await _live(request.app, access.booking.id)
    for part in info["participants"]:
        state = live.get(part["user_id"])
        part["media"] = state["media"] if state else None
        part["connection"] = state["connection"] if state else None
    info["your_role"] = access.role
    return info


async def call_page(request: web.Request) -> web.StreamResponse:
    """The call page: pre-join (or waiting, or ended) screen, then the call itself."""
    user = require_user(request)
    booking_id = session_id_from(request)
    async with request.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking_id, user)
        booking = access.booking
        room = await store.get_room(db, booking_id)
        window = store.window_state(booking, room)
        if window == "unavailable":
            raise Conflict("This session is not booked, so it has no call.")
        student = await db.get(User, booking.student_id)
        tutor = await db.get(User, booking.tutor_id)
    other = tutor if access.role == "student" else student
    state = {"open": "idle", "not_open": "waiting", "ended": "ended"}[window]
    settings = request.app[keys.settings]
    return render(
        request,
        "call.html",
        {
            "booking": booking,
            "role": access.role,
            "student": student,
            "tutor": tutor,
            "other": other,
            "call_state": state,
            "opens_at": store.opens_at(booking),
            "closes_at": store.closes_at(booking),
            "can_end": store.may_end(access),
            "ice_servers_json": json.dumps(list(settings.ice_servers)),
            "ws_path": f"/ws/sessions/{booking.id}/call",
        },
    )


async def open_calls_fragment(request: web.Request) -> web.StreamResponse:
    """The dashboards' "Open now" box: sessions whose room the user can join right now."""
    user = require_user(request)
    async with request.app[keys.sessionmaker]() as db:
        bookings = await store.open_sessions_for(db, user)
        ids = {b.student_id for b in bookings} | {b.tutor_id for b in bookings}
        names: dict[int, str] = {}
        if ids:
            rows = await db.execute(select(User.id, User.name).where(User.id.in_(ids)))
            names = {uid: name for uid, name in rows.all()}
    return render(request, "_call_links.html", {"bookings": bookings, "names": names})


async def get_room(request: web.Request) -> web.Response:
    """GET /api/sessions/<id>/room: room info with participants."""
    user = require_user(request)
    booking_id = session_id_from(request)
    async with request.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking_id, user)
        return web.json_response(await _room_json(request, db, access))


async def open_room(request: web.Request) -> web.Response:
    """POST /api/sessions/<id>/room: open the room (idempotent)."""
    user = require_user(request)
    booking_id = session_id_from(request)
    async with request.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking_id, user)
        await store.open_room(db, access.booking)
        await db.commit()
        return web.json_response(await _room_json(request, db, access))


async def end_room(request: web.Request) -> web.Response:
    """POST /api/sessions/<id>/room/end: the tutor or an admin ends the call."""
    user = require_user(request)
    booking_id = session_id_from(request)
    async with request.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking_id, user)
        if not store.may_end(access):
            raise Forbidden("Only the tutor or an admin can end the call.")
        if access.booking.status not in (*store.CALLABLE_STATUSES, *store.FINISHED_STATUSES):
            raise Conflict("This session is not booked, so it has no call.")
        await store.end_room(db, access.booking, by=user, reason="ended by " + access.role)
        await db.commit()
        info = await _room_json(request, db, access)
    await asyncio.shield(close_call_everywhere(request.app, booking_id))
    return web.json_response(info)


async def room_stats(request: web.Request) -> web.Response:
    """GET /api/sessions/<id>/room/stats: live media statistics, for admins."""
    user = require_user(request)
    if not user.is_admin:
        raise Forbidden("Only administrators can see call statistics.")
    booking_id = session_id_from(request)
    async with request.app[keys.sessionmaker]() as db:
        await store.get_access(db, booking_id, user)
    owner = await owner_elsewhere(request.app, booking_id)
    if owner is not None:
        body = await request.app[COMMANDS].ask(owner, "stats", booking_id=booking_id)
    else:
        body = _local_stats(request.app, booking_id)
    return web.json_response({"session_id": booking_id, **body})


def _local_stats(app: web.Application, booking_id: int) -> dict[str, Any]:
    rooms = app.get(ROOMS)
    room = rooms.get(room_key(booking_id)) if rooms is not None else None
    stats: dict[str, Any] = room.stats() if room is not None else {}
    return {"live": room is not None, "participants": stats}


async def close_call_everywhere(app: web.Application, booking_id: int) -> None:
    """Close a call here and on the process holding its room (OwnerUnavailable if it is mute)."""
    await _close_call(app, booking_id)
    owner = await owner_elsewhere(app, booking_id)
    if owner is not None:
        await app[COMMANDS].ask(owner, "end", booking_id=booking_id)


async def _close_call(app: web.Application, booking_id: int) -> None:
    """Stop its recording, tell the participants the call ended and free its media room."""
    service = _recordings(app)
    if service is not None:
        try:
            await service.stop_for_room(booking_id, "call ended")
        except Exception:
            log.exception("stopping the recording of session %s failed", booking_id)
    await app[CALL_HUB].end(booking_id)
    rooms = app.get(ROOMS)
    if rooms is not None:
        try:
            await rooms.close_room(room_key(booking_id))
        except Exception:
            log.exception("closing the media room of session %s failed", booking_id)


async def sweep_once(app: web.Application) -> list[int]:
    """End every room whose window closed; the session ids that were ended."""
    async with app[keys.sessionmaker]() as db:
        ended = await store.close_expired(db)
        await db.commit()
    for booking_id in ended:
        try:
            await close_call_everywhere(app, booking_id)
        except OwnerUnavailable:
            log.warning("the server holding session %s's call did not answer", booking_id)
    return ended


async def _sweeper(app: web.Application) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await sweep_once(app)
        except Exception:
            log.exception("closing expired call rooms failed")


def _create_registry(app: web.Application) -> Any:
    settings = app[keys.settings]
    try:
        from panda.media.ice import MediaConfig
        from panda.media.room import RoomRegistry
    except ImportError:
        log.warning("the media relay is not available: calls cannot carry media")
        return None
    config = MediaConfig(
        ice_loopback=settings.ice_loopback,
        ice_servers=settings.ice_servers,
        ice_tcp_port=settings.ice_tcp_port,
        ice_public_ip=settings.ice_public_ip,
        ice_udp_ports=settings.ice_udp_ports,
        relay_path=settings.relay_path,
    )
    return RoomRegistry(config)


async def _start_ice_network(app: web.Application) -> Any:
    """The ICE-TCP listener and gathering options (UDP ports, public address) of the relay."""
    try:
        from panda.media.ice_tcp import IceNetwork
    except ImportError:
        return None
    return await IceNetwork.start(app[keys.settings])


async def _start_placement(
    app: web.Application,
) -> tuple[RoomPlacement | None, RoomCommands | None]:
    """Room leases and forwarded room commands, when processes share a bus (Redis)."""
    bus = app.get(BUS)
    if bus is None:
        return None, None
    placement = RoomPlacement(bus, app[keys.settings].node_url)
    app[PLACEMENT] = placement
    if not placement.enabled:
        return placement, None
    placement.start()
    commands = RoomCommands(bus, placement.owner)

    async def end(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.shield(_close_call(app, int(args["booking_id"])))
        return {}

    async def stats(args: dict[str, Any]) -> dict[str, Any]:
        return _local_stats(app, int(args["booking_id"]))

    async def live(args: dict[str, Any]) -> dict[str, Any]:
        return {"participants": _local_live(app, int(args["booking_id"]))}

    async def moved(booking_id: int) -> None:
        # Another process holds the room now: the pages reconnect and are sent there.
        for conn in app[CALL_HUB].connections(booking_id):
            await conn.close(1001, "room moved")

    placement.on_lost = moved
    commands.register("end", end)
    commands.register("stats", stats)
    commands.register("live", live)
    await commands.start()
    app[COMMANDS] = commands
    return placement, commands


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    # Tests may install their own registry before the app starts.
    owned = ROOMS not in app
    network = None
    if owned:
        network = await _start_ice_network(app)
        app[ROOMS] = _create_registry(app)
    placement, commands = await _start_placement(app)
    sweeper = asyncio.create_task(_sweeper(app), name="call-room-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        if commands is not None:
            await commands.close()
        if placement is not None:
            await placement.close()
        rooms = app.get(ROOMS)
        if owned and rooms is not None:
            await rooms.close()
        if network is not None:
            await network.close()


async def _close_sockets(app: web.Application) -> None:
    # On shutdown the browsers are told to come back (1001), which they do with a new
    # peer connection once this or another server answers.
    hub = app[CALL_HUB]
    for booking_id in list(hub.calls):
        for conn in hub.connections(booking_id):
            await conn.close(1001, "server restarting")


def setup(app: web.Application) -> None:
    """Register the call page, the room API, the signalling socket and the media rooms."""
    call_ws.setup(app)
    app.router.add_get("/sessions/open-calls", open_calls_fragment, name="open_calls")
    app.router.add_get("/sessions/{session_id}/call", call_page, name="call_page")
    app.router.add_get("/api/sessions/{session_id}/room", get_room, name="room_api")
    app.router.add_post("/api/sessions/{session_id}/room", open_room)
    app.router.add_post("/api/sessions/{session_id}/room/end", end_room, name="room_end")
    app.router.add_get("/api/sessions/{session_id}/room/stats", room_stats, name="room_stats")
    setup_bus(app)  # placement of rooms across processes takes leases through the bus
    app.cleanup_ctx.append(_calls_ctx)
    app.on_shutdown.append(_close_sockets)
