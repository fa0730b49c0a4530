"""Security by default: headers, CSRF on every unsafe route, hostile text escaped, no tracebacks."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select, text

from panda import keys
from panda.app import create_app
from panda.config import Settings
from panda.store.models import AuditEntry, User
from tests.helpers import get_csrf, login

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SQLI = "Robert'); DROP TABLE users;-- \" OR 1=1 --"
HOSTILE = f"{XSS} {SQLI}"
RAW_MARKERS = ("<script>alert", "<img src=x")


def assert_escaped(html: str) -> None:
    for marker in RAW_MARKERS:
        assert marker not in html, f"unescaped {marker!r} in page"


async def test_security_headers_everywhere(client: TestClient) -> None:
    for path in (
        "/",
        "/login",
        "/signup",
        "/no-such-page",
        "/api/me",
        "/api/openapi.json",
        "/static/css/app.css",
        "/healthz",
    ):
        resp = await client.get(path, allow_redirects=False)
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp
        assert resp.headers.get("X-Frame-Options") == "DENY", path
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
    redirect = await client.get("/dashboard", allow_redirects=False)
    assert redirect.status == 303 and redirect.headers["X-Frame-Options"] == "DENY"


async def test_token_pages_send_no_referrer(client: TestClient) -> None:
    for path in ("/verify/" + "a" * 43, "/password/reset/" + "a" * 43, "/invite/" + "a" * 43):
        resp = await client.get(path)
        assert resp.status == 400
        assert resp.headers["Referrer-Policy"] == "no-referrer", path


def _unsafe_routes(app: web.Application) -> list[tuple[str, str]]:
    fill = {"token": "a" * 43, "decision": "approve", "action": "deactivate"}
    out = []
    for route in app.router.routes():
        if route.method not in {"POST", "PUT", "PATCH", "DELETE"}:
            continue
        info = route.resource.get_info() if route.resource else {}
        template = info.get("path") or info.get("formatter") or ""
        if template == "/api/auth/token":
            continue
        url = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: fill.get(m.group(1), "1"), template)
        out.append((route.method, url))
    return out


async def test_every_unsafe_route_refuses_a_wrong_csrf_token(client, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = await make_user("admin")
    await login(client, admin.email)
    routes = _unsafe_routes(client.app)
    assert ("POST", "/signup") in routes and ("POST", "/admin/users/1/deactivate") in routes
    for method, url in routes:
        for token in ("", "forged-token-forged-token-forged-token-1234"):
            resp = await client.request(method, url, data={"csrf_token": token})
            assert resp.status == 403, (method, url, resp.status)
    # Nothing happened to the admin.
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(User, admin.id)
        assert row is not None and row.is_active
        assert (await db.execute(select(AuditEntry))).first() is None


async def test_hostile_text_is_stored_verbatim_and_rendered_escaped(client, make_user) -> None:  # type: ignore[no-untyped-def]
    # Sign-up name.
    token = await get_csrf(client, "/signup")
    resp = await client.post(
        "/signup",
        data={
            "csrf_token": token,
            "name": HOSTILE,
            "email": "hostile@example.test",
            "password": "hostile but long passphrase",
            "role": "student",
            "timezone": "UTC",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    for path in ("/dashboard", "/profile"):
        assert_escaped(await (await client.get(path)).text())
    # Profile fields.
    token = await get_csrf(client, "/profile")
    resp = await client.post(
        "/profile",
        data={
            "csrf_token": token,
            "name": HOSTILE,
            "timezone": "UTC",
            "bio": HOSTILE,
            "interests": f"{XSS}, {SQLI}"[:80],
        },
        allow_redirects=False,
    )
    assert resp.status in (303, 422)
    resp = await client.post(
        "/profile",
        data={
            "csrf_token": token,
            "name": HOSTILE,
            "timezone": "UTC",
            "bio": HOSTILE,
            "interests": "<b>x</b>, ' OR 1=1",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    html = await (await client.get("/profile")).text()
    assert_escaped(html)
    assert "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    async with client.app[keys.sessionmaker]() as db:
        stored = (
            await db.execute(select(User).where(User.email == "hostile@example.test"))
        ).scalar_one()
        assert stored.name == HOSTILE and stored.bio == HOSTILE
        assert stored.interests == ["<b>x</b>", "' OR 1=1"]
        # The users table survived every attempt.
        assert (await db.execute(text("SELECT count(*) FROM users"))).scalar_one() >= 1
    # Admin pages show the same person escaped; admin-entered text too.
    client.session.cookie_jar.clear()
    admin = await make_user("admin")
    tutor = await make_user("tutor", tutor_status="pending", name=HOSTILE)
    await login(client, admin.email)
    token = await get_csrf(client, "/admin/users")
    resp = await client.post(
        "/admin/users/new",
        data={
            "csrf_token": token,
            "name": HOSTILE,
            "email": "invited@example.test",
            "role": "student",
            "timezone": "UTC",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    resp = await client.post(
        f"/admin/tutors/{tutor.id}/reject",
        data={"csrf_token": token, "reason": HOSTILE},
        allow_redirects=False,
    )
    assert resp.status == 303
    for path in (
        "/admin",
        "/admin/tutors",
        "/admin/users",
        f"/admin/users/{stored.id}",
        f"/admin/users/{tutor.id}",
        "/admin/audit",
    ):
        assert_escaped(await (await client.get(path)).text())
    for q in (XSS, SQLI, "%", "_", "\\"):
        resp = await client.get("/admin/users", params={"q": q})
        assert resp.status == 200
        assert_escaped(await resp.text())
    # Login and reset forms echo the address escaped.
    client.session.cookie_jar.clear()
    token = await get_csrf(client, "/login")
    resp = await client.post("/login", data={"csrf_token": token, "email": XSS, "password": SQLI})
    assert resp.status == 400
    assert_escaped(await resp.text())
    token = await get_csrf(client, "/password/forgot")
    resp = await client.post("/password/forgot", data={"csrf_token": token, "email": XSS})
    assert resp.status == 422
    assert_escaped(await resp.text())


async def test_overlong_and_nul_input_is_refused_cleanly(client: TestClient) -> None:
    token = await get_csrf(client, "/signup")
    resp = await client.post("/signup", data={"csrf_token": token, "name": "x" * 20_000})
    assert resp.status == 400
    resp = await client.post(
        "/signup",
        data={
            "csrf_token": token,
            "name": "A\x00B\x07",
            "email": "nul@example.test",
            "password": "long enough passphrase",
            "role": "student",
            "timezone": "UTC",
        },
    )
    assert resp.status == 422 and 'id="name-error"' in await resp.text()


async def test_unexpected_errors_show_no_traceback(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals /etc/passwd")

    app.router.add_get("/boom", boom)
    app.router.add_get("/api/boom", boom)
    client = await aiohttp_client(app)
    assert settings.debug is False
    resp = await client.get("/boom")
    body = await resp.text()
    assert resp.status == 500 and "Traceback" not in body and "secret internals" not in body
    resp = await client.get("/api/boom")
    assert resp.status == 500 and "secret internals" not in await resp.text()
    assert "error" in await resp.json()


async def test_cookies_are_secure_behind_https(aiohttp_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(settings.with_(base_url="https://panda.example")))
    resp = await client.get("/login")
    cookie = resp.headers.get("Set-Cookie", "")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
