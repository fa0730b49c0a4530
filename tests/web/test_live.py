"""/ws/live: chat events exactly once and in order, resume, receipts, presence, other events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from panda import keys
from panda.bus import BUS
from panda.store import chat as store
from panda.web.live import LIVE_SNAPSHOTS, publish_to_admins, publish_to_user
from tests.web.chat_helpers import login_api, post_json

pytestmark = pytest.mark.timeout(60)


async def next_event(
    ws: aiohttp.ClientWebSocketResponse,
    pred: Callable[[dict[str, Any]], bool] = lambda e: True,
    wait_s: float = 5,
) -> dict[str, Any]:
    """The next event matching `pred` (others are skipped)."""

    async def wait() -> dict[str, Any]:
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            event = json.loads(msg.data)
            if pred(event):
                return event

    return await asyncio.wait_for(wait(), wait_s)


def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == kind


async def messages_until(ws: aiohttp.ClientWebSocketResponse, last_seq: int) -> list[int]:
    """Seqs of chat messages received until `last_seq` arrives, plus anything right behind it."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < last_seq:
        event = await next_event(ws, is_type("message"))
        seqs.append(event["message"]["seq"])
    # Nothing else (no duplicate) may follow: ping and expect the pong next.
    await ws.send_json({"type": "ping"})
    follow = await next_event(ws, lambda e: e["type"] in ("message", "pong"))
    assert follow["type"] == "pong", f"unexpected extra event {follow}"
    return seqs


@pytest.fixture
async def pair(aiohttp_client: Any, client: TestClient, make_user: Any) -> dict[str, Any]:
    student = await make_user("student")
    tutor = await make_user("tutor")
    s_token = await login_api(client, student.email)
    assert isinstance(client.server, TestServer)
    tutor_client = await aiohttp_client(client.server)
    t_token = await login_api(tutor_client, tutor.email)
    resp = await post_json(client, s_token, "/api/conversations", {"user_id": tutor.id})
    conv = await resp.json()
    return {
        "student": student,
        "tutor": tutor,
        "s": client,
        "s_token": s_token,
        "t": tutor_client,
        "t_token": t_token,
        "conv": conv["id"],
        "path": f"/api/conversations/{conv['id']}/messages",
    }


async def test_message_reaches_both_members_live(pair: dict[str, Any]) -> None:
    t_ws = await pair["t"].ws_connect("/ws/live")
    s_ws = await pair["s"].ws_connect("/ws/live")
    hello = await next_event(t_ws, is_type("hello"))
    assert hello["user_id"] == pair["tutor"].id and hello["unread_total"] == 0
    resp = await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "Hello <b>tutor</b>"})
    stored = (await resp.json())["message"]
    event = await next_event(t_ws, is_type("message"))
    assert event["message"] == stored
    assert event["unread"] == 1 and event["unread_total"] == 1
    mine = await next_event(s_ws, is_type("message"))
    assert mine["message"]["id"] == stored["id"] and mine["unread"] == 0
    await t_ws.close()
    await s_ws.close()


async def test_resume_after_reconnect_loses_and_repeats_nothing(pair: dict[str, Any]) -> None:
    ws = await pair["t"].ws_connect("/ws/live")
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 0})
    assert (await next_event(ws, is_type("watching")))["seq"] == 0
    for n in range(5):
        await post_json(pair["s"], pair["s_token"], pair["path"], {"text": f"m{n}"})
    assert await messages_until(ws, 5) == [1, 2, 3, 4, 5]
    await ws.close()  # the tab lost its connection...
    for n in range(5, 12):
        await post_json(pair["s"], pair["s_token"], pair["path"], {"text": f"m{n}"})
    ws = await pair["t"].ws_connect("/ws/live")
    # ...and resumes from the last seq it showed.
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 5})
    sender = asyncio.create_task(
        post_json(pair["s"], pair["s_token"], pair["path"], {"text": "live again"})
    )
    assert await messages_until(ws, 13) == list(range(6, 14))
    await sender
    await ws.close()


