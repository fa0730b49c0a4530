"""Browser-like HTTP/websocket clients for tests against real `panda serve` processes."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp

from panda.store.db import create_engine, create_sessionmaker
from panda.store.models import User
from panda.store.users import create_user
from tests.helpers import DEFAULT_PASSWORD

_CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
_FORM_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def create_users(database_url: str, specs: list[tuple[str, str]]) -> list[User]:
    """Create verified users [(role, email)] directly in the shared database."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as db:
            users = []
            for role, email in specs:
                users.append(
                    await create_user(
                        db,
                        email=email,
                        name=email.split("@")[0].replace(".", " ").title(),
                        password=DEFAULT_PASSWORD,
                        role=role,
                        verified=True,
                        tutor_status="approved" if role == "tutor" else None,
                    )
                )
            await db.commit()
            return users
    finally:
        await engine.dispose()


class Client:
    """A logged-in login session over HTTP, its cookie jar valid on every server process."""

    def __init__(self, email: str, password: str = DEFAULT_PASSWORD) -> None:
        self.email, self.password = email, password
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self, base: str) -> None:
        """Log in through the real form on `base`."""
        async with self.http.get(f"{base}/login") as resp:
            token = _FORM_CSRF_RE.search(await resp.text())
        assert token
        async with self.http.post(
            f"{base}/login",
            data={"email": self.email, "password": self.password, "csrf_token": token[1]},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
        async with self.http.get(f"{base}/messages") as resp:
            match = _CSRF_RE.search(await resp.text())
        assert match
        self.csrf = match[1]

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.http.close()


class Person(Client):
    """A user made by the test, with the chat helpers."""

    def __init__(self, user: User) -> None:
        super().__init__(user.email)
        self.user = user

    async def post(self, url: str, body: Any) -> tuple[int, Any]:
        """POST JSON with the CSRF header; (status, json)."""
        async with self.http.post(url, json=body, headers={"X-CSRF-Token": self.csrf}) as resp:
            return resp.status, await resp.json()

    async def get(self, url: str) -> Any:
        """GET JSON (asserting 200)."""
        async with self.http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def live(self, base: str, watch: dict[int, int] | None = None) -> LiveSocket:
        """Open /ws/live on `base`, resuming the `watch` conversations ({id: last seq}) as a
        reconnecting page does."""
        query = "&".join(f"watch={conv}:{seq}" for conv, seq in (watch or {}).items())
        url = f"{base.replace('http', 'ws', 1)}/ws/live" + (f"?{query}" if query else "")
        ws = await self.http.ws_connect(url)
        sock = LiveSocket(ws)
        hello = await sock.next("hello")
        sock.hello = hello
        return sock


class LiveSocket:
    """A /ws/live connection with helpers to wait for events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    async def next(self, *types: str, wait_s: float = 10) -> dict[str, Any]:
        """The next event of one of `types` (others skipped)."""

        async def wait() -> dict[str, Any]:
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"websocket ended: {msg}")
                event = json.loads(msg.data)
                if not types or event.get("type") in types:
                    return event

        return await asyncio.wait_for(wait(), wait_s)

    async def watch(self, conversation_id: int, after_seq: int | None) -> None:
        """Watch a conversation from `after_seq` and wait for the confirmation."""
        await self.ws.send_json(
            {"type": "watch", "conversation_id": conversation_id, "after_seq": after_seq}
        )

    async def close(self) -> None:
        """Close the websocket."""
        await self.ws.close()
