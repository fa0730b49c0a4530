"""Websockets end with their login session: logout, password change, deactivation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.store.models import UserSession
from panda.store.types import utcnow
from panda.web import ws_sessions
from panda.web.call_ws import ROOMS
from tests.helpers import csrf_from
from tests.web.call_fakes import FakeRegistry, browser_for, make_booking, origin_of

pytestmark = pytest.mark.timeout(60)
NEW_PASSWORD = "a brand new passphrase 42"


@pytest.fixture
def app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app[ROOMS] = FakeRegistry()
    return app


class Browser:
    """One logged-in browser (own cookies) with its live and call websockets."""

    def __init__(self, client: TestClient, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.http = http
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    async def open(self, booking_id: int) -> None:
        headers = {"Origin": origin_of(self.client)}
        self.sockets["live"] = await self.http.ws_connect("/ws/live", headers=headers)
        assert (await self._next_json("live"))["type"] == "hello"
        self.sockets["call"] = await self.http.ws_connect(
            f"/ws/sessions/{booking_id}/call", headers=headers
        )

    async def _next_json(self, name: str) -> dict[str, Any]:
        msg = await self.sockets[name].receive(timeout=10)
        assert msg.type == WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def post(self, path: str, data: dict[str, str], page: str) -> int:
        async with self.http.get(page) as resp:
            token = csrf_from(await resp.text())
        async with self.http.post(
            path, data={**data, "csrf_token": token}, allow_redirects=False
        ) as resp:
            return resp.status

    async def assert_closed_by_server(self) -> None:
        for name, ws in self.sockets.items():
            msg = await ws.receive(timeout=10)
            while msg.type == WSMsgType.TEXT:  # events sent before the end may still be queued
                msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.CLOSE, (name, msg)
            assert msg.data == ws_sessions.CLOSE_SESSION_ENDED, (name, msg)

    async def assert_open(self) -> None:
        ws = self.sockets["live"]
        await ws.send_json({"type": "ping"})
        while (event := await self._next_json("live"))["type"] != "pong":
            pass
        assert not self.sockets["call"].closed
        assert event == {"type": "pong"}

    async def live_status(self) -> int:
        """The status of a new /ws/live handshake (101 when it is accepted)."""
        try:
            ws = await self.http.ws_connect("/ws/live", headers={"Origin": origin_of(self.client)})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


@pytest.fixture
async def world(client: TestClient, make_user: Any) -> AsyncIterator[dict[str, Any]]:
    student = await make_user("student")
    tutor = await make_user("tutor")
    admin = await make_user("admin")
    booking = await make_booking(client, student, tutor)
    opened: list[aiohttp.ClientSession] = []

    async def browser(user: Any) -> Browser:
        http = await browser_for(client, user.email)
        opened.append(http)
        b = Browser(client, http)
        await b.open(booking.id)
        return b

    yield {"student": student, "tutor": tutor, "admin": admin, "browser": browser}
    for http in opened:
        await http.close()


async def test_logout_closes_only_that_sessions_websockets(world: dict[str, Any]) -> None:
    laptop = await world["browser"](world["student"])
    phone = await world["browser"](world["student"])
    assert await laptop.post("/logout", {}, page="/dashboard") == 303
    await laptop.assert_closed_by_server()
    assert await laptop.live_status() == 401
    await phone.assert_open()


async def test_password_change_closes_the_other_devices_websockets(
    world: dict[str, Any],
) -> None:
    laptop = await world["browser"](world["student"])
    phone = await world["browser"](world["student"])
    status = await phone.post(
        "/profile/password",
        {
            "current_password": "correct horse battery staple",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
        },
        page="/profile",
    )
    assert status == 303
    await laptop.assert_closed_by_server()
    assert await laptop.live_status() == 401
    await phone.assert_open()


async def test_deactivation_closes_every_websocket_of_the_user(world: dict[str, Any]) -> None:
    student = await world["browser"](world["student"])
    tutor = await world["browser"](world["tutor"])
    admin = Browser(student.client, await browser_for(student.client, world["admin"].email))
    try:
        status = await admin.post(
            f"/admin/users/{world['student'].id}/deactivate",
            {},
            page=f"/admin/users/{world['student'].id}",
        )
    finally:
        await admin.http.close()
    assert status == 303
    await student.assert_closed_by_server()
    await tutor.assert_open()


async def test_a_revocation_the_bus_missed_is_caught_by_the_database_check(
    client: TestClient, world: dict[str, Any]
) -> None:
    laptop = await world["browser"](world["student"])
    phone = await world["browser"](world["tutor"])
    # Revoked behind the server's back (no bus message: e.g. Redis was down).
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(
            update(UserSession)
            .where(UserSession.user_id == world["student"].id)
            .values(revoked_at=utcnow())
        )
        await db.commit()
    assert await ws_sessions.recheck(client.app) == 2
    await laptop.assert_closed_by_server()
    await phone.assert_open()
