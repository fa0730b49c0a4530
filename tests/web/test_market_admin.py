"""Admin pages and API, the questions board (anonymity), recommendations, search filters."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from panda import keys
from panda.market.availability import iso_utc
from panda.store.models import AuditEntry, Subject, User
from panda.store.types import utcnow
from tests.conftest import UserFactory
from tests.helpers import get_csrf, login, post_form
from tests.market_support import iso, make_tutor_ready, set_status, slots_of


async def _json(client: TestClient, method: str, path: str, body: object = None):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/tutors")
    resp = await client.request(method, path, json=body, headers={"X-CSRF-Token": token})
    return resp.status, await resp.json()


async def _completed_review(client: TestClient, make_user: UserFactory) -> tuple[User, User, int]:
    tutor = await make_user("tutor", name="Tina Tutor")
    student = await make_user("student", name="Sam Student")
    await make_tutor_ready(client.app, tutor)
    start = (await slots_of(client.app, tutor))[0][0]
    await login(client, student.email)
    status, body = await _json(
        client,
        "POST",
        "/api/bookings",
        {"tutor_id": tutor.id, "start": iso(start), "subject": "Algebra"},
    )
    assert status == 201
    await set_status(client.app, body["id"], "completed")
    status, _ = await _json(
        client, "POST", f"/api/bookings/{body['id']}/review", {"rating": 1, "text": "rude words"}
    )
    assert status == 200
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/tutors")})
    return tutor, student, body["id"]


async def test_admin_hides_review_and_audit_log(client: TestClient, make_user: UserFactory) -> None:
    tutor, _student, _bid = await _completed_review(client, make_user)
    admin = await make_user("admin")
    await login(client, admin.email)
    status, data = await _json(client, "GET", "/api/admin/reviews")
    assert status == 200
    review_id = data["items"][0]["id"]
    html = await (await client.get("/admin/reviews")).text()
    assert "rude words" in html
    resp = await post_form(
        client,
        f"/admin/reviews/{review_id}/hide",
        {"hidden": "1", "reason": "abusive"},
        page="/admin/reviews",
    )
    assert resp.status == 200
    prof = await (await client.get(f"/api/tutors/{tutor.id}")).json()
    assert prof["rating"]["count"] == 0 and prof["reviews"] == []
    async with client.app[keys.sessionmaker]() as db:
        entries = list((await db.execute(select(AuditEntry))).scalars())
    assert [(e.action, e.target_id) for e in entries] == [("review.hide", str(review_id))]
    status, data = await _json(
        client, "POST", f"/api/admin/reviews/{review_id}/hide", {"hidden": False}
    )
    assert status == 200 and data["hidden"] is False
    status, _ = await _json(client, "POST", "/api/admin/reviews/99999/hide", {"hidden": True})
    assert status == 404
    status, _ = await _json(
        client, "POST", f"/api/admin/reviews/{review_id}/hide", {"hidden": "yes"}
    )
    assert status == 422


async def test_admin_sessions_subjects_analytics(
    client: TestClient, make_user: UserFactory
) -> None:
    await _completed_review(client, make_user)
    admin = await make_user("admin")
    await login(client, admin.email)
    html = await (await client.get("/admin/sessions?status=completed")).text()
    assert "Sam Student" in html
    assert (await client.get("/admin/sessions?status=bogus")).status == 422
    status, data = await _json(client, "GET", "/api/admin/sessions?status=pending")
    assert status == 200 and data["items"] == []
    resp = await post_form(client, "/admin/subjects", {"name": "Organic Chemistry"})
    assert resp.status == 200
    resp = await post_form(client, "/admin/subjects", {"name": "x"}, page="/admin/subjects")
    assert resp.status == 422
    status, data = await _json(client, "POST", "/api/admin/subjects", {"name": "organic chemistry"})
    assert status == 409
    status, data = await _json(client, "GET", "/api/admin/subjects")
    assert "Organic Chemistry" in [s["name"] for s in data["items"]]
    resp = await client.get("/admin/analytics")
    assert resp.status == 200
    html = await resp.text()
    assert html.count("<svg") >= 5 and "Sessions per week" in html
    status, data = await _json(client, "GET", "/api/admin/analytics")
    assert data["ratings"]["1★"] == 1 and data["completion_rate"] == 1.0
    # Non-admins are refused.
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/tutors")})
    student = await make_user("student")
    await login(client, student.email)
    for path in (
        "/admin/sessions",
        "/admin/reviews",
        "/admin/subjects",
        "/admin/analytics",
        "/api/admin/sessions",
        "/api/admin/analytics",
    ):
        assert (await client.get(path)).status == 403, path


async def test_anonymous_question_hides_the_student(
    client: TestClient, make_user: UserFactory
) -> None:
    student = await make_user("student", name="Secret Sally")
    tutor = await make_user("tutor", name="Tina Tutor")
    await make_tutor_ready(client.app, tutor)
    async with client.app[keys.sessionmaker]() as db:
        subject_id = (
            await db.execute(select(Subject.id).where(Subject.name == "Algebra"))
        ).scalar_one()
    await login(client, student.email)
    status, data = await _json(
        client,
        "POST",
        "/api/questions",
        {
            "subject_id": subject_id,
            "title": "How do I factor quadratics?",
            "body": "Stuck",
            "anonymous": True,
        },
    )
    assert status == 201, data
    qid = data["id"]
    status, data = await _json(client, "POST", "/api/questions", {"subject_id": 9999, "title": "?"})
    assert status == 422 and {"title", "subject_id"} <= set(data["fields"])
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/tutors")})
    await login(client, tutor.email)
    status, data = await _json(
        client,
        "POST",
        f"/api/questions/{qid}/answers",
        {"body": "Find two numbers that multiply to c."},
    )
    assert status == 201
    for path in (f"/questions/{qid}", "/questions", f"/api/questions/{qid}", "/api/questions"):
        text = await (await client.get(path)).text()
        assert "Secret Sally" not in text and f'"author_id": {student.id}' not in text, path
        assert "Anonymous student" in text, path
    # Students cannot answer; tutors cannot ask.
    status, _ = await _json(
        client,
        "POST",
        "/api/questions",
        {"subject_id": subject_id, "title": "A tutor asking", "anonymous": False},
    )
    assert status == 403
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/tutors")})
    client.session.cookie_jar.clear()
    text = await (await client.get(f"/api/questions/{qid}")).text()
    assert "Secret Sally" not in text
    admin = await make_user("admin")
    await login(client, admin.email)
    data = await (await client.get(f"/api/questions/{qid}")).json()
    assert data["author_id"] == student.id and "Secret Sally" in data["author"]
    # The asker sees the booking link under the answer.
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/tutors")})
    await login(client, student.email)
    html = await (await client.get(f"/questions/{qid}")).text()
    assert f"/tutors/{tutor.id}#slots" in html and "Book a session with Tina Tutor" in html
    assert (await client.get("/questions/99999")).status == 404


async def test_recommendations_prefer_bayesian_rating(
    client: TestClient, make_user: UserFactory
) -> None:
    one_review = await make_user("tutor", name="One Fiver")
    many = await make_user("tutor", name="Many Reviews")
    other = await make_user("tutor", name="Chemistry Only")
    await make_tutor_ready(client.app, one_review, subjects=["Algebra"])
    await make_tutor_ready(client.app, many, subjects=["Algebra"])
    await make_tutor_ready(client.app, other, subjects=["Chemistry"])
    from panda.store.models import TutorProfile

    student = await make_user("student")
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(
            update(TutorProfile)
            .where(TutorProfile.user_id == one_review.id)
            .values(rating_sum=5, rating_count=1, rating_avg=5.0)
        )
        await db.execute(
            update(TutorProfile)
            .where(TutorProfile.user_id == many.id)
            .values(rating_sum=240, rating_count=50, rating_avg=4.8)
        )
        row = await db.get(User, student.id)
        assert row is not None
        row.interests = ["Algebra"]
        await db.commit()
    await login(client, student.email)
    data = await (await client.get("/api/dashboard/market")).json()
    recs = data["recommendations"]
    assert [r["tutor"]["name"] for r in recs][:2] == ["Many Reviews", "One Fiver"]
    assert "Chemistry Only" not in [r["tutor"]["name"] for r in recs]
    assert recs[0]["reason"].startswith("Because you study Algebra")
    assert data["quota"]["left"] == 8


@pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)
async def test_search_window_filter_and_approval_mirror(
    client: TestClient, make_user: UserFactory
) -> None:
    morning = await make_user("tutor", name="Morning Person")
    evening = await make_user("tutor", name="Night Owl")
    await make_tutor_ready(client.app, morning, hours=[(d, 8 * 60, 12 * 60) for d in range(7)])
    await make_tutor_ready(client.app, evening, hours=[(d, 18 * 60, 22 * 60) for d in range(7)])
    day = (utcnow() + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    q = (
        f"free_from={iso_utc(day + timedelta(hours=19))}"
        f"&free_to={iso_utc(day + timedelta(hours=21))}"
    )
    data = await (await client.get(f"/api/tutors?{q}")).json()
    assert [t["name"] for t in data["items"]] == ["Night Owl"]
    q = (
        f"free_from={iso_utc(day + timedelta(hours=9))}"
        f"&free_to={iso_utc(day + timedelta(hours=9, minutes=30))}"
    )
    data = await (await client.get(f"/api/tutors?{q}")).json()
    assert data["total"] == 0  # 30 minutes cannot hold a 60-minute session
    far = await client.get(
        f"/api/tutors?free_from={iso_utc(day + timedelta(days=90))}"
        f"&free_to={iso_utc(day + timedelta(days=90, hours=2))}"
    )
    assert far.status == 422
    # Suspending a tutor hides them from search at once (database trigger).
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(update(User).where(User.id == evening.id).values(tutor_status="rejected"))
        await db.commit()
    names = [t["name"] for t in (await (await client.get("/api/tutors")).json())["items"]]
    assert names == ["Morning Person"]
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(update(User).where(User.id == evening.id).values(tutor_status="approved"))
        await db.commit()
    assert (await (await client.get("/api/tutors")).json())["total"] == 2


async def test_every_market_api_route_is_documented(client: TestClient) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    paths = set(doc["paths"])
    import re

    for resource in client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter", "")
        if not path.startswith("/api/") or path == "/api/openapi.json":
            continue
        normalised = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)
        if any(normalised.startswith(p) for p in ("/api/auth",)):
            continue
        assert normalised in paths, normalised
