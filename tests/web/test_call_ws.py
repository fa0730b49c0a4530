"""The signalling websocket against a fake media room: access, validation, floods, vanishing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.store import calls as store
from panda.store.models import Booking
from panda.web import call_ws
from panda.web.call_ws import ROOMS
from tests.web.call_fakes import FakeRegistry, browser_for, make_booking, origin_of

RECEIVE_TIMEOUT = 10.0


@pytest.fixture
def app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app[ROOMS] = FakeRegistry()
    return app


class Party:
    """One logged-in person with a signalling socket."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws

    async def send(self, msg: Any) -> None:
        await self.ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=RECEIVE_TIMEOUT)
        assert msg.type == WSMsgType.TEXT, f"expected a message, got {msg.type} {msg.data!r}"
        return json.loads(msg.data)

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """The next message of type `kind`, skipping others."""
        while True:
            msg = await self.recv()
            if msg["type"] == kind:
                return msg

    async def join(self) -> dict[str, Any]:
        await self.send({"type": "join"})
        return await self.recv_type("join")


@pytest.fixture
async def people(client: TestClient, make_user) -> AsyncIterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    student = await make_user("student")
    tutor = await make_user("tutor")
    admin = await make_user("admin")
    outsider = await make_user("student")
    booking = await make_booking(client, student, tutor)
    sessions: list[aiohttp.ClientSession] = []

    async def connect(user: Any, origin: str | None = "same", **kw: Any) -> Party:
        http = await browser_for(client, user.email)
        sessions.append(http)
        headers = {}
        if origin == "same":
            headers["Origin"] = origin_of(client)
        elif origin:
            headers["Origin"] = origin
        ws = await http.ws_connect(f"/ws/sessions/{booking.id}/call", headers=headers, **kw)
        return Party(http, ws)

    yield {
        "student": student,
        "tutor": tutor,
        "admin": admin,
        "outsider": outsider,
        "booking": booking,
        "connect": connect,
        "rooms": client.app[ROOMS],
        "key": f"session-{booking.id}",
    }
    for http in sessions:
        await http.close()


async def _handshake_status(people: dict[str, Any], user: Any, origin: str | None) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await people["connect"](user, origin=origin)
    return info.value.status


async def test_origin_is_checked(people: dict[str, Any]) -> None:
    assert await _handshake_status(people, people["student"], None) == 403
    assert await _handshake_status(people, people["student"], "https://evil.example") == 403


async def test_outsider_is_refused(people: dict[str, Any]) -> None:
    assert await _handshake_status(people, people["outsider"], "same") == 403


async def test_anonymous_is_refused(client: TestClient, people: dict[str, Any]) -> None:
    async with aiohttp.ClientSession(base_url=str(client.make_url("/"))) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(
                f"/ws/sessions/{people['booking'].id}/call",
                headers={"Origin": origin_of(client)},
            )
        assert info.value.status == 401


