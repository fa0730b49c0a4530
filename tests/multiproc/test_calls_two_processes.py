"""A call's room lives on one of two `panda serve` processes sharing PostgreSQL and Redis.

Signalling only (the browser test in tests/e2e/test_call_processes_browser.py proves media):
redirects, room commands from the other process, and a killed owner whose lease lapses.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import LiveServer
from tests.multiproc.helpers import Client

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(300)]



class Member(Client):
    """A logged-in demo user with the call helpers."""

    async def call(self, base: str, session_id: int, origin: str | None = None) -> CallSocket:
        """Open the call websocket of `base` as a page served by `origin` (default: `base`)."""
        url = f"{base.replace('http', 'ws', 1)}/ws/sessions/{session_id}/call"
        return await self.open(url, origin or base)

    async def open(self, url: str, origin: str) -> CallSocket:
        ws = await self.http.ws_connect(url, headers={"Origin": origin})
        return CallSocket(ws)

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf}
        async with self.http.request(method, url, json=body, headers=headers) as resp:
            return resp.status, await resp.json()


class CallSocket:
    """The call websocket with a helper that waits for one message type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def next(self, *types: str, wait_s: float = 20) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"websocket ended: {msg} ({self.ws.close_code})")
                event = json.loads(msg.data)
                if event.get("type") in types:
                    return event

        return await asyncio.wait_for(wait(), wait_s)

    async def join(self) -> dict[str, Any]:
        """Send `join`; the first `join` acknowledgement or `redirect`."""
        await self.ws.send_json({"type": "join"})
        return await self.next("join", "redirect", "error")

    async def closed(self) -> int | None:
        """Wait for the server to close the socket; its close code."""
        while True:
            msg = await self.ws.receive(timeout=20)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    made: list[Member] = []
    yield made
    for member in made:
        await member.close()


async def logged_in(
    demo: dict[str, Any], role: str, base: str, members: list[Member]
) -> Member:
    member = Member(demo[role]["email"], demo[role]["password"])
    members.append(member)
    await member.login(base)
    return member


async def test_second_participant_is_redirected_to_the_owner_and_commands_reach_it(
    processes: tuple[LiveServer, LiveServer, dict[str, Any]],
    members: list[Member],
    fresh_redis_url: str,
) -> None:
    a, b, demo = processes
    sid = int(demo["session_id"])
    student = await logged_in(demo, "student", a.url, members)
    tutor = await logged_in(demo, "tutor", a.url, members)
    admin = await logged_in(demo, "admin", a.url, members)

    on_a = await student.call(a.url, sid)
    joined = await on_a.join()
    assert joined["type"] == "join" and joined["participants"] == []

    # The tutor's page is served by B: B answers the join with the owner's socket.
    first = await tutor.call(b.url, sid)
    redirect = await first.join()
    assert redirect == {
        "type": "redirect",
        "url": f"ws://127.0.0.1:{a.port}/ws/sessions/{sid}/call",
    }
    assert await first.closed() == 4004
    # The page keeps its origin (B's address): A accepts it as a sibling's.
    followed = await tutor.open(redirect["url"], origin=b.url)
    ack = await followed.join()
    assert ack["type"] == "join"
    assert [p["role"] for p in ack["participants"]] == ["student"]
    seen = await on_a.next("participant-joined")
    assert seen["role"] == "tutor"

    # A page from an address that is not one of ours is still refused.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await student.open(redirect["url"], origin="http://127.0.0.1:1")
    assert refused.value.status == 403

    # The room's lease names A.
    client = aioredis.Redis.from_url(fresh_redis_url, decode_responses=True)
    try:
        owner = await client.get(f"panda:lease:call-room:{sid}")
    finally:
        await client.aclose()
    assert owner is not None and owner.startswith(f"{a.url}#")

    # Room info and commands sent to B are answered by A, which holds the call.
    room = await admin.request("GET", f"{b.url}/api/sessions/{sid}/room")
    assert room[0] == 200
    live = {p["role"]: p["connection"] for p in room[1]["participants"]}
    assert live == {"student": "connecting", "tutor": "connecting"}, room[1]
    stats = await admin.request("GET", f"{b.url}/api/sessions/{sid}/room/stats")
    assert stats[0] == 200 and stats[1]["live"] is True
    assert sorted(p["role"] for p in stats[1]["participants"].values()) == ["student", "tutor"]
    status, started = await tutor.request(
        "POST", f"{b.url}/api/sessions/{sid}/recording", {"action": "start"}
    )
    assert status == 200 and started["recording"] is True, started
    assert (await on_a.next("recording"))["state"] == "started"
    status, again = await tutor.request(
        "POST", f"{b.url}/api/sessions/{sid}/recording", {"action": "start"}
    )
    assert status == 409 and "already" in again["error"]
    status, stopped = await tutor.request(
        "POST", f"{b.url}/api/sessions/{sid}/recording", {"action": "stop"}
    )
    assert status == 200
    assert stopped == {"recording": False, "recording_id": started["recording_id"]}
    status, refused_student = await student.request(
        "POST", f"{b.url}/api/sessions/{sid}/recording", {"action": "start"}
    )
    assert status == 403, refused_student

    status, ended = await tutor.request("POST", f"{b.url}/api/sessions/{sid}/room/end")
    assert status == 200 and ended["status"] == "ended"
    assert (await on_a.next("leave")) == {"type": "leave", "reason": "ended"}
    assert await on_a.closed() == 4002
    assert await followed.closed() == 4002


