"""The signalling websocket with the real media relay (in-process, loopback ICE)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from aiortc import RTCSessionDescription

from panda.media.ice import MediaConfig, create_peer_connection
from panda.media.room import RoomRegistry
from panda.web.call_ws import ROOMS
from tests.web.call_fakes import browser_for, make_booking, origin_of

TIMEOUT = 20.0


async def _recv_type(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type == WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind:
            return data


@pytest.fixture
async def call(client: TestClient, make_user):  # type: ignore[no-untyped-def]
    student = await make_user("student")
    tutor = await make_user("tutor")
    admin = await make_user("admin")
    booking = await make_booking(client, student, tutor)
    sessions = []

    async def connect(user: Any) -> aiohttp.ClientWebSocketResponse:
        http = await browser_for(client, user.email)
        sessions.append(http)
        return await http.ws_connect(
            f"/ws/sessions/{booking.id}/call", headers={"Origin": origin_of(client)}
        )

    yield {
        "student": student,
        "tutor": tutor,
        "admin": admin,
        "booking": booking,
        "connect": connect,
        "sessions": sessions,
    }
    for http in sessions:
        await http.close()


async def test_the_app_runs_a_real_room_registry(client: TestClient) -> None:
    assert isinstance(client.app[ROOMS], RoomRegistry)
    assert client.app[ROOMS].config.ice_loopback is True


async def test_garbage_sdp_is_refused_by_the_relay(call: dict[str, Any]) -> None:
    ws = await call["connect"](call["student"])
    await ws.send_json({"type": "join"})
    await _recv_type(ws, "join")
    for sdp in (
        "garbage",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n",
    ):
        await ws.send_json({"type": "offer", "sdp": sdp, "sources": {}})
        err = await _recv_type(ws, "error")
        assert err["code"] == "bad-sdp", err
    await ws.send_json({"type": "answer", "sdp": "v=0\r\n"})
    assert (await _recv_type(ws, "error"))["code"] == "bad-sdp"
    await ws.send_json(
        {"type": "ice-candidate", "candidate": {"candidate": "candidate:nonsense", "sdpMid": "0"}}
    )
    # Before any offer the relay keeps candidates; an answer-less state stays intact either way.
    await ws.send_json({"type": "leave"})


async def test_aiortc_client_connects_through_the_websocket(
    client: TestClient, call: dict[str, Any]
) -> None:
    ws = await call["connect"](call["student"])
    await ws.send_json({"type": "join"})
    await _recv_type(ws, "join")
    pc = create_peer_connection(MediaConfig(ice_loopback=True))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp, "sources": {}})
        answer = await _recv_type(ws, "answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        state = await _recv_type(ws, "participant-state")
        while state["connection"] != "connected":
            state = await _recv_type(ws, "participant-state")
        assert state["participant_id"] == str(call["student"].id)
        # The admin sees the relay's live figures for this participant.
        admin = await browser_for(client, call["admin"].email)
        call["sessions"].append(admin)
        resp = await admin.get(f"/api/sessions/{call['booking'].id}/room/stats")
        body = await resp.json()
        assert body["live"] is True
        figures = body["participants"][str(call["student"].id)]
        assert figures["transport"] == "udp" and figures["connection_state"] == "connected"
        assert "127.0.0.1" in figures["candidate_pair"]
    finally:
        await asyncio.shield(pc.close())


async def test_leaving_frees_the_media_participant(
    client: TestClient, call: dict[str, Any]
) -> None:
    ws = await call["connect"](call["student"])
    await ws.send_json({"type": "join"})
    await _recv_type(ws, "join")
    room = client.app[ROOMS].get(f"session-{call['booking'].id}")
    assert room is not None and str(call["student"].id) in room.participants
    await ws.close()
    for _ in range(100):
        if str(call["student"].id) not in room.participants:
            break
        await asyncio.sleep(0.05)
    assert str(call["student"].id) not in room.participants


async def test_joining_an_ended_call_is_refused(client: TestClient, call: dict[str, Any]) -> None:
    tutor = await browser_for(client, call["tutor"].email)
    call["sessions"].append(tutor)
    html = await (await tutor.get("/dashboard")).text()
    marker = 'name="csrf_token" value="'
    token = html[html.index(marker) + len(marker) :].split('"', 1)[0]
    resp = await tutor.post(
        f"/api/sessions/{call['booking'].id}/room/end", headers={"X-CSRF-Token": token}
    )
    assert resp.status == 200
    ws = await call["connect"](call["student"])
    await ws.send_json({"type": "join"})
    assert (await _recv_type(ws, "error"))["code"] == "room-ended"
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert client.app[ROOMS].get(f"session-{call['booking'].id}") is None
