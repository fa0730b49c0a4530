"""A stand-in for panda.media's RoomRegistry/Room/Participant with the contract's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from panda import keys
from panda.store.models import Booking, User
from panda.store.types import utcnow
from panda.web.call_ws import SignalError

SendFn = Callable[[dict[str, Any]], Awaitable[None]]


class FakeParticipant:
    """Records the signals it gets; answers offers; refuses SDP that is not SDP."""

    def __init__(self, pid: str, name: str, role: str, send: SendFn, on_state: Any) -> None:
        self.id = pid
        self.name = name
        self.role = role
        self.send = send
        self.on_state = on_state
        self.signals: list[dict[str, Any]] = []
        self.closed = False

    async def handle_signal(self, msg: dict[str, Any]) -> None:
        if msg["type"] in ("offer", "answer") and not msg["sdp"].startswith("v=0"):
            raise SignalError("bad-sdp", "That is not a session description.")
        self.signals.append(msg)
        if msg["type"] == "offer":
            await self.send({"type": "answer", "sdp": "v=0\r\nfake-answer"})


class FakeRoom:
    def __init__(self, key: str) -> None:
        self.key = key
        self.participants: dict[str, FakeParticipant] = {}
        self.joins: list[str] = []
        self.left: list[str] = []
        self.closed = False

    async def join(
        self, participant_id: str, *, name: str, role: str, send: SendFn, on_state: Any = None
    ) -> FakeParticipant:
        old = self.participants.get(participant_id)
        if old is not None:
            old.closed = True
        part = FakeParticipant(participant_id, name, role, send, on_state)
        self.participants[participant_id] = part
        self.joins.append(participant_id)
        return part

    async def leave(self, participant_id: str) -> None:
        part = self.participants.pop(participant_id, None)
        if part is not None:
            part.closed = True
            self.left.append(participant_id)

    async def close(self) -> None:
        self.closed = True
        for pid in list(self.participants):
            await self.leave(pid)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            pid: {
                "bitrate_in": 1000,
                "bitrate_out": 2000,
                "packets_lost": 0,
                "rtt_ms": 1.0,
                "frames_forwarded": 10,
                "keyframes_requested": 1,
                "transport": "udp",
                "ice_state": "completed",
            }
            for pid in self.participants
        }


class FakeRegistry:
    def __init__(self) -> None:
        self.rooms: dict[str, FakeRoom] = {}
        self.closed_rooms: list[str] = []

    def get(self, key: str) -> FakeRoom | None:
        return self.rooms.get(key)

    def get_or_create(self, key: str) -> FakeRoom:
        return self.rooms.setdefault(key, FakeRoom(key))

    async def close_room(self, key: str) -> None:
        room = self.rooms.pop(key, None)
        if room is not None:
            await room.close()
            self.closed_rooms.append(key)

    async def close(self) -> None:
        for key in list(self.rooms):
            await self.close_room(key)


async def make_booking(
    client: TestClient,
    student: User,
    tutor: User,
    *,
    starts_in: timedelta = timedelta(0),
    length: timedelta = timedelta(hours=1),
    status: str = "scheduled",
) -> Booking:
    """A booking between `student` and `tutor` starting `starts_in` from now."""
    start = utcnow() + starts_in
    async with client.app[keys.sessionmaker]() as db:
        booking = Booking(
            student_id=student.id,
            tutor_id=tutor.id,
            start_at=start,
            end_at=start + length,
            subject="Algebra",
            note="",
            status=status,
            price_cents=4000,
            currency="EUR",
        )
        db.add(booking)
        await db.commit()
        return booking


async def browser_for(client: TestClient, email: str) -> Any:
    """A separate logged-in HTTP session (own cookie jar) against the same test server."""
    import aiohttp

    from tests.helpers import DEFAULT_PASSWORD, csrf_from

    session = aiohttp.ClientSession(
        base_url=str(client.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )
    async with session.get("/login") as resp:
        token = csrf_from(await resp.text())
    async with session.post(
        "/login",
        data={"email": email, "password": DEFAULT_PASSWORD, "csrf_token": token},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303, await resp.text()
    return session


def origin_of(client: TestClient) -> str:
    """The Origin header a page served by the test server would send."""
    return str(client.make_url("/")).rstrip("/")
