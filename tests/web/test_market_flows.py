"""API flows beyond the basics: decline, cancel cut-off, tutor proposals, moving a session,
notifications, calendar feed and DST-correct slots through HTTP."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from icalendar import Calendar

from tests.conftest import UserFactory
from tests.helpers import get_csrf, login
from tests.market_support import iso, make_tutor_ready, slots_of


async def _call(client: TestClient, method: str, path: str, body: object = None):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/tutors")
    resp = await client.request(method, path, json=body, headers={"X-CSRF-Token": token})
    return resp.status, await resp.json()


async def _as(client: TestClient, email: str) -> None:
    token = await get_csrf(client, "/tutors")
    await client.post("/logout", data={"csrf_token": token})
    await login(client, email)


async def test_decline_cancel_and_cutoff(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    soon = (await slots_of(client.app, tutor, days_ahead=0.2, span_days=0.2))[0][0]
    later = (await slots_of(client.app, tutor, days_ahead=3))[0][0]
    await login(client, student.email)
    status, b = await _call(
        client,
        "POST",
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(later), "subject": "Algebra"},
    )
    assert status == 201
    await _as(client, tutor.email)
    status, body = await _call(client, "POST", f"/api/bookings/{b['id']}/decline", {})
    assert status == 422
    status, body = await _call(client, "POST", f"/api/bookings/{b['id']}/decline", {"reason": 42})
    assert status == 422
    status, body = await _call(
        client, "POST", f"/api/bookings/{b['id']}/decline", {"reason": "Fully booked that week"}
    )
    assert status == 200 and body["status"] == "declined"
    assert body["status_reason"] == "Fully booked that week"
    # Inside the 12-hour cut-off a student's cancellation still counts.
    await _as(client, student.email)
    status, b2 = await _call(
        client,
        "POST",
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(soon), "subject": "Algebra"},
    )
    assert status == 201
    await _as(client, tutor.email)
    assert (await _call(client, "POST", f"/api/bookings/{b2['id']}/accept"))[0] == 200
    await _as(client, student.email)
    status, body = await _call(
        client, "POST", f"/api/bookings/{b2['id']}/cancel", {"reason": "Ill"}
    )
    assert status == 200 and body["status"] == "cancelled" and body["late_cancel"] is True
    data = await (await client.get("/api/dashboard/market")).json()
    assert data["quota"]["used"] == 1
    status, body = await _call(client, "POST", f"/api/bookings/{b2['id']}/cancel", {})
    assert status == 409
    # Someone else's booking does not exist for an outsider.
    outsider = await make_user("student")
    await _as(client, outsider.email)
    assert (await client.get(f"/api/bookings/{b2['id']}")).status == 404
    assert (await _call(client, "POST", f"/api/bookings/{b2['id']}/cancel", {}))[0] == 404


async def test_tutor_proposal_and_moving_a_session(
    client: TestClient, make_user: UserFactory
) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    stranger = await make_user("student")
    await make_tutor_ready(client.app, tutor, max_moves=1)
    slots = await slots_of(client.app, tutor, days_ahead=2)
    await login(client, tutor.email)
    status, body = await _call(
        client,
        "POST",
        "/api/proposals",
        {"student_id": stranger.id, "start": iso(slots[0][0]), "subject": "Algebra", "note": ""},
    )
    assert status == 403  # not one of the tutor's students
    await _as(client, student.email)
    status, b = await _call(
        client,
        "POST",
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(slots[0][0]), "subject": "Algebra"},
    )
    await _as(client, tutor.email)
    await _call(client, "POST", f"/api/bookings/{b['id']}/accept")
    status, p = await _call(
        client,
        "POST",
        "/api/proposals",
        {"student_id": student.id, "start": iso(slots[3][0]), "subject": "Physics", "note": "Next"},
    )
    assert status == 201 and p["requested_by"] == "tutor" and p["status"] == "pending"
    assert (await _call(client, "POST", f"/api/bookings/{p['id']}/accept"))[0] == 403
    # Move the first session: the tutor proposes, the student accepts.
    status, body = await _call(
        client, "POST", f"/api/bookings/{b['id']}/reschedule", {"start": iso(slots[1][0])}
    )
    assert status == 200 and body["proposed_start"] == iso(slots[1][0])
    await _as(client, student.email)
    assert (await _call(client, "POST", f"/api/bookings/{p['id']}/accept"))[0] == 200
    status, body = await _call(
        client, "POST", f"/api/bookings/{b['id']}/reschedule/answer", {"accept": "yes"}
    )
    assert status == 422
    status, body = await _call(
        client, "POST", f"/api/bookings/{b['id']}/reschedule/answer", {"accept": True}
    )
    assert status == 200 and body["start"] == iso(slots[1][0]) and body["moves"] == 1
    status, body = await _call(
        client, "POST", f"/api/bookings/{b['id']}/reschedule", {"start": iso(slots[2][0])}
    )
    assert status == 409 and "limit" in body["error"]
    notes = await (await client.get("/api/notifications")).json()
    kinds = {n["kind"] for n in notes["items"]}
    assert {"request_accepted", "proposal_received", "reschedule_proposed"} <= kinds
    assert notes["unread"] >= 3
    status, body = await _call(client, "POST", "/api/notifications/read", {"id": "x"})
    assert status == 422
    status, body = await _call(client, "POST", "/api/notifications/read", {})
    assert status == 200 and body["changed"] == notes["unread"]
    assert (await (await client.get("/api/notifications")).json())["unread"] == 0


async def test_feed_api_and_revocation(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor))[0][0]
    await login(client, student.email)
    await _call(
        client,
        "POST",
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(start), "subject": "Algebra"},
    )
    status, body = await _call(client, "POST", "/api/calendar/feed")
    assert status == 201
    path = body["url"].replace("http://127.0.0.1:8080", "")
    cal = Calendar.from_ical(await (await client.get(path)).read())
    [event] = list(cal.walk("VEVENT"))
    assert str(event["STATUS"]) == "TENTATIVE"  # still pending
    status, again = await _call(client, "POST", "/api/calendar/feed")
    assert (await client.get(path)).status == 404  # the new URL replaced the old one
    status, body = await _call(client, "DELETE", "/api/calendar/feed")
    assert status == 200 and body["revoked"] == 1
    assert (await client.get(again["url"].replace("http://127.0.0.1:8080", ""))).status == 404


async def test_slots_follow_dst_for_each_side(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    await make_tutor_ready(
        client.app, tutor, tz="America/New_York", hours=[(d, 9 * 60, 10 * 60) for d in range(7)]
    )
    # The US moves its clocks on 14 March 2027: 09:00 in New York is 14:00Z, then 13:00Z.
    resp = await client.get(
        f"/api/tutors/{tutor.id}/slots?from=2027-03-11T00:00:00Z&to=2027-03-17T00:00:00Z"
    )
    slots = (await resp.json())["slots"]
    by_day = {s["start"][:10]: s["start"][11:16] for s in slots}
    assert by_day["2027-03-12"] == "14:00"
    assert by_day["2027-03-13"] == "14:00"
    assert by_day["2027-03-14"] == "13:00"
    assert by_day["2027-03-15"] == "13:00"
    assert all(s["end"] > s["start"] for s in slots)
    # A student in Lisbon sees 14:00 until the 14th and 13:00 after (Europe changes later).
    student = await make_user("student", timezone="Europe/Lisbon")
    await login(client, student.email)
    html = await (await client.get(f"/tutors/{tutor.id}")).text()
    assert "Times in your zone: Europe/Lisbon" in html
    start = "2027-03-15T13:00:00Z"
    html = await (await client.get(f"/tutors/{tutor.id}/book?start={start}")).text()
    assert "Mon 15 Mar 2027, 13:00" in html
