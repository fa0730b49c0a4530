"""The call page, the room API and the room lifecycle (no media needed)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.store import calls as store
from panda.store.chat import get_conversation_between
from panda.store.models import Booking, CallRoom
from panda.store.types import utcnow
from panda.web.call_ws import ROOMS
from panda.web.calls import sweep_once
from tests.helpers import login
from tests.web.call_fakes import FakeRegistry, make_booking


@pytest.fixture
def app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app[ROOMS] = FakeRegistry()
    return app


async def _people(make_user):  # type: ignore[no-untyped-def]
    student = await make_user("student")
    tutor = await make_user("tutor")
    return student, tutor


async def _page_csrf(client: TestClient) -> str:
    resp = await client.get("/dashboard")
    text = await resp.text()
    marker = 'name="csrf_token" value="'
    start = text.index(marker) + len(marker)
    return text[start : text.index('"', start)]


async def _booking_row(client: TestClient, booking_id: int) -> Booking:
    async with client.app[keys.sessionmaker]() as db:
        booking = await db.get(Booking, booking_id)
        assert booking is not None
        return booking


async def test_student_sees_prejoin_page_with_hooks(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 200
    html = await resp.text()
    for hook in ("join", "mute", "camera", "screen", "fullscreen", "leave"):
        assert f'data-action="{hook}"' in html
    assert 'data-call-state="idle"' in html
    assert f'data-ws-path="/ws/sessions/{booking.id}/call"' in html
    assert 'data-slot="record"' in html
    assert "/static/call/call.js" in html
    assert tutor.name in html
    assert 'name="csrf-token"' in html
    assert "End for all" not in html  # only the tutor or an admin can end


async def test_tutor_and_admin_may_open_the_page(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    admin = await make_user("admin")
    booking = await make_booking(client, student, tutor)
    await login(client, tutor.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 200
    assert "End for all" in await resp.text()
    client.session.cookie_jar.clear()
    await login(client, admin.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 200
    assert "both participants will see you" in await resp.text()


async def test_outsiders_get_403(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    other_student = await make_user("student")
    other_tutor = await make_user("tutor")
    booking = await make_booking(client, student, tutor)
    for outsider in (other_student, other_tutor):
        client.session.cookie_jar.clear()
        await login(client, outsider.email)
        resp = await client.get(f"/sessions/{booking.id}/call")
        assert resp.status == 403
        assert "Only the student and the tutor" in await resp.text()
        api = await client.get(f"/api/sessions/{booking.id}/room")
        assert api.status == 403
        assert "error" in await api.json()


async def test_unverified_participant_cannot_join(client: TestClient, make_user) -> None:
    student = await make_user("student", verified=False)
    tutor = await make_user("tutor")
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 403
    assert "verify" in (await resp.text()).lower()


async def test_anonymous_is_sent_to_login(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    resp = await client.get(f"/sessions/{booking.id}/call", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/login")
    api = await client.get(f"/api/sessions/{booking.id}/room")
    assert api.status == 401


@pytest.mark.parametrize("bad", ["999999", "abc", "99999999999999999999", "0", "-1"])
async def test_unknown_or_malformed_session_is_404(client: TestClient, make_user, bad: str) -> None:
    student = await make_user("student")
    await login(client, student.email)
    resp = await client.get(f"/sessions/{bad}/call")
    assert resp.status == 404
    api = await client.get(f"/api/sessions/{bad}/room")
    assert api.status == 404


async def test_room_not_open_yet_shows_waiting(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor, starts_in=timedelta(hours=2))
    await login(client, student.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 200
    html = await resp.text()
    assert 'data-call-state="waiting"' in html
    assert "The room opens at" in html
    info = await (await client.get(f"/api/sessions/{booking.id}/room")).json()
    assert info["status"] == "waiting" and info["is_open"] is False
    assert info["window"] == "not_open"
    token = await _page_csrf(client)
    opened = await client.post(f"/api/sessions/{booking.id}/room", headers={"X-CSRF-Token": token})
    assert opened.status == 409
    assert "not open yet" in (await opened.json())["error"]


async def test_room_opens_ten_minutes_before(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor, starts_in=timedelta(minutes=9))
    await login(client, student.email)
    info = await (await client.get(f"/api/sessions/{booking.id}/room")).json()
    assert info["is_open"] is True
    token = await _page_csrf(client)
    resp = await client.post(f"/api/sessions/{booking.id}/room", headers={"X-CSRF-Token": token})
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "waiting" and body["opened_at"] and body["your_role"] == "student"
    again = await client.post(f"/api/sessions/{booking.id}/room", headers={"X-CSRF-Token": token})
    assert again.status == 200
    assert (await again.json())["opened_at"] == body["opened_at"]


async def test_open_room_needs_csrf(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    resp = await client.post(f"/api/sessions/{booking.id}/room")
    assert resp.status == 403


async def test_room_closes_thirty_minutes_after_end(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(
        client, student, tutor, starts_in=timedelta(minutes=-95), length=timedelta(hours=1)
    )
    await login(client, student.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 200
    assert 'data-call-state="ended"' in await resp.text()
    info = await (await client.get(f"/api/sessions/{booking.id}/room")).json()
    assert info["status"] == "ended" and info["is_open"] is False


async def test_unbooked_session_has_no_call(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor, status="cancelled")
    await login(client, student.email)
    resp = await client.get(f"/sessions/{booking.id}/call")
    assert resp.status == 409
    assert "not booked" in await resp.text()


async def test_only_tutor_or_admin_can_end(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    token = await _page_csrf(client)
    resp = await client.post(
        f"/api/sessions/{booking.id}/room/end", headers={"X-CSRF-Token": token}
    )
    assert resp.status == 403
    client.session.cookie_jar.clear()
    await login(client, tutor.email)
    token = await _page_csrf(client)
    resp = await client.post(
        f"/api/sessions/{booking.id}/room/end", headers={"X-CSRF-Token": token}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ended" and body["ended_at"]
    row = await _booking_row(client, booking.id)
    assert row.status == "no_show"  # nobody came
    page = await client.get(f"/sessions/{booking.id}/call")
    assert 'data-call-state="ended"' in await page.text()


async def test_lifecycle_moves_the_booking(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    async with client.app[keys.sessionmaker]() as db:
        access_s = await store.get_access(db, booking.id, student)
        room = await store.participant_joined(db, access_s, student)
        await db.commit()
        assert room.status == "active" and room.started_at is not None
        assert access_s.booking.status == "scheduled"
        access_t = await store.get_access(db, booking.id, tutor)
        await store.participant_joined(db, access_t, tutor)
        await db.commit()
        assert access_t.booking.status == "in_progress"
        await store.participant_left(db, booking.id, student.id)
        await db.commit()
        info = await store.room_info(db, access_t.booking)
        by_role = {p["role"]: p for p in info["participants"]}
        assert by_role["student"]["is_online"] is False and by_role["student"]["left_at"]
        assert by_role["tutor"]["is_online"] is True
        await store.end_room(db, access_t.booking, by=tutor, reason="done")
        await db.commit()
        row = await db.get(Booking, booking.id)
        assert row is not None and row.status == "completed"
        room_row = await store.get_room(db, booking.id)
        assert room_row is not None and room_row.status == "ended"
        # Ending twice changes nothing.
        again = await store.end_room(db, access_t.booking, by=tutor, reason="again")
        assert again is not None and again.end_reason == "done"


async def test_no_show_names_who_did_not_come(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    async with client.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking.id, tutor)
        await store.participant_joined(db, access, tutor)
        await store.end_room(db, access.booking, by=None, reason="time")
        await db.commit()
        row = await db.get(Booking, booking.id)
        assert row is not None
        assert row.status == "no_show" and row.no_show_user_id == student.id


async def test_sweeper_closes_expired_rooms(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    async with client.app[keys.sessionmaker]() as db:
        access = await store.get_access(db, booking.id, student)
        await store.participant_joined(db, access, student)
        row = await db.get(Booking, booking.id)
        assert row is not None
        row.start_at = utcnow() - timedelta(hours=2)
        row.end_at = utcnow() - timedelta(minutes=31)
        await db.commit()
    registry = client.app[ROOMS]
    registry.get_or_create(f"session-{booking.id}")
    assert await sweep_once(client.app) == [booking.id]
    assert registry.closed_rooms == [f"session-{booking.id}"]
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(Booking, booking.id)
        assert row is not None and row.status == "no_show" and row.no_show_user_id == tutor.id
        room = await store.get_room(db, booking.id)
        assert isinstance(room, CallRoom) and room.status == "ended"
    assert await sweep_once(client.app) == []


async def test_stats_are_for_admins(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    admin = await make_user("admin")
    booking = await make_booking(client, student, tutor)
    await login(client, tutor.email)
    resp = await client.get(f"/api/sessions/{booking.id}/room/stats")
    assert resp.status == 403
    client.session.cookie_jar.clear()
    await login(client, admin.email)
    resp = await client.get(f"/api/sessions/{booking.id}/room/stats")
    assert resp.status == 200
    assert await resp.json() == {"session_id": booking.id, "live": False, "participants": {}}
    room = client.app[ROOMS].get_or_create(f"session-{booking.id}")
    await room.join("7", name="x", role="student", send=None)
    body = await (await client.get(f"/api/sessions/{booking.id}/room/stats")).json()
    assert body["live"] is True
    assert body["participants"]["7"]["frames_forwarded"] == 10


async def test_api_is_documented(client: TestClient) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    for path in (
        "/api/sessions/{session_id}/room",
        "/api/sessions/{session_id}/room/end",
        "/api/sessions/{session_id}/room/stats",
    ):
        assert path in doc["paths"]
    assert set(doc["paths"]["/api/sessions/{session_id}/room"]) == {"get", "post"}
    assert "CallRoom" in doc["components"]["schemas"]


async def test_dashboard_lists_open_calls(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    open_now = await make_booking(client, student, tutor)
    later = await make_booking(client, student, tutor, starts_in=timedelta(days=1))
    await login(client, student.email)
    dash = await (await client.get("/dashboard")).text()
    assert 'hx-get="/sessions/open-calls"' in dash
    frag = await (await client.get("/sessions/open-calls")).text()
    assert f'href="/sessions/{open_now.id}/call"' in frag
    assert f"/sessions/{later.id}/call" not in frag
    assert "Join call" in frag and tutor.name in frag
    client.session.cookie_jar.clear()
    outsider = await make_user("student")
    await login(client, outsider.email)
    frag = await (await client.get("/sessions/open-calls")).text()
    assert "Join call" not in frag


async def test_record_button_only_for_tutor_and_admin(client: TestClient, make_user) -> None:
    student, tutor = await _people(make_user)
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    html = await (await client.get(f"/sessions/{booking.id}/call")).text()
    assert 'data-action="record"' not in html
    assert 'data-slot="record"' in html
    client.session.cookie_jar.clear()
    await login(client, tutor.email)
    html = await (await client.get(f"/sessions/{booking.id}/call")).text()
    assert 'data-action="record"' in html
    assert "/static/recordings/call_record.js" in html


async def test_participants_get_the_chat_panel_admins_do_not(
    client: TestClient, make_user
) -> None:  # type: ignore[no-untyped-def]
    student, tutor = await _people(make_user)
    admin = await make_user("admin")
    booking = await make_booking(client, student, tutor)
    await login(client, student.email)
    html = await (await client.get(f"/sessions/{booking.id}/call")).text()
    assert f'data-other-id="{tutor.id}"' in html and "data-call-chat" in html
    assert "/static/call/chat-panel.js" in html and "data-chat-toggle" in html
    # The page itself creates nothing: the panel opens the conversation after loading.
    async with client.app[keys.sessionmaker]() as db:
        assert await get_conversation_between(db, student.id, tutor.id) is None
    client.session.cookie_jar.clear()
    await login(client, admin.email)
    html = await (await client.get(f"/sessions/{booking.id}/call")).text()
    assert "data-call-chat" not in html and "chat-panel.js" not in html
