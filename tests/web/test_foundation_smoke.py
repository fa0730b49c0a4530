"""The skeleton serves its pages, errors and health check with the right headers."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.helpers import login


async def test_home_page_links_to_signup_and_login(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    html = await resp.text()
    assert "Panda Professor" in html
    assert 'href="/signup"' in html and 'href="/login"' in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_healthz_reports_database(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["database"] == "ok" and body["version"]


async def test_unknown_page_is_a_friendly_404(client: TestClient) -> None:
    resp = await client.get("/no/such/page")
    assert resp.status == 404
    assert "could not find" in await resp.text()
    api = await client.get("/api/no-such-endpoint")
    assert api.status == 404
    assert "error" in await api.json()


async def test_post_without_csrf_is_refused(client: TestClient) -> None:
    resp = await client.post("/login", data={"email": "a@b.c", "password": "x"})
    assert resp.status == 403


async def test_login_and_logout(client: TestClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    resp = await client.get("/dashboard")
    assert resp.status == 200
    assert user.name in await resp.text()


async def test_dashboard_requires_login(client: TestClient) -> None:
    resp = await client.get("/dashboard", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/login")