async def test_events_overtaken_between_processes_are_delivered_in_order(
    pair: dict[str, Any], client: TestClient
) -> None:
    ws = await pair["t"].ws_connect("/ws/live")
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": None})
    await next_event(ws, is_type("watching"))
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "one"})
    assert (await next_event(ws, is_type("message")))["message"]["seq"] == 1
    # Two more are stored, but only the event of the last one arrives first (as when
    # another process's publish overtakes): the connection fills the gap from the database.
    async with client.app[keys.sessionmaker]() as db:
        two, _ = await store.add_message(db, pair["conv"], pair["student"].id, "two", None)
    async with client.app[keys.sessionmaker]() as db:
        three, _ = await store.add_message(db, pair["conv"], pair["student"].id, "three", None)
    bus = client.app[BUS]
    channel = f"user:{pair['tutor'].id}"
    for m in (three, two):
        await bus.publish(
            channel,
            {
                "type": "message",
                "conversation_id": pair["conv"],
                "message": store.message_json(m, pair["student"].name),
            },
        )
    texts = []
    for _ in range(2):
        texts.append((await next_event(ws, is_type("message")))["message"]["text"])
    assert texts == ["two", "three"]
    await ws.send_json({"type": "ping"})
    follow = await next_event(ws, lambda e: e["type"] in ("message", "pong"))
    assert follow["type"] == "pong"
    await ws.close()


async def test_bus_resync_refills_from_the_database(
    pair: dict[str, Any], client: TestClient
) -> None:
    ws = await pair["t"].ws_connect("/ws/live")
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 0})
    await next_event(ws, is_type("watching"))
    # Stored while the bus was down: nobody was told.
    async with client.app[keys.sessionmaker]() as db:
        await store.add_message(db, pair["conv"], pair["student"].id, "while away", None)
    client.app[BUS]._dispatch_resync("test")
    event = await next_event(ws, is_type("message"))
    assert event["message"]["text"] == "while away"
    unread = await next_event(ws, is_type("unread"))
    assert unread["unread_total"] == 1
    await ws.close()


async def test_read_receipt_reaches_the_sender(pair: dict[str, Any]) -> None:
    s_ws = await pair["s"].ws_connect("/ws/live")
    t_ws = await pair["t"].ws_connect("/ws/live")
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "did you get this?"})
    await next_event(t_ws, is_type("message"))
    await t_ws.send_json({"type": "read", "conversation_id": pair["conv"], "seq": 1})
    receipt = await next_event(s_ws, is_type("read"))
    assert receipt == {
        "type": "read",
        "conversation_id": pair["conv"],
        "user_id": pair["tutor"].id,
        "seq": 1,
    }
    own = await next_event(t_ws, is_type("read"))
    assert own["unread"] == 0 and own["unread_total"] == 0
    await s_ws.close()
    await t_ws.close()


async def test_presence_is_announced_and_listed(pair: dict[str, Any]) -> None:
    s_ws = await pair["s"].ws_connect("/ws/live")
    await next_event(s_ws, is_type("hello"))
    listing = await (await pair["s"].get("/api/conversations")).json()
    assert listing["conversations"][0]["other"]["online"] is False
    t_ws = await pair["t"].ws_connect("/ws/live")
    online = await next_event(s_ws, is_type("presence"))
    assert online == {"type": "presence", "user_id": pair["tutor"].id, "online": True}
    listing = await (await pair["s"].get("/api/conversations")).json()
    assert listing["conversations"][0]["other"]["online"] is True
    # A second tab does not announce again; closing one of two keeps the user online.
    t_ws2 = await pair["t"].ws_connect("/ws/live")
    await next_event(t_ws2, is_type("hello"))
    await t_ws2.close()
    await t_ws.close()
    offline = await next_event(s_ws, is_type("presence"))
    assert offline["online"] is False
    await s_ws.close()


async def test_bad_client_input_gets_errors_not_a_crash(pair: dict[str, Any]) -> None:
    outsider_conv = 987654
    ws = await pair["s"].ws_connect("/ws/live")
    await next_event(ws, is_type("hello"))
    for payload in (
        "not json",
        json.dumps([1, 2]),
        json.dumps({"type": "nope"}),
        json.dumps({"type": "watch", "conversation_id": "x"}),
        json.dumps({"type": "watch", "conversation_id": outsider_conv}),
        json.dumps({"type": "read", "conversation_id": pair["conv"], "seq": -1}),
        "x" * 10_000,
    ):
        await ws.send_str(payload)
        error = await next_event(ws, is_type("error"))
        assert error["error"]
    await ws.send_json({"type": "ping"})
    assert (await next_event(ws))["type"] == "pong"
    await ws.close()


async def test_client_flood_is_throttled(pair: dict[str, Any]) -> None:
    ws = await pair["s"].ws_connect("/ws/live")
    await next_event(ws, is_type("hello"))
    for _ in range(100):
        await ws.send_json({"type": "ping"})
    error = await next_event(ws, is_type("error"))
    assert error["status"] == 429
    await ws.close()


