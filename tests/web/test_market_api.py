"""HTTP tests of the marketplace JSON API: search, profiles, slots, bookings and their rules."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient

from tests.conftest import UserFactory
from tests.helpers import login
from tests.market_support import iso, make_tutor_ready, set_status, slots_of


async def _csrf(client: TestClient) -> str:
    from tests.helpers import get_csrf

    return await get_csrf(client, "/tutors")


async def _post(client: TestClient, path: str, body: object) -> tuple[int, dict]:
    token = await _csrf(client)
    resp = await client.post(path, json=body, headers={"X-CSRF-Token": token})
    return resp.status, await resp.json()


async def test_search_and_profile_api(client: TestClient, make_user: UserFactory) -> None:
    t1 = await make_user("tutor", name="Ana Algebra")
    t2 = await make_user("tutor", name="Pedro Physics")
    await make_tutor_ready(client.app, t1, subjects=["Algebra"], rate_cents=2500)
    await make_tutor_ready(
        client.app, t2, subjects=["Physics"], rate_cents=6000, languages=["Spanish"]
    )
    resp = await client.get("/api/tutors")
    assert resp.status == 200
    data = await resp.json()
    assert data["total"] == 2
    resp = await client.get("/api/tutors?subject=algebra")
    data = await resp.json()
    assert [t["name"] for t in data["items"]] == ["Ana Algebra"]
    resp = await client.get("/api/tutors?language=spanish&max_price=70")
    assert [t["name"] for t in (await resp.json())["items"]] == ["Pedro Physics"]
    resp = await client.get("/api/tutors?sort=price_desc")
    assert [t["name"] for t in (await resp.json())["items"]] == ["Pedro Physics", "Ana Algebra"]
    for bad in ("min_price=nan", "max_price=inf", "min_rating=nan", "per_page=100",
                "free_from=2026-01-01T00:00:00&free_to=2026-01-02T00:00:00Z"):
        assert (await client.get(f"/api/tutors?{bad}")).status == 422, bad
    resp = await client.get("/api/tutors?min_price=abc&sort=nope&page=0")
    assert resp.status == 422
    body = await resp.json()
    assert {"min_price", "sort", "page"} <= set(body["fields"])
    resp = await client.get(f"/api/tutors/{t1.id}")
    assert resp.status == 200
    assert (await resp.json())["subjects"] == ["Algebra"]
    assert (await client.get("/api/tutors/999999")).status == 404
    assert (await client.get("/api/tutors/abc")).status == 404


async def test_unapproved_tutor_hidden(client: TestClient, make_user: UserFactory) -> None:
    t = await make_user("tutor", tutor_status="pending")
    await make_tutor_ready(client.app, t)
    assert (await (await client.get("/api/tutors")).json())["total"] == 0
    assert (await client.get(f"/api/tutors/{t.id}")).status == 404


async def test_slots_api(client: TestClient, make_user: UserFactory) -> None:
    t = await make_user("tutor")
    await make_tutor_ready(client.app, t, hours=[(d, 9 * 60, 12 * 60) for d in range(7)])
    resp = await client.get(f"/api/tutors/{t.id}/slots")
    assert resp.status == 200
    slots = (await resp.json())["slots"]
    assert slots and all(s["start"].endswith("Z") for s in slots)
    assert all(s["start"][11:16] in ("09:00", "10:00", "11:00") for s in slots)
    bad = await client.get(f"/api/tutors/{t.id}/slots?from=yesterday")
    assert bad.status == 422
    huge = await client.get(f"/api/tutors/{t.id}/slots?from=9999-12-31T00:00:00Z")
    assert huge.status == 422
    far = await client.get(
        f"/api/tutors/{t.id}/slots?from=2030-01-01T00:00:00Z&to=2030-03-01T00:00:00Z"
    )
    assert far.status == 422
    backwards = await client.get(
        f"/api/tutors/{t.id}/slots?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z"
    )
    assert backwards.status == 422


async def test_booking_lifecycle_api(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor)
    slot = (await slots_of(client.app, tutor))[0]
    await login(client, student.email)
    status, body = await _post(
        client,
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(slot[0]), "subject": "Algebra", "note": "Help"},
    )
    assert status == 201, body
    assert body["status"] == "pending"
    assert body["price"] == {"amount_cents": 4000, "currency": "EUR"}
    bid = body["id"]
    # A second request while one is pending is refused.
    other = (await slots_of(client.app, tutor))[3]
    status, body = await _post(
        client,
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(other[0]), "subject": "Algebra"},
    )
    assert status == 409 and "pending request" in body["error"]
    # The student cannot accept their own request.
    status, body = await _post(client, f"/api/bookings/{bid}/accept", {})
    assert status == 403
    await client.post("/logout", data={"csrf_token": await _csrf(client)})
    await login(client, tutor.email)
    status, body = await _post(client, f"/api/bookings/{bid}/accept", {})
    assert status == 200 and body["status"] == "scheduled"
    status, body = await _post(client, f"/api/bookings/{bid}/accept", {})
    assert status == 409
    resp = await client.get("/api/bookings")
    assert [b["id"] for b in (await resp.json())["items"]] == [bid]
    resp = await client.get(f"/bookings/{bid}.ics")
    assert resp.status == 200 and resp.content_type == "text/calendar"
    # Review only after completion.
    await client.post("/logout", data={"csrf_token": await _csrf(client)})
    await login(client, student.email)
    status, body = await _post(client, f"/api/bookings/{bid}/review", {"rating": 5, "text": "!"})
    assert status == 409
    await set_status(client.app, bid, "completed")
    status, body = await _post(client, f"/api/bookings/{bid}/review", {"rating": 9})
    assert status == 422
    status, body = await _post(
        client, f"/api/bookings/{bid}/review", {"rating": 5, "text": "Great"}
    )
    assert status == 200, body
    status, body = await _post(client, f"/api/bookings/{bid}/review", {"rating": 4})
    assert status == 409
    prof = await (await client.get(f"/api/tutors/{tutor.id}")).json()
    assert prof["rating"] == {"average": 5.0, "count": 1}


async def test_booking_bad_input(client: TestClient, make_user: UserFactory) -> None:
    tutor = await make_user("tutor")
    student = await make_user("student")
    await make_tutor_ready(client.app, tutor, hours=[(d, 9 * 60, 12 * 60) for d in range(7)])
    await login(client, student.email)
    slot = (await slots_of(client.app, tutor))[0]
    cases = [
        ({"tutor_id": "x", "start": iso(slot[0]), "subject": "Algebra"}, 422),
        ({"tutor_id": tutor.id, "start": "tomorrow", "subject": "Algebra"}, 422),
        ({"tutor_id": tutor.id, "start": "2020-01-01T09:00:00Z", "subject": "Algebra"}, 422),
        (
            {
                "tutor_id": tutor.id,
                "start": iso(slot[0] + timedelta(minutes=15)),
                "subject": "Algebra",
            },
            422,
        ),
        ({"tutor_id": tutor.id, "start": iso(slot[0]), "subject": "Cooking"}, 422),
        ({"tutor_id": 424242, "start": iso(slot[0]), "subject": "Algebra"}, 404),
        ({"tutor_id": tutor.id, "start": "9999-12-31T23:30:00Z", "subject": "Algebra"}, 422),
        ({"tutor_id": tutor.id, "start": "0001-01-01T00:00:00+14:00", "subject": "Algebra"}, 422),
        ({"tutor_id": tutor.id, "start": None, "subject": "Algebra"}, 422),
        ({"tutor_id": tutor.id, "start": iso(slot[0]), "subject": ["Algebra"]}, 422),
        ({"tutor_id": True, "start": iso(slot[0]), "subject": "Algebra"}, 422),
    ]
    for body, expected in cases:
        status, data = await _post(client, "/api/bookings", body)
        assert status == expected, (body, data)
        assert isinstance(data["error"], str) and data["error"]
    token = await _csrf(client)
    resp = await client.post(
        "/api/bookings",
        data=b"not json",
        headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    resp = await client.post("/api/bookings", json={})
    assert resp.status == 403  # no CSRF header
    assert (await client.get("/api/bookings?status=bogus")).status == 422
    assert (await client.get("/api/bookings/999")).status == 404


async def test_booking_requires_login(client: TestClient) -> None:
    resp = await client.get("/api/bookings")
    assert resp.status == 401
