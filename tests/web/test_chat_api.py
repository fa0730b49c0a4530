"""Chat over HTTP: conversations, messages, limits, read positions, reports and admin review."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from panda import keys
from panda.chat import RATE_LIMIT, RateLimit
from panda.store.models import AuditEntry, Booking
from panda.store.types import utcnow
from tests.web.chat_helpers import login_api, post_json

ClientFactory = Callable[[], Awaitable[TestClient]]


@pytest.fixture
async def other_client(aiohttp_client: Any, client: TestClient) -> ClientFactory:
    """More browsers on the same server (each with its own cookies)."""

    async def make() -> TestClient:
        assert isinstance(client.server, TestServer)
        return await aiohttp_client(client.server)

    return make


async def _pair(client: TestClient, other_client: ClientFactory, make_user: Any) -> tuple:
    student = await make_user("student")
    tutor = await make_user("tutor")
    s_token = await login_api(client, student.email)
    tutor_client = await other_client()
    t_token = await login_api(tutor_client, tutor.email)
    resp = await post_json(client, s_token, "/api/conversations", {"user_id": tutor.id})
    assert resp.status == 201, await resp.text()
    conv = await resp.json()
    return student, tutor, s_token, tutor_client, t_token, conv


async def test_conversation_is_created_once(client: TestClient, other_client, make_user) -> None:
    student, tutor, s_token, tutor_client, t_token, conv = await _pair(
        client, other_client, make_user
    )
    assert conv["other"] == {"id": tutor.id, "name": tutor.name, "role": "tutor", "online": False}
    again = await post_json(client, s_token, "/api/conversations", {"user_id": tutor.id})
    assert again.status == 200
    assert (await again.json())["id"] == conv["id"]
    # The tutor sees the same conversation (now that it exists they may open it too).
    from_tutor = await post_json(
        tutor_client, t_token, "/api/conversations", {"user_id": student.id}
    )
    assert from_tutor.status == 200 and (await from_tutor.json())["id"] == conv["id"]


async def test_who_may_open_a_conversation(client: TestClient, other_client, make_user) -> None:
    student = await make_user("student")
    other_student = await make_user("student")
    pending_tutor = await make_user("tutor", tutor_status="pending")
    tutor = await make_user("tutor")
    token = await login_api(client, student.email)
    cases = [
        ({"user_id": student.id}, 422),
        ({"user_id": other_student.id}, 403),
        ({"user_id": pending_tutor.id}, 403),
        ({"user_id": 999_999}, 404),
        ({"user_id": "x"}, 422),
        ({}, 422),
    ]
    for body, status in cases:
        resp = await post_json(client, token, "/api/conversations", body)
        assert resp.status == status, (body, await resp.text())
        assert "error" in await resp.json()
    bad = await client.post("/api/conversations", data=b"not json", headers={"X-CSRF-Token": token})
    assert bad.status == 400
    # A tutor may write to a student only after a booking.
    tutor_client = await other_client()
    t_token = await login_api(tutor_client, tutor.email)
    resp = await post_json(tutor_client, t_token, "/api/conversations", {"user_id": student.id})
    assert resp.status == 403
    async with client.app[keys.sessionmaker]() as db:
        start = utcnow() + timedelta(days=1)
        db.add(
            Booking(
                student_id=student.id,
                tutor_id=tutor.id,
                start_at=start,
                end_at=start + timedelta(hours=1),
                subject="Maths",
                status="scheduled",
            )
        )
        await db.commit()
    resp = await post_json(tutor_client, t_token, "/api/conversations", {"user_id": student.id})
    assert resp.status == 201


async def test_send_and_page_history(client: TestClient, other_client, make_user) -> None:
    _student, tutor, s_token, tutor_client, t_token, conv = await _pair(
        client, other_client, make_user
    )
    path = f"/api/conversations/{conv['id']}/messages"
    for n in range(1, 121):
        sender, token = (client, s_token) if n % 2 else (tutor_client, t_token)
        resp = await post_json(sender, token, path, {"text": f"message {n}"})
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["message"]["seq"] == n
    newest = await (await client.get(path)).json()
    assert [m["seq"] for m in newest["messages"]] == list(range(71, 121))
    assert newest["has_more"] is True and newest["last_seq"] == 120
    older = await (await client.get(f"{path}?before=71")).json()
    assert [m["seq"] for m in older["messages"]] == list(range(21, 71))
    oldest = await (await client.get(f"{path}?before=21")).json()
    assert [m["seq"] for m in oldest["messages"]] == list(range(1, 21))
    assert oldest["has_more"] is False
    after = await (await client.get(f"{path}?after=115")).json()
    assert [m["seq"] for m in after["messages"]] == [116, 117, 118, 119, 120]
    assert after["messages"][0]["text"] == "message 116"
    assert after["messages"][0]["sender_name"] == tutor.name
    for bad in ("?before=x", "?after=-1", "?before=3&after=1"):
        assert (await client.get(path + bad)).status == 400


async def test_history_cache_agrees_with_database(
    client: TestClient, other_client, make_user
) -> None:
    _student, _tutor, s_token, _tutor_client, _t_token, conv = await _pair(
        client, other_client, make_user
    )
    path = f"/api/conversations/{conv['id']}/messages"
    for n in range(60):
        await post_json(client, s_token, path, {"text": f"m{n}"})
    from panda.bus import BUS

    bus = client.app[BUS]
    cached = await bus.list_range(f"chat:recent:{conv['id']}")
    assert len(cached) == 50  # capped
    first = await (await client.get(path)).json()
    # Losing the cache (a Redis restart) loses nothing: the database refills it.
    await bus.delete(f"chat:recent:{conv['id']}")
    second = await (await client.get(path)).json()
    assert first["messages"] == second["messages"]
    assert len(await bus.list_range(f"chat:recent:{conv['id']}")) == 50


async def test_retry_with_client_id_is_not_duplicated(
    client: TestClient, other_client, make_user
) -> None:
    *_, s_token, _tutor_client, _t_token, conv = await _pair(client, other_client, make_user)
    path = f"/api/conversations/{conv['id']}/messages"
    first = await post_json(client, s_token, path, {"text": "hi", "client_id": "abc123"})
    second = await post_json(client, s_token, path, {"text": "hi", "client_id": "abc123"})
    assert first.status == 201 and second.status == 200
    assert (await first.json())["message"]["id"] == (await second.json())["message"]["id"]
    history = await (await client.get(path)).json()
    assert len(history["messages"]) == 1
    bad = await post_json(client, s_token, path, {"text": "hi", "client_id": "<script>"})
    assert bad.status == 400


async def test_bad_messages_are_refused(client: TestClient, other_client, make_user) -> None:
    *_, s_token, _tutor_client, _t_token, conv = await _pair(client, other_client, make_user)
    path = f"/api/conversations/{conv['id']}/messages"
    assert (await post_json(client, s_token, path, {"text": "x" * 4001})).status == 413
    assert (await post_json(client, s_token, path, {"text": "x" * 4000})).status == 201
    assert (await post_json(client, s_token, path, {"text": "   \n "})).status == 422
    assert (await post_json(client, s_token, path, {"text": 5})).status == 422
    assert (await post_json(client, s_token, path, {})).status == 422
    big = await client.post(
        path, data=b'{"text": "' + b"x" * 40_000 + b'"}', headers={"X-CSRF-Token": s_token}
    )
    assert big.status in (400, 413)
    no_csrf = await client.post(path, json={"text": "hi"})
    assert no_csrf.status == 403
    assert (await client.get("/api/conversations/999999/messages")).status == 404
    assert (await client.get("/api/conversations/abc/messages")).status == 404


async def test_foreign_conversation_is_forbidden(
    client: TestClient, other_client, make_user
) -> None:
    *_, _s_token, _tutor_client, _t_token, conv = await _pair(client, other_client, make_user)
    outsider = await make_user("student")
    intruder = await other_client()
    token = await login_api(intruder, outsider.email)
    base = f"/api/conversations/{conv['id']}"
    assert (await intruder.get(base)).status == 403
    assert (await intruder.get(f"{base}/messages")).status == 403
    assert (await post_json(intruder, token, f"{base}/messages", {"text": "hi"})).status == 403
    assert (await post_json(intruder, token, f"{base}/read", {"seq": 1})).status == 403
    assert (await intruder.get(f"/messages/{conv['id']}")).status == 403
    anonymous = await other_client()
    assert (await anonymous.get("/api/conversations")).status == 401


async def test_flood_is_rate_limited(client: TestClient, other_client, make_user) -> None:
    *_, s_token, tutor_client, t_token, conv = await _pair(client, other_client, make_user)
    path = f"/api/conversations/{conv['id']}/messages"
    statuses = []
    for n in range(130):
        resp = await post_json(client, s_token, path, {"text": f"spam {n}"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert "too quickly" in (await resp.json())["error"]
            break
    assert statuses.count(201) == RateLimit().count
    assert statuses[-1] == 429
    # Another user is not affected.
    assert (await post_json(tutor_client, t_token, path, {"text": "hello"})).status == 201


async def test_html_is_escaped_and_only_http_links_become_links(
    client: TestClient, other_client, make_user
) -> None:
    *_, s_token, tutor_client, _t_token, conv = await _pair(client, other_client, make_user)
    path = f"/api/conversations/{conv['id']}/messages"
    text = (
        "<script>alert(1)</script> <img src=x onerror=alert(2)> javascript:alert(3) "
        'see https://example.org/a?b=1&c="2" and http://x.test/<b>.'
    )
    resp = await post_json(client, s_token, path, {"text": text})
    assert resp.status == 201
    assert (await resp.json())["message"]["text"] == text  # stored as plain text
    html = await (await tutor_client.get(f"/messages/{conv['id']}")).text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert 'href="javascript:' not in html
    assert '<a href="https://example.org/a?b=1&amp;c=" rel=' in html
    assert '<a href="http://x.test/" rel="noopener noreferrer nofollow ugc"' in html


async def test_unread_counts_and_read_receipts(client: TestClient, other_client, make_user) -> None:
    _student, _tutor, s_token, tutor_client, t_token, conv = await _pair(
        client, other_client, make_user
    )
    path = f"/api/conversations/{conv['id']}/messages"
    for n in range(3):
        await post_json(client, s_token, path, {"text": f"q{n}"})
    listing = await (await tutor_client.get("/api/conversations")).json()
    assert listing["unread_total"] == 3
    assert listing["conversations"][0]["unread"] == 3
    assert listing["conversations"][0]["last_message"]["text"] == "q2"
    mine = await (await client.get("/api/conversations")).json()
    assert mine["unread_total"] == 0
    read = await post_json(
        tutor_client, t_token, f"/api/conversations/{conv['id']}/read", {"seq": 2}
    )
    assert (await read.json())["unread"] == 1
    # Reading never goes backwards or past the end.
    await post_json(tutor_client, t_token, f"/api/conversations/{conv['id']}/read", {"seq": 1})
    state = await (await tutor_client.get(f"/api/conversations/{conv['id']}")).json()
    assert state["last_read_seq"] == 2 and state["unread"] == 1
    await post_json(tutor_client, t_token, f"/api/conversations/{conv['id']}/read", {"seq": 99})
    state = await (await client.get(f"/api/conversations/{conv['id']}")).json()
    assert state["other_read_seq"] == 3
    bad = await post_json(
        tutor_client, t_token, f"/api/conversations/{conv['id']}/read", {"seq": "x"}
    )
    assert bad.status == 422


async def test_report_goes_to_admin_queue_and_reading_is_audited(
    client: TestClient, other_client, make_user
) -> None:
    _student, _tutor, s_token, tutor_client, t_token, conv = await _pair(
        client, other_client, make_user
    )
    path = f"/api/conversations/{conv['id']}/messages"
    sent = await post_json(tutor_client, t_token, path, {"text": "buy my course elsewhere"})
    message_id = (await sent.json())["message"]["id"]
    own = await post_json(client, s_token, path, {"text": "mine"})
    own_id = (await own.json())["message"]["id"]
    admin = await make_user("admin")
    admin_client = await other_client()
    await login_api(admin_client, admin.email)
    # Before any report an admin cannot read the conversation.
    assert (await admin_client.get(f"/admin/chat/conversations/{conv['id']}")).status == 403
    report = await post_json(
        client, s_token, f"/api/messages/{message_id}/report", {"reason": "spam"}
    )
    assert report.status == 201
    again = await post_json(client, s_token, f"/api/messages/{message_id}/report", {"reason": "x"})
    assert again.status == 200
    assert (await post_json(client, s_token, f"/api/messages/{own_id}/report", {})).status == 422
    assert (await post_json(client, s_token, "/api/messages/999999/report", {})).status == 404
    # Non-admins cannot see the queue.
    assert (await client.get("/admin/chat/reports")).status == 403
    queue = await (await admin_client.get("/admin/chat/reports")).text()
    assert "buy my course elsewhere" in queue and "spam" in queue
    page = await admin_client.get(f"/admin/chat/conversations/{conv['id']}")
    assert page.status == 200
    assert "buy my course elsewhere" in await page.text()
    async with client.app[keys.sessionmaker]() as db:
        entries = (await db.execute(select(AuditEntry))).scalars().all()
    assert [(e.actor_id, e.action, e.target_id) for e in entries] == [
        (admin.id, "chat.read_conversation", str(conv["id"]))
    ]
    # Hiding the message closes the report; the text is gone for the members.
    token = await login_api(admin_client, admin.email)
    html = await (await admin_client.get("/admin/chat/reports")).text()
    import re

    report_id = re.search(r'data-report-id="(\d+)"', html).group(1)
    resp = await admin_client.post(
        f"/admin/chat/reports/{report_id}",
        data={"action": "hide", "csrf_token": token},
        allow_redirects=False,
    )
    assert resp.status == 303
    history = await (await client.get(path)).json()
    hidden = next(m for m in history["messages"] if m["id"] == message_id)
    assert hidden["hidden"] is True and hidden["text"] == ""
    assert "Nothing to review" in await (await admin_client.get("/admin/chat/reports")).text()
    bad = await admin_client.post(
        f"/admin/chat/reports/{report_id}", data={"action": "nuke", "csrf_token": token}
    )
    assert bad.status == 422


async def test_pages_render(client: TestClient, other_client, make_user) -> None:
    student, tutor, s_token, tutor_client, t_token, conv = await _pair(
        client, other_client, make_user
    )
    listing = await client.get("/messages")
    assert listing.status == 200
    assert tutor.name in await listing.text()
    page = await client.get(f"/messages/{conv['id']}")
    html = await page.text()
    assert page.status == 200 and "Say hello" in html
    # The no-JavaScript form works too.
    resp = await client.post(
        f"/messages/{conv['id']}",
        data={"text": "from a form", "csrf_token": s_token},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert "from a form" in await (await tutor_client.get(f"/messages/{conv['id']}")).text()
    start = await tutor_client.post(
        "/messages/start",
        data={"user_id": str(student.id), "csrf_token": t_token},
        allow_redirects=False,
    )
    assert start.status == 303 and start.headers["Location"] == f"/messages/{conv['id']}"
    assert (await client.get("/messages/123456")).status == 404
    anon = await other_client()
    resp = await anon.get("/messages", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")


async def test_openapi_documents_chat(client: TestClient) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    for path in (
        "/api/conversations",
        "/api/conversations/{id}",
        "/api/conversations/{id}/messages",
        "/api/conversations/{id}/read",
        "/api/messages/{id}/report",
    ):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/conversations/{id}/messages"]) == {"get", "post"}


async def test_rate_limit_is_configurable(aiohttp_client: Any, settings: Any, make_user) -> None:
    from panda.app import create_app

    app: web.Application = create_app(settings)
    app[RATE_LIMIT] = RateLimit(count=2, window=60)
    c = await aiohttp_client(app)
    async with app[keys.sessionmaker]() as db:
        from panda.store.users import create_user
        from tests.helpers import DEFAULT_PASSWORD

        s = await create_user(
            db, email="s@x.test", name="S", password=DEFAULT_PASSWORD, role="student", verified=True
        )
        t = await create_user(
            db,
            email="t@x.test",
            name="T",
            password=DEFAULT_PASSWORD,
            role="tutor",
            verified=True,
            tutor_status="approved",
        )
        await db.commit()
    token = await login_api(c, s.email)
    conv = await (await post_json(c, token, "/api/conversations", {"user_id": t.id})).json()
    path = f"/api/conversations/{conv['id']}/messages"
    codes = [(await post_json(c, token, path, {"text": "x"})).status for _ in range(3)]
    assert codes == [201, 201, 429]
