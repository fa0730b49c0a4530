"""Administration: access, tutor approvals, onboarding by invitation, user actions, audit log."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from panda import keys
from panda.store.models import AuditEntry, User
from tests.helpers import get_csrf, links_in, login, mail_body, outbox

ADMIN_PAGES = ["/admin", "/admin/tutors", "/admin/users", "/admin/users/new", "/admin/audit"]


async def as_admin(client: TestClient, make_user) -> User:  # type: ignore[no-untyped-def]
    admin = await make_user("admin", name="Ada Admin")
    await login(client, admin.email)
    return admin


async def post(client: TestClient, path: str, data: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/admin/users")
    return await client.post(
        path, data={**(data or {}), "csrf_token": token}, allow_redirects=False
    )


async def fetch_user(client: TestClient, user_id: int) -> User:
    async with client.app[keys.sessionmaker]() as db:
        user = await db.get(User, user_id)
        assert user is not None
        return user


async def audit_actions(client: TestClient) -> list[tuple[str, str | None, int | None]]:
    async with client.app[keys.sessionmaker]() as db:
        rows = (await db.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars().all()
    return [(r.action, r.target_id, r.actor_id) for r in rows]


async def test_admin_pages_are_for_admins_only(client, make_user) -> None:  # type: ignore[no-untyped-def]
    for path in ADMIN_PAGES:
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login"), path
    for role in ("student", "tutor"):
        user = await make_user(role)
        await login(client, user.email)
        for path in ADMIN_PAGES:
            assert (await client.get(path)).status == 403, (role, path)
        target = await make_user("student")
        token = await get_csrf(client, "/profile")
        for action in ("deactivate", "role"):
            resp = await client.post(
                f"/admin/users/{target.id}/{action}", data={"csrf_token": token, "role": "admin"}
            )
            assert resp.status == 403
        await client.post("/logout", data={"csrf_token": token})
    await as_admin(client, make_user)
    for path in ADMIN_PAGES:
        assert (await client.get(path)).status == 200, path


async def test_approve_and_reject_tutors_with_mailed_reason(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await as_admin(client, make_user)
    good = await make_user("tutor", tutor_status="pending", name="Greta Good")
    bad = await make_user("tutor", tutor_status="pending", name="Bob Bad")
    page = await (await client.get("/admin/tutors")).text()
    assert "Greta Good" in page and "Bob Bad" in page
    resp = await post(client, f"/admin/tutors/{good.id}/approve", {"reason": "Great CV"})
    assert resp.status == 303
    # A rejection needs a reason.
    resp = await post(client, f"/admin/tutors/{bad.id}/reject", {"reason": "  "})
    assert resp.status == 422 and f'id="reject-{bad.id}-error"' in await resp.text()
    resp = await post(
        client, f"/admin/tutors/{bad.id}/reject", {"reason": "No teaching experience"}
    )
    assert resp.status == 303
    assert (await fetch_user(client, good.id)).tutor_status == "approved"
    rejected = await fetch_user(client, bad.id)
    assert rejected.tutor_status == "rejected"
    assert rejected.tutor_status_reason == "No teaching experience"
    mails = {m["To"]: m for m in outbox(client.app[keys.settings].data_dir)}
    assert "approved" in mails[good.email]["Subject"]
    assert "No teaching experience" in mail_body(mails[bad.email])
    assert await audit_actions(client) == [
        ("tutor.approve", str(good.id), admin.id),
        ("tutor.reject", str(bad.id), admin.id),
    ]
    page = await (await client.get("/admin/tutors")).text()
    assert "All caught up" in page
    # Students cannot be "approved".
    student = await make_user("student")
    assert (await post(client, f"/admin/tutors/{student.id}/approve")).status == 400
    assert (await post(client, "/admin/tutors/99999/approve")).status == 404


async def test_invite_creates_account_and_link_sets_password(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await as_admin(client, make_user)
    resp = await post(
        client,
        "/admin/users/new",
        {
            "name": "Nina New",
            "email": "Nina@Example.test",
            "role": "tutor",
            "timezone": "Asia/Tokyo",
        },
    )
    assert resp.status == 303
    async with client.app[keys.sessionmaker]() as db:
        nina = (
            await db.execute(select(User).where(User.email == "nina@example.test"))
        ).scalar_one()
    assert nina.password_hash is None and nina.role == "tutor" and nina.tutor_status == "approved"
    assert nina.timezone == "Asia/Tokyo"
    msg = [m for m in outbox(client.app[keys.settings].data_dir) if m["To"] == nina.email][-1]
    body = mail_body(msg)
    assert "Ada Admin" in body
    link = next(u for u in links_in(body) if "/invite/" in u).replace("http://127.0.0.1:8080", "")
    # The invited person opens the link in their own browser.
    invited = TestClient(client.server)
    page = await invited.get(link)
    assert page.status == 200 and page.headers["Referrer-Policy"] == "no-referrer"
    assert "Welcome, Nina New" in await page.text()
    token = await get_csrf(invited, link)
    resp = await invited.post(
        link,
        data={
            "csrf_token": token,
            "password": "ninas secret words",
            "password_confirm": "ninas secret words",
        },
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    assert (await invited.get("/dashboard")).status == 200
    nina = await fetch_user(client, nina.id)
    assert nina.is_verified and nina.password_hash
    assert (await invited.get(link)).status == 400  # single use
    await invited.session.close()
    assert ("user.invite", str(nina.id), admin.id) in await audit_actions(client)


async def test_invite_validates_and_refuses_duplicates(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await as_admin(client, make_user)
    base = {"name": "X Y", "email": "xy@example.test", "role": "student", "timezone": "UTC"}
    for field, value in (
        ("name", ""),
        ("email", "nope"),
        ("role", "admin"),
        ("timezone", "Nope/Nope"),
    ):
        resp = await post(client, "/admin/users/new", {**base, field: value})
        assert resp.status == 422 and f'id="{field}-error"' in await resp.text(), field
    resp = await post(client, "/admin/users/new", {**base, "email": admin.email.upper()})
    assert resp.status == 422 and "exists already" in await resp.text()
    assert len(outbox(client.app[keys.settings].data_dir)) == 0


async def test_resend_invitation(client, make_user) -> None:  # type: ignore[no-untyped-def]
    await as_admin(client, make_user)
    await post(
        client,
        "/admin/users/new",
        {"name": "Ivo", "email": "ivo@example.test", "role": "student", "timezone": "UTC"},
    )
    async with client.app[keys.sessionmaker]() as db:
        ivo = (await db.execute(select(User).where(User.email == "ivo@example.test"))).scalar_one()
    assert (await post(client, f"/admin/users/{ivo.id}/resend-invite")).status == 303
    assert len([m for m in outbox(client.app[keys.settings].data_dir) if m["To"] == ivo.email]) == 2
    active = await make_user("student")
    assert (await post(client, f"/admin/users/{active.id}/resend-invite")).status == 400


async def test_deactivate_logs_out_and_reactivate(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await make_user("admin")
    student = await make_user("student")
    theirs = TestClient(client.server)
    await login(theirs, student.email)
    await login(client, admin.email)
    assert (await post(client, f"/admin/users/{student.id}/deactivate")).status == 303
    assert (await theirs.get("/dashboard", allow_redirects=False)).status == 303
    token = await get_csrf(theirs, "/login")
    from tests.helpers import DEFAULT_PASSWORD

    resp = await theirs.post(
        "/login", data={"email": student.email, "password": DEFAULT_PASSWORD, "csrf_token": token}
    )
    assert resp.status == 403
    assert (await post(client, f"/admin/users/{student.id}/deactivate")).status == 400
    assert (await post(client, f"/admin/users/{student.id}/reactivate")).status == 303
    await login(theirs, student.email)
    await theirs.session.close()
    actions = [a for a, _, _ in await audit_actions(client)]
    assert actions == ["user.deactivate", "user.reactivate"]


async def test_change_role_and_self_protection(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await as_admin(client, make_user)
    student = await make_user("student")
    assert (await post(client, f"/admin/users/{student.id}/role", {"role": "tutor"})).status == 303
    changed = await fetch_user(client, student.id)
    assert changed.role == "tutor" and changed.tutor_status == "approved"
    assert (
        await post(client, f"/admin/users/{student.id}/role", {"role": "overlord"})
    ).status == 400
    assert (await post(client, f"/admin/users/{student.id}/role", {"role": "tutor"})).status == 400
    assert (await post(client, f"/admin/users/{admin.id}/role", {"role": "student"})).status == 403
    assert (await post(client, f"/admin/users/{admin.id}/deactivate")).status == 403
    assert (await post(client, f"/admin/users/{student.id}/explode")).status == 404
    async with client.app[keys.sessionmaker]() as db:
        entry = (await db.execute(select(AuditEntry))).scalar_one()
    assert entry.action == "user.role" and entry.detail["old"] == "student"
    assert entry.detail["new"] == "tutor"


async def test_user_search_and_filters(client, make_user) -> None:  # type: ignore[no-untyped-def]
    await as_admin(client, make_user)
    await make_user("student", name="Zoe Zebra", email="zoe@zoo.test")
    await make_user("tutor", name="Percy Pending", tutor_status="pending")
    await make_user("student", name="Under_Score", email="u_s@example.test")
    html = await (await client.get("/admin/users", params={"q": "zebra"})).text()
    assert "Zoe Zebra" in html and "Percy" not in html
    html = await (await client.get("/admin/users", params={"q": "ZOO.TEST"})).text()
    assert "Zoe Zebra" in html
    html = await (await client.get("/admin/users", params={"status": "pending"})).text()
    assert "Percy Pending" in html and "Zoe" not in html
    html = await (await client.get("/admin/users", params={"role": "tutor"})).text()
    assert "Percy Pending" in html and "Zoe" not in html
    # LIKE wildcards are literal; odd parameters are ignored, not errors.
    html = await (await client.get("/admin/users", params={"q": "_"})).text()
    assert "Under_Score" in html and "Zoe" not in html
    for params in (
        {"q": "%"},
        {"role": "x"},
        {"page": "-3"},
        {"page": "abc"},
        {"q": "' OR 1=1 --"},
    ):
        assert (await client.get("/admin/users", params=params)).status == 200
    html = await (await client.get("/admin/users", params={"q": "' OR 1=1 --"})).text()
    assert "No account matches" in html
    assert (await client.get("/admin/users/99999")).status == 404


async def test_audit_log_page_lists_actions(client, make_user) -> None:  # type: ignore[no-untyped-def]
    await as_admin(client, make_user)
    tutor = await make_user("tutor", tutor_status="pending", name="Tina Tutor")
    await post(client, f"/admin/tutors/{tutor.id}/reject", {"reason": "<b>Not yet</b>"})
    html = await (await client.get("/admin/audit")).text()
    assert "Rejected tutor" in html and tutor.email in html
    assert "&lt;b&gt;Not yet&lt;/b&gt;" in html and "<b>Not yet</b>" not in html
    html = await (await client.get("/admin/audit", params={"action": "user.invite"})).text()
    assert "Rejected tutor</td>" not in html
    html = await (await client.get(f"/admin/users/{tutor.id}")).text()
    assert "Rejected tutor" in html
    overview = await (await client.get("/admin")).text()
    assert "Rejected tutor" in overview


async def test_audit_log_shows_other_areas_entries_and_merges_detail(client, make_user) -> None:  # type: ignore[no-untyped-def]
    from panda.store import audit

    admin = await as_admin(client, make_user)
    async with client.app[keys.sessionmaker]() as db:
        actor = await db.get(User, admin.id)
        # The call shape other areas use.
        await audit.record(
            db,
            actor=actor,
            action="recording.delete",
            target_type="recording",
            target_id="7",
            detail={"why": "<i>asked</i>"},
        )
        await db.commit()
        entry = (await db.execute(select(AuditEntry))).scalar_one()
        assert entry.detail == {"why": "<i>asked</i>"} and entry.target_id == "7"
    html = await (await client.get("/admin/audit")).text()
    assert "Recording: delete" in html and "recording #7" in html
    assert "&lt;i&gt;asked&lt;/i&gt;" in html
    html = await (await client.get("/admin/audit", params={"action": "recording.delete"})).text()
    assert 'value="recording.delete" selected' in html
    assert (await client.get("/admin/audit", params={"action": "x" * 500})).status == 200