async def test_foreign_conversation_cannot_be_watched(
    pair: dict[str, Any], aiohttp_client: Any, client: TestClient, make_user: Any
) -> None:
    outsider = await make_user("student")
    other = await aiohttp_client(client.server)
    await login_api(other, outsider.email)
    ws = await other.ws_connect("/ws/live")
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 0})
    error = await next_event(ws, is_type("error"))
    assert error["status"] == 403
    await ws.close()


async def test_login_and_origin_are_required(
    pair: dict[str, Any], aiohttp_client: Any, client: TestClient
) -> None:
    anonymous = await aiohttp_client(client.server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await anonymous.ws_connect("/ws/live")
    assert exc.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await pair["s"].ws_connect("/ws/live", headers={"Origin": "http://evil.example"})
    assert exc.value.status == 403
    ok = await pair["s"].ws_connect("/ws/live", headers={"Origin": "http://127.0.0.1:8080"})
    await next_event(ok, is_type("hello"))
    await ok.close()


async def test_other_areas_can_push_events(aiohttp_client: Any, settings: Any) -> None:
    from datetime import timedelta

    from panda.app import create_app
    from panda.store.models import Booking
    from panda.store.types import utcnow
    from panda.store.users import create_user
    from panda.web.live import publish_sessions_changed
    from tests.helpers import DEFAULT_PASSWORD

    app = create_app(settings)
    extra: list[dict[str, Any]] = []

    async def provider(app_: Any, user: Any) -> list[dict[str, Any]]:
        return [{"type": "notification", "text": "Welcome back"}] if user.is_admin else extra

    app[LIVE_SNAPSHOTS].append(provider)
    c = await aiohttp_client(app)
    async with app[keys.sessionmaker]() as db:
        admin = await create_user(
            db, email="a@x.test", name="A", password=DEFAULT_PASSWORD, role="admin", verified=True
        )
        student = await create_user(
            db, email="s@x.test", name="Sam", password=None, role="student", verified=True
        )
        tutor = await create_user(
            db,
            email="t@x.test",
            name="Tia",
            password=None,
            role="tutor",
            verified=True,
            tutor_status="approved",
        )
        await db.commit()
    await login_api(c, admin.email)
    ws = await c.ws_connect("/ws/live")
    # Admins get the sessions in progress when they connect, then whatever others publish.
    assert (await next_event(ws, is_type("sessions")))["sessions"] == []
    assert (await next_event(ws, is_type("notification")))["text"] == "Welcome back"
    async with app[keys.sessionmaker]() as db:
        now = utcnow()
        db.add(
            Booking(
                student_id=student.id,
                tutor_id=tutor.id,
                start_at=now - timedelta(minutes=5),
                end_at=now + timedelta(minutes=55),
                subject="Algebra",
                status="in_progress",
            )
        )
        await db.commit()
    await publish_sessions_changed(app)
    sessions = (await next_event(ws, is_type("sessions")))["sessions"]
    assert [(s["subject"], s["student"], s["tutor"], s["status"]) for s in sessions] == [
        ("Algebra", "Sam", "Tia", "in_progress")
    ]
    await publish_to_user(app, admin.id, {"type": "notification", "text": "Booking confirmed"})
    assert (await next_event(ws, is_type("notification")))["text"] == "Booking confirmed"
    await publish_to_admins(app, {"type": "sessions", "sessions": [{"id": 4}]})
    assert (await next_event(ws, is_type("sessions")))["sessions"] == [{"id": 4}]
    await ws.close()


async def test_watch_starts_exactly_where_the_page_is(pair: dict[str, Any]) -> None:
    ws = await pair["t"].ws_connect("/ws/live")
    await next_event(ws, is_type("hello"))
    # Not watched yet: messages come as notifications (the page may not have them).
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "one"})
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "two"})
    assert (await next_event(ws, is_type("message")))["message"]["seq"] == 1
    assert (await next_event(ws, is_type("message")))["message"]["seq"] == 2
    # The page loaded history up to seq 1 only: watching from 1 sends 2 again, then 3 once.
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 1})
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "three"})
    assert await messages_until(ws, 3) == [2, 3]
    await ws.close()


