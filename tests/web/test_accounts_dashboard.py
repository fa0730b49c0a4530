"""Each role gets its own dashboard."""

from __future__ import annotations

from tests.helpers import login


async def test_student_dashboard(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    html = await (await client.get("/dashboard")).text()
    assert "Find a tutor" in html and "Upcoming sessions" in html
    assert html.count("Upcoming sessions</h2>") == 1
    assert "Tutor approvals" not in html and "under review" not in html


async def test_tutor_dashboards_follow_review_status(client, make_user) -> None:  # type: ignore[no-untyped-def]
    pending = await make_user("tutor", tutor_status="pending")
    await login(client, pending.email)
    html = await (await client.get("/dashboard")).text()
    assert "being reviewed" in html and "What do you want to learn" not in html
    client.session.cookie_jar.clear()
    approved = await make_user("tutor")
    await login(client, approved.email)
    assert "You are live" in await (await client.get("/dashboard")).text()


async def test_admin_dashboard_links_to_admin(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await make_user("admin")
    await login(client, admin.email)
    html = await (await client.get("/dashboard")).text()
    assert 'href="/admin/tutors"' in html and 'href="/admin/users"' in html
    assert "Upcoming sessions" not in html


async def test_unverified_dashboard_shows_banner(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student", verified=False)
    await login(client, user.email)
    html = await (await client.get("/dashboard")).text()
    assert 'action="/verify/resend"' in html and "confirm your e-mail address" in html