async def test_join_and_signal(client: TestClient, people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    ack = await student.join()
    assert ack["participant_id"] == str(people["student"].id)
    assert ack["role"] == "student" and ack["participants"] == []
    room = people["rooms"].get(people["key"])
    assert room is not None and list(room.participants) == [str(people["student"].id)]
    tutor = await people["connect"](people["tutor"])
    ack = await tutor.join()
    assert [p["participant_id"] for p in ack["participants"]] == [str(people["student"].id)]
    joined = await student.recv_type("participant-joined")
    assert joined["participant_id"] == str(people["tutor"].id) and joined["role"] == "tutor"
    # Offers reach the media layer with only known keys; its answer comes back.
    await student.send(
        {"type": "offer", "sdp": "v=0\r\nx", "sources": {"0": "microphone"}, "evil": 1}
    )
    answer = await student.recv_type("answer")
    assert answer["sdp"].startswith("v=0")
    part = room.participants[str(people["student"].id)]
    assert part.signals == [{"type": "offer", "sdp": "v=0\r\nx", "sources": {"0": "microphone"}}]
    await student.send(
        {
            "type": "ice-candidate",
            "candidate": {
                "candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ host",
                "sdpMid": "0",
                "sdpMLineIndex": 0,
            },
        }
    )
    await student.send({"type": "ice-candidate", "candidate": None})
    # A round trip proves the candidates were processed in order.
    await student.send({"type": "offer", "sdp": "v=0\r\ny"})
    await student.recv_type("answer")
    assert [s["type"] for s in part.signals] == ["offer", "ice-candidate", "ice-candidate", "offer"]
    assert part.signals[2]["candidate"] is None
    async with client.app[keys.sessionmaker]() as db:
        booking = await db.get(Booking, people["booking"].id)
        assert booking is not None and booking.status == "in_progress"


async def test_media_state_is_broadcast(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    await student.recv_type("participant-joined")
    await tutor.send({"type": "media-state", "audio": False, "video": True, "screen": True})
    state = await student.recv_type("media-state")
    assert state == {
        "type": "media-state",
        "participant_id": str(people["tutor"].id),
        "audio": False,
        "video": True,
        "screen": True,
    }


async def test_participant_state_is_broadcast(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    room = people["rooms"].get(people["key"])
    await room.participants[str(people["tutor"].id)].on_state("connected")
    msg = await student.recv_type("participant-state")
    assert msg["participant_id"] == str(people["tutor"].id) and msg["connection"] == "connected"


HOSTILE = [
    ("not json", "bad-message"),
    ("[1, 2]", "bad-message"),
    ('{"type": "dance"}', "unknown-type"),
    ('{"type": 5}', "unknown-type"),
    ('{"no": "type"}', "unknown-type"),
    ('{"type": "offer"}', "bad-message"),
    ('{"type": "offer", "sdp": 12}', "bad-message"),
    ('{"type": "offer", "sdp": "v=0", "sources": {"0": "webcam"}}', "bad-message"),
    ('{"type": "offer", "sdp": "v=0", "sources": []}', "bad-message"),
    ('{"type": "answer", "sdp": ""}', "bad-message"),
    ('{"type": "ice-candidate", "candidate": 5}', "bad-message"),
    ('{"type": "ice-candidate", "candidate": {"candidate": "x"}}', "bad-message"),
    (
        '{"type": "ice-candidate", "candidate": {"candidate": "x", "sdpMLineIndex": -1}}',
        "bad-message",
    ),
    ('{"type": "media-state", "audio": "yes", "video": true, "screen": false}', "bad-message"),
    ('{"type": "offer", "sdp": "garbage that is not sdp"}', "bad-sdp"),
]


async def test_hostile_messages_get_errors_and_change_nothing(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    part = people["rooms"].get(people["key"]).participants[str(people["student"].id)]
    for raw, code in HOSTILE:
        await student.send(raw)
        reply = await student.recv_type("error")
        assert reply["code"] == code, raw
        assert reply["message"]
    assert part.signals == []
    await student.ws.send_bytes(b"\x00\x01")
    assert (await student.recv_type("error"))["code"] == "bad-message"
    # Still alive and working.
    await student.send({"type": "offer", "sdp": "v=0\r\nok"})
    assert (await student.recv_type("answer"))["type"] == "answer"


async def test_oversized_message_is_refused(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    await student.send({"type": "offer", "sdp": "v=0\r\n" + "a" * 100_000})
    reply = await student.recv_type("error")
    assert reply["code"] == "too-large"
    await student.send({"type": "offer", "sdp": "v=0\r\n" + "a" * 61_000, "sources": {}})
    assert (await student.recv_type("error"))["code"] == "too-large"
    part = people["rooms"].get(people["key"]).participants[str(people["student"].id)]
    assert part.signals == []
    await student.send({"type": "offer", "sdp": "v=0\r\nok"})
    await student.recv_type("answer")


async def test_signals_before_join_are_refused(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.send({"type": "offer", "sdp": "v=0\r\nx"})
    assert (await student.recv_type("error"))["code"] == "not-joined"
    assert people["rooms"].get(people["key"]) is None


async def test_join_timeout(people: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_ws, "JOIN_TIMEOUT_SECONDS", 0.3)
    student = await people["connect"](people["student"])
    assert (await student.recv_type("error"))["code"] == "join-timeout"
    msg = await student.ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)


async def test_flood_is_rate_limited_then_cut(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    await student.recv_type("participant-joined")
    flood = json.dumps({"type": "media-state", "audio": True, "video": True, "screen": False})
    sent = call_ws.MAX_DROPPED + int(call_ws.RATE_BURST) + 200
    for _ in range(sent):
        await student.ws.send_str(flood)
    codes = []
    closed_code = None
    while True:
        msg = await student.ws.receive(timeout=RECEIVE_TIMEOUT)
        if msg.type == WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] == "error":
                codes.append(data["code"])
            continue
        closed_code = student.ws.close_code
        break
    assert "rate-limited" in codes
    assert closed_code == call_ws.CLOSE_POLICY
    # The other side got far fewer broadcasts than were sent.
    received = 0
    while True:
        try:
            msg = await tutor.ws.receive(timeout=1.0)
        except TimeoutError:
            break
        if msg.type != WSMsgType.TEXT:
            break
        if json.loads(msg.data)["type"] == "media-state":
            received += 1
    assert 0 < received < sent // 2


async def test_join_flood_is_limited(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    for _ in range(call_ws.JOINS_PER_WINDOW + 3):
        await student.send({"type": "join"})
    codes = []
    acks = 0
    for _ in range(call_ws.JOINS_PER_WINDOW + 3):
        msg = await student.recv()
        if msg["type"] == "join":
            acks += 1
        elif msg["type"] == "error":
            codes.append(msg["code"])
    assert acks == call_ws.JOINS_PER_WINDOW
    assert codes == ["rate-limited"] * 3


async def test_vanished_participant_is_cleaned_up(
    client: TestClient, people: dict[str, Any]
) -> None:
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    # autoping off: this client stops answering the server's heartbeat, like a dead laptop.
    student = await people["connect"](people["student"], autoping=False)
    await student.join()
    await tutor.recv_type("participant-joined")
    left = await asyncio.wait_for(tutor.recv_type("participant-left"), timeout=15)
    assert left["participant_id"] == str(people["student"].id)
    room = people["rooms"].get(people["key"])
    assert str(people["student"].id) not in room.participants
    assert room.left == [str(people["student"].id)]
    async with client.app[keys.sessionmaker]() as db:
        info = await store.room_info(db, people["booking"])
    online = {p["role"]: p["is_online"] for p in info["participants"]}
    assert online == {"tutor": True, "student": False}


async def test_closed_socket_is_cleaned_up_at_once(people: dict[str, Any]) -> None:
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    student = await people["connect"](people["student"])
    await student.join()
    await tutor.recv_type("participant-joined")
    await student.ws.close()
    left = await tutor.recv_type("participant-left")
    assert left["participant_id"] == str(people["student"].id)


async def test_second_window_replaces_the_first(people: dict[str, Any]) -> None:
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    first = await people["connect"](people["student"])
    await first.join()
    await tutor.recv_type("participant-joined")
    second = await people["connect"](people["student"])
    await second.join()
    assert (await first.recv_type("leave"))["reason"] == "replaced"
    msg = await first.ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert first.ws.close_code == call_ws.CLOSE_REPLACED
    room = people["rooms"].get(people["key"])
    assert room.joins.count(str(people["student"].id)) == 2
    assert room.left == []  # the media participant was replaced, not removed
    # The tutor sees the student come back, never leave.
    again = await tutor.recv_type("participant-joined")
    assert again["participant_id"] == str(people["student"].id)
    await second.send({"type": "offer", "sdp": "v=0\r\nz"})
    await second.recv_type("answer")


async def test_rejoin_on_same_socket_gets_a_new_participant(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    room = people["rooms"].get(people["key"])
    old = room.participants[str(people["student"].id)]
    await student.join()
    new = room.participants[str(people["student"].id)]
    assert new is not old and old.closed
    # Messages from the replaced participant no longer reach the browser.
    await old.send({"type": "offer", "sdp": "v=0\r\nstale"})
    await new.send({"type": "offer", "sdp": "v=0\r\nfresh", "tracks": {}})
    assert (await student.recv_type("offer"))["sdp"].endswith("fresh")


async def test_ending_the_call_closes_sockets_and_refuses_joins(
    client: TestClient, people: dict[str, Any]
) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    token_page = await tutor.http.get("/dashboard")
    html = await token_page.text()
    marker = 'name="csrf_token" value="'
    token = html[html.index(marker) + len(marker) :].split('"', 1)[0]
    resp = await tutor.http.post(
        f"/api/sessions/{people['booking'].id}/room/end", headers={"X-CSRF-Token": token}
    )
    assert resp.status == 200
    assert (await student.recv_type("leave"))["reason"] == "ended"
    assert people["key"] in people["rooms"].closed_rooms
    late = await people["connect"](people["student"])
    await late.send({"type": "join"})
    err = await late.recv_type("error")
    assert err["code"] == "room-ended"
    async with client.app[keys.sessionmaker]() as db:
        booking = await db.get(Booking, people["booking"].id)
        assert booking is not None and booking.status == "completed"


async def test_room_not_open_refuses_join(client: TestClient, people: dict[str, Any]) -> None:
    async with client.app[keys.sessionmaker]() as db:
        booking = await db.get(Booking, people["booking"].id)
        assert booking is not None
        from datetime import timedelta

        booking.start_at = booking.start_at + timedelta(hours=3)
        booking.end_at = booking.end_at + timedelta(hours=3)
        await db.commit()
    student = await people["connect"](people["student"])
    await student.send({"type": "join"})
    err = await student.recv_type("error")
    assert err["code"] == "room-not-open" and err["opens_at"]
    assert people["rooms"].get(people["key"]) is None


async def test_admin_joins_as_visible_third(people: dict[str, Any]) -> None:
    student = await people["connect"](people["student"])
    await student.join()
    admin = await people["connect"](people["admin"])
    ack = await admin.join()
    assert ack["role"] == "admin"
    joined = await student.recv_type("participant-joined")
    assert joined["role"] == "admin"


async def test_recording_events_reach_everyone_in_the_call(
    client: TestClient, people: dict[str, Any]
) -> None:
    from panda.media.recording_service import RECORDINGS

    service = client.app[RECORDINGS]
    student = await people["connect"](people["student"])
    ack = await student.join()
    assert ack["recording"] is False
    # The calls area gave the recorder its way to the room and to the people in it.
    assert service.room_lookup(people["booking"].id) is people["rooms"].get(people["key"])
    await service._notify(people["booking"].id, {"type": "recording", "state": "started"})
    msg = await student.recv_type("recording")
    assert msg["state"] == "started"


# -- several server processes (placement through the bus) -----------------------------------------


def _placed(client: TestClient) -> tuple[Any, Any]:
    """This app's room placement switched on as if Redis were shared, and its bus."""
    from panda.bus import BUS
    from panda.web.call_placement import PLACEMENT

    placement = client.app[PLACEMENT]
    placement.enabled = True
    return placement, client.app[BUS]


async def test_join_where_another_process_holds_the_room_is_redirected(
    client: TestClient, people: dict[str, Any]
) -> None:
    from panda.web.call_placement import lease_key

    placement, bus = _placed(client)
    sid = people["booking"].id
    other = "http://127.0.0.1:9#42"
    assert await bus.acquire_lease(lease_key(sid), other, 30)
    student = await people["connect"](people["student"])
    await student.send({"type": "join"})
    assert await student.recv() == {
        "type": "redirect",
        "url": f"ws://127.0.0.1:9/ws/sessions/{sid}/call",
    }
    msg = await student.ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type == WSMsgType.CLOSE and msg.data == call_ws.CLOSE_REDIRECTED
    assert people["rooms"].get(people["key"]) is None  # no media room here
    async with client.app[keys.sessionmaker]() as db:
        room = await store.get_room(db, sid)
        assert room is None or room.started_at is None  # nobody joined

    # The other process let the lease go: the next join creates the room here.
    await bus.release(lease_key(sid), other)
    student = await people["connect"](people["student"])
    await student.join()
    assert await bus.get_owner(lease_key(sid)) == placement.owner
    tutor = await people["connect"](people["tutor"])
    await tutor.join()
    await student.ws.close()
    await tutor.recv_type("participant-left")
    assert await bus.get_owner(lease_key(sid)) == placement.owner  # the tutor is still in
    await tutor.ws.close()
    for _ in range(200):  # the server's cleanup of the socket runs after the close
        if await bus.get_owner(lease_key(sid)) is None:
            break
        await asyncio.sleep(0.02)
    assert await bus.get_owner(lease_key(sid)) is None


async def test_join_when_the_room_cannot_be_placed_asks_to_retry(
    client: TestClient, people: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from panda.web.call_placement import UNAVAILABLE

    placement, _ = _placed(client)

    async def down(*args: Any) -> Any:
        return UNAVAILABLE

    monkeypatch.setattr(placement, "claim", down)
    student = await people["connect"](people["student"])
    await student.send({"type": "join"})
    assert (await student.recv())["code"] == "media-failed"
    msg = await student.ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type == WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    assert people["rooms"].get(people["key"]) is None


async def test_a_sibling_process_page_may_connect(
    client: TestClient, people: dict[str, Any]
) -> None:
    _, bus = _placed(client)
    await bus.set("call-node-origin:http://127.0.0.1:9", "http://127.0.0.1:9#42", ttl=60)
    party = await people["connect"](people["student"], origin="http://127.0.0.1:9")
    assert (await party.join())["type"] == "join"
    assert await _handshake_status(people, people["student"], "http://127.0.0.1:10") == 403
    assert await _handshake_status(people, people["student"], "https://evil.example") == 403
