"""HTTP tests of the marketplace pages: search, profile, booking flow, calendar, dashboards."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient
from icalendar import Calendar

from tests.conftest import UserFactory
from tests.helpers import get_csrf, login, post_form
from tests.market_support import iso, make_tutor_ready, set_status, slots_of


async def _logout(client: TestClient) -> None:
    token = await get_csrf(client, "/tutors")
    await client.post("/logout", data={"csrf_token": token})


async def test_search_page_filters_and_errors(client: TestClient, make_user: UserFactory) -> None:
    t1 = await make_user("tutor", name="Ana Algebra")
    t2 = await make_user("tutor", name="Pedro Physics")
    await make_tutor_ready(client.app, t1, subjects=["Algebra"])
    await make_tutor_ready(client.app, t2, subjects=["Physics"])
    resp = await client.get("/tutors")
    assert resp.status == 200
    html = await resp.text()
    assert "Ana Algebra" in html and "Pedro Physics" in html
    html = await (await client.get("/tutors?subject=physics")).text()
    assert "Pedro Physics" in html and "Ana Algebra" not in html
    resp = await client.get("/tutors?min_price=lots&free_from=soon&free_to=x")
    assert resp.status == 422
    html = await resp.text()
    assert "Enter an amount" in html and 'aria-invalid="true"' in html


async def test_profile_page_shows_slots_and_buttons(
    client: TestClient, make_user: UserFactory
) -> None:
    tutor = await make_user("tutor", name="Tina Tutor")
    await make_tutor_ready(client.app, tutor)
    resp = await client.get(f"/tutors/{tutor.id}")
    assert resp.status == 200
    html = await resp.text()
    assert "Tina Tutor" in html and "Request a session" in html and "Send a message" in html
    assert f"/tutors/{tutor.id}/book?start=" in html
    assert (await client.get("/tutors/0")).status == 404
    assert (await client.get("/tutors/999999")).status == 404


async def test_booking_flow_through_pages(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor", name="Tina Tutor")
    student = await make_user("student", name="Sam Student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor))[0][0]
    await login(client, student.email)
    page = f"/tutors/{tutor.id}/book?start={iso(start)}"
    resp = await client.get(page)
    assert resp.status == 200
    html = await resp.text()
    assert "may be recorded" in html
    assert (await client.get(f"/tutors/{tutor.id}/book?start=bad")).status == 422
    resp = await post_form(
        client,
        "/bookings",
        {"tutor_id": str(tutor.id), "start": iso(start), "subject": "Algebra", "note": "Hi"},
        page=page,
        allow_redirects=False,
    )
    assert resp.status == 303
    booking_url = resp.headers["Location"]
    bid = int(booking_url.rsplit("/", 1)[1])
    html = await (await client.get(booking_url)).text()
    assert "pending" in html and "Withdraw request" in html
    # A second request shows the rule on the form, with 409.
    other = (await slots_of(client.app, tutor))[2][0]
    page2 = f"/tutors/{tutor.id}/book?start={iso(other)}"
    resp = await post_form(
        client,
        "/bookings",
        {"tutor_id": str(tutor.id), "start": iso(other), "subject": "Algebra"},
        page=page2,
    )
    assert resp.status == 409
    assert "pending request" in await resp.text()
    await _logout(client)
    await login(client, tutor.email)
    html = await (await client.get("/dashboard")).text()
    assert "Requests to answer" in html and "Sam Student" in html
    html = await (await client.get(booking_url)).text()
    assert "Decline" in html
    resp = await post_form(client, f"/bookings/{bid}/decline", {"reason": ""}, page=booking_url)
    assert resp.status == 200 and "short reason" in await resp.text()
    resp = await post_form(client, f"/bookings/{bid}/accept", {}, page=booking_url)
    assert resp.status == 200
    html = await resp.text()
    assert "scheduled" in html and "Accepted" in html
    html = await (await client.get("/bookings")).text()
    assert "Sam Student" in html
    html = await (await client.get("/notifications")).text()
    assert "New session request from Sam Student" in html
    await _logout(client)
    await login(client, student.email)
    html = await (await client.get("/dashboard")).text()
    assert "Upcoming sessions" in html and f"/sessions/{bid}/call" in html
    assert "sessions left" in html
    badge = await (await client.get("/notifications/badge")).text()
    assert re.search(r">\d+<", badge)
    # Late completion: review through the page.
    await set_status(client.app, bid, "completed")
    resp = await post_form(
        client, f"/bookings/{bid}/review", {"rating": "4", "text": "Good"}, page=booking_url
    )
    assert "Thank you" in await resp.text()
    resp = await post_form(client, f"/bookings/{bid}/review", {"rating": "x"}, page=booking_url)
    assert resp.status == 200  # flashed error on the page, not a 500
    resp = await client.get("/bookings/abc")
    assert resp.status == 404


async def test_calendar_views_and_private_feed(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor))[0][0]
    await login(client, student.email)
    token = await get_csrf(client, "/tutors")
    resp = await client.post(
        "/api/bookings",
        json={"tutor_id": tutor.id, "start": iso(start), "subject": "Algebra"},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status == 201
    bid = (await resp.json())["id"]
    day = start.date().isoformat()
    for view in ("week", "month"):
        resp = await client.get(f"/calendar?view={view}&date={day}")
        assert resp.status == 200
        assert f"/bookings/{bid}" in await resp.text()
    assert (await client.get("/calendar?view=year")).status == 422
    assert (await client.get("/calendar?date=2026-13-01")).status == 422
    data = await (await client.get(f"/api/calendar?view=week&date={day}")).json()
    assert [s["id"] for s in data["sessions"]] == [bid]
    # Feed: create, fetch without a cookie, parse, revoke.
    resp = await post_form(client, "/calendar/feed", {}, page="/calendar")
    html = await resp.text()
    match = re.search(r"http://127\.0\.0\.1:8080(/calendar/feed/[^<\s]+\.ics)", html)
    assert match, html
    feed_path = match.group(1)
    client.session.cookie_jar.clear()
    resp = await client.get(feed_path)
    assert resp.status == 200
    cal = Calendar.from_ical(await resp.read())
    events = [c for c in cal.walk("VEVENT")]
    assert len(events) == 1
    assert str(events[0]["UID"]).startswith(f"booking-{bid}@")
    assert (await client.get("/calendar/feed/not-a-token.ics")).status == 404
    await login(client, student.email)
    await post_form(client, "/calendar/feed/revoke", {}, page="/calendar")
    client.session.cookie_jar.clear()
    assert (await client.get(feed_path)).status == 404


async def test_tutor_edits_profile_and_availability(
    client: TestClient, make_user: UserFactory
) -> None:
    tutor = await make_user("tutor", name="Tina Tutor")
    await make_tutor_ready(client.app, tutor, subjects=["Algebra", "Chemistry"])
    await login(client, tutor.email)
    resp = await client.get("/tutor/profile")
    assert resp.status == 200
    html = await resp.text()
    chem = re.search(r'value="(\d+)"[^>]*> Chemistry', html)
    assert chem
    resp = await post_form(
        client,
        "/tutor/profile",
        {
            "headline": "Chemistry made clear",
            "bio": "Ten years of teaching.",
            "hourly_rate": "55",
            "currency": "EUR",
            "languages": "English, German",
            "city": "Berlin",
            "country": "Germany",
            "timezone": "Europe/Berlin",
            "session_minutes": "45",
            "min_notice_minutes": "60",
            "buffer_minutes": "15",
            "max_moves": "2",
            "subjects": chem.group(1),
            "listed": "1",
        },
    )
    assert resp.status == 200
    data = await (await client.get(f"/api/tutors/{tutor.id}")).json()
    assert data["headline"] == "Chemistry made clear"
    assert data["subjects"] == ["Chemistry"] and data["session_minutes"] == 45
    assert data["languages"] == ["english", "german"]
    resp = await post_form(
        client,
        "/tutor/profile",
        {
            "hourly_rate": "cheap",
            "timezone": "Mars/Olympus",
            "session_minutes": "50",
            "min_notice_minutes": "0",
            "buffer_minutes": "0",
            "max_moves": "1",
        },
        page="/tutor/profile",
    )
    assert resp.status == 422
    html = await resp.text()
    assert "Pick a time zone" in html and "Choose 30, 45, 60 or 90" in html
    resp = await post_form(
        client, "/tutor/availability", {"day0": "09:00-12:00, 14:00-18:00", "day2": "10:00-11:00"}
    )
    assert resp.status == 200
    assert "09:00-12:00, 14:00-18:00" in await resp.text()
    resp = await post_form(
        client, "/tutor/availability", {"day1": "9 to 5"}, page="/tutor/availability"
    )
    assert resp.status == 422
    resp = await post_form(
        client,
        "/tutor/availability/exceptions",
        {"date": "2030-01-07", "kind": "off"},
        page="/tutor/availability",
    )
    assert "Exception added" in await resp.text()
    api = await (await client.get("/api/tutor/availability")).json()
    assert api["exceptions"][0]["date"] == "2030-01-07"
    assert {r["weekday"] for r in api["weekly"]} == {0, 2}
    exc_id = api["exceptions"][0]["id"]
    resp = await post_form(
        client, f"/tutor/availability/exceptions/{exc_id}/delete", {}, page="/tutor/availability"
    )
    assert resp.status == 200
    token = await get_csrf(client, "/tutors")
    resp = await client.put(
        "/api/tutor/availability",
        json={"weekly": [{"weekday": 9, "start": "09:00", "end": "10:00"}]},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status == 422
    resp = await client.put(
        "/api/tutor/profile", json={"session_minutes": 90}, headers={"X-CSRF-Token": token}
    )
    assert resp.status == 200 and (await resp.json())["session_minutes"] == 90
    # Students cannot reach tutor pages.
    await _logout(client)
    student = await make_user("student")
    await login(client, student.email)
    assert (await client.get("/tutor/profile")).status == 403
    assert (await client.get("/api/tutor/availability")).status == 403


async def test_pages_need_login(client: TestClient) -> None:
    for path in ("/bookings", "/calendar", "/notifications", "/tutor/profile"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    assert (await client.get("/api/notifications")).status == 401
    assert (await client.get("/api/calendar")).status == 401


async def test_search_page_time_window_in_the_viewers_zone(
    client: TestClient, make_user: UserFactory
) -> None:
    from datetime import timedelta

    from panda.store.types import utcnow

    tutor = await make_user("tutor", name="Evening Tutor")
    await make_tutor_ready(client.app, tutor, hours=[(d, 18 * 60, 22 * 60) for d in range(7)])
    student = await make_user("student", timezone="Asia/Tokyo")
    await login(client, student.email)
    # 03:00-06:00 in Tokyo is 18:00-21:00 UTC the day before: the tutor is open then.
    day = (utcnow() + timedelta(days=3)).date().isoformat()
    html = await (
        await client.get(f"/tutors?free_day={day}&free_start=03:00&free_end=06:00")
    ).text()
    assert "Evening Tutor" in html
    html = await (
        await client.get(f"/tutors?free_day={day}&free_start=09:00&free_end=12:00")
    ).text()
    assert "Evening Tutor" not in html
    resp = await client.get(f"/tutors?free_day={day}&free_start=12:00&free_end=09:00")
    assert resp.status == 422 and "start time before the end" in await resp.text()
    resp = await client.get("/tutors?free_day=someday")
    assert resp.status == 422


async def test_propose_page_and_question_form(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor", name="Tina Tutor")
    student = await make_user("student", name="Sam Student")
    await make_tutor_ready(client.app, tutor)
    await login(client, tutor.email)
    html = await (await client.get("/tutor/propose")).text()
    assert "once a student has booked" in html
    await _logout(client)
    await login(client, student.email)
    slots = await slots_of(client.app, tutor)
    token = await get_csrf(client, "/tutors")
    resp = await client.post(
        "/api/bookings",
        json={"tutor_id": tutor.id, "start": iso(slots[0][0]), "subject": "Algebra"},
        headers={"X-CSRF-Token": token},
    )
    bid = (await resp.json())["id"]
    resp = await post_form(
        client, "/questions", {"subject_id": "x", "title": "Hi"}, page="/questions"
    )
    assert resp.status == 422 and "5 to 200 characters" in await resp.text()
    await _logout(client)
    await login(client, tutor.email)
    await post_form(client, f"/bookings/{bid}/accept", {}, page=f"/bookings/{bid}")
    html = await (await client.get("/tutor/propose")).text()
    assert "Sam Student" in html
    start = re.search(r'<option value="([^"]+Z)"', html)
    assert start
    resp = await post_form(
        client,
        "/tutor/propose",
        {"student_id": str(student.id), "start": start.group(1), "subject": "Physics"},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"].startswith("/bookings/")
    html = await (await client.get("/tutor/propose")).text()
    other = re.search(r'<option value="([^"]+Z)"', html)
    assert other and other.group(1) != start.group(1)  # the proposed slot is taken now
    resp = await post_form(
        client,
        "/tutor/propose",
        {"student_id": str(student.id), "start": other.group(1), "subject": "Physics"},
        page="/tutor/propose",
    )
    assert "pending request already" in await resp.text()