async def test_hidden_message_is_updated_live(
    pair: dict[str, Any], aiohttp_client: Any, client: TestClient, make_user: Any
) -> None:
    import re

    ws = await pair["s"].ws_connect("/ws/live")
    await next_event(ws, is_type("hello"))
    resp = await post_json(pair["t"], pair["t_token"], pair["path"], {"text": "rude words"})
    message_id = (await resp.json())["message"]["id"]
    await post_json(pair["s"], pair["s_token"], f"/api/messages/{message_id}/report", {})
    admin = await make_user("admin")
    admin_client = await aiohttp_client(client.server)
    token = await login_api(admin_client, admin.email)
    html = await (await admin_client.get("/admin/chat/reports")).text()
    report_id = re.search(r'data-report-id="(\d+)"', html).group(1)  # type: ignore[union-attr]
    await admin_client.post(
        f"/admin/chat/reports/{report_id}", data={"action": "hide", "csrf_token": token}
    )
    update = await next_event(ws, is_type("message_update"))
    assert update["message"]["id"] == message_id
    assert update["message"]["hidden"] is True and update["message"]["text"] == ""
    await ws.close()


async def _send_in_hook(
    monkeypatch: pytest.MonkeyPatch, client: TestClient, pair: dict[str, Any], texts: list[str]
) -> None:
    """Store and publish `texts` right after the next live connection subscribed to the bus
    and before it reads anything from the database (the reconnect window)."""
    from panda import chat
    from panda.web import live

    original = live.LiveConnection._presence_join
    fired = False

    async def join_then_send(self: live.LiveConnection) -> None:
        nonlocal fired
        if not fired:
            fired = True
            for text in texts:
                await chat.send_message(client.app, pair["student"], pair["conv"], text, None)
        await original(self)

    monkeypatch.setattr(live.LiveConnection, "_presence_join", join_then_send)


async def test_reconnect_with_watch_in_url_is_filled_before_bus_events(
    pair: dict[str, Any], client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        await post_json(pair["s"], pair["s_token"], pair["path"], {"text": f"m{n}"})
    # The tab had 1..3, lost its connection; 6 and 7 are sent (and published) exactly while it
    # reconnects: subscribed already, nothing read from the database yet.
    await _send_in_hook(monkeypatch, client, pair, ["m5", "m6"])
    ws = await pair["t"].ws_connect(f"/ws/live?watch={pair['conv']}:3")
    events = []
    while len(events) < 4:
        events.append(await next_event(ws, is_type("message")))
    assert [e["message"]["seq"] for e in events] == [4, 5, 6, 7]
    assert all(e["watched"] is True for e in events)
    watching = await next_event(ws, is_type("watching"))
    assert watching == {"type": "watching", "conversation_id": pair["conv"], "seq": 7}
    await ws.send_json({"type": "ping"})
    follow = await next_event(ws, lambda e: e["type"] in ("message", "pong"))
    assert follow["type"] == "pong", f"duplicate after the fill: {follow}"
    await ws.close()


async def test_events_before_a_late_watch_are_marked_unwatched(
    pair: dict[str, Any], client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        await post_json(pair["s"], pair["s_token"], pair["path"], {"text": f"m{n}"})
    # The page has 1..2 and watches over a message (an old client): 4 is published between
    # the connect and the watch, so it overtakes 3 on the wire.
    await _send_in_hook(monkeypatch, client, pair, ["m3"])
    ws = await pair["t"].ws_connect("/ws/live")
    early = await next_event(ws, is_type("message"))
    assert early["message"]["seq"] == 4 and early["watched"] is False
    await ws.send_json({"type": "watch", "conversation_id": pair["conv"], "after_seq": 2})
    await post_json(pair["s"], pair["s_token"], pair["path"], {"text": "m4"})
    # What a page may rely on (the watched events) is exactly once and in stored order.
    assert await messages_until(ws, 5) == [3, 4, 5]
    await ws.close()


async def test_bad_watch_urls_are_refused(pair: dict[str, Any], client: TestClient) -> None:
    for query in ("watch=x", "watch=1:-2", "watch=1:2:3", "watch=:4", "watch=1%3A"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await pair["t"].ws_connect(f"/ws/live?{query}")
        assert exc.value.status == 400, query
    many = "&".join(f"watch={n}" for n in range(1, 60))
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await pair["t"].ws_connect(f"/ws/live?{many}")
    assert exc.value.status == 400
    # A conversation the user is not part of: an error event, the connection stays usable.
    ws = await pair["t"].ws_connect(f"/ws/live?watch=999999:0&watch={pair['conv']}")
    error = await next_event(ws, is_type("error"))
    assert error["conversation_id"] == 999999 and error["status"] in (403, 404)
    watching = await next_event(ws, is_type("watching"))
    assert watching["conversation_id"] == pair["conv"]
    await ws.close()