async def test_a_killed_owners_room_comes_back_on_the_live_process(
    processes: tuple[LiveServer, LiveServer, dict[str, Any]],
    members: list[Member],
) -> None:
    a, b, demo = processes
    sid = int(demo["session_id"])
    student = await logged_in(demo, "student", b.url, members)
    tutor = await logged_in(demo, "tutor", b.url, members)
    admin = await logged_in(demo, "admin", b.url, members)

    on_a = await student.call(a.url, sid)
    assert (await on_a.join())["type"] == "join"
    a.stop(signal.SIGKILL)

    # B still sends joins to the dead owner until its lease lapses (12 s), then takes the room.
    answers = []
    deadline = time.monotonic() + 40
    while True:
        sock = await tutor.call(b.url, sid)
        answer = await sock.join()
        answers.append(answer["type"])
        if answer["type"] == "join":
            break
        assert answer["type"] == "redirect", answer
        assert time.monotonic() < deadline, answers
        await sock.closed()
        await asyncio.sleep(0.5)  # a page's reconnect back-off
    assert set(answers[:-1]) <= {"redirect"}

    # The student's page reconnects to its own server (B) and lands in the same room.
    back = await student.call(b.url, sid)
    ack = await back.join()
    assert ack["type"] == "join" and [p["role"] for p in ack["participants"]] == ["tutor"]
    stats = await admin.request("GET", f"{b.url}/api/sessions/{sid}/room/stats")
    assert stats[1]["live"] is True and len(stats[1]["participants"]) == 2


async def test_workers_of_one_server_redirect_to_each_others_own_port(
    tmp_path: Path, fresh_postgres_url: str, fresh_redis_url: str, members: list[Member]
) -> None:
    server = LiveServer(
        tmp_path / "workers",
        {
            "PANDA_DATABASE_URL": fresh_postgres_url,
            "PANDA_REDIS_URL": fresh_redis_url,
            "PANDA_WORKERS": "2",
        },
    )
    # Worker i announces PANDA_NODE_URL's port + i.
    server.env["PANDA_NODE_URL"] = f"http://127.0.0.1:{server.port + 100}"
    server.data_dir.mkdir()
    try:
        server.start()
        worker1 = f"http://127.0.0.1:{server.port + 1}"
        demo = json.loads(server.run_cli("demo", "--json"))
        sid = int(demo["session_id"])
        student = await logged_in(demo, "student", server.url, members)
        tutor = await logged_in(demo, "tutor", server.url, members)
        deadline = time.monotonic() + 60
        while True:  # worker 1 may still be starting
            try:
                on_1 = await student.call(worker1, sid)
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert (await on_1.join())["type"] == "join"
        on_0 = await tutor.call(server.url, sid)
        assert await on_0.join() == {
            "type": "redirect",
            "url": f"ws://127.0.0.1:{server.port + 101}/ws/sessions/{sid}/call",
        }
    finally:
        server.stop()
