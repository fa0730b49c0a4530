"""The account JSON API: bearer tokens, /api/me, errors as {"error", "fields"}, throttling."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from panda import keys
from panda.store.models import User
from tests.helpers import DEFAULT_PASSWORD, get_csrf, login


async def get_token(client: TestClient, email: str, password: str = DEFAULT_PASSWORD) -> str:
    resp = await client.post("/api/auth/token", json={"email": email, "password": password})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"token", "expires_at"}
    return str(body["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_token_then_me(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student", name="Api Person")
    token = await get_token(client, user.email.upper())
    resp = await client.get("/api/me", headers=bearer(token))
    assert resp.status == 200
    me = await resp.json()
    assert me["email"] == user.email and me["name"] == "Api Person" and me["role"] == "student"
    assert me["verified"] is True and "password_hash" not in me


async def test_token_errors_are_json_with_fields(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    resp = await client.post("/api/auth/token", json={})
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] and set(body["fields"]) == {"email", "password"}
    resp = await client.post("/api/auth/token", json={"email": 5, "password": ["x"]})
    assert resp.status == 422 and set((await resp.json())["fields"]) == {"email", "password"}
    resp = await client.post(
        "/api/auth/token", data=b"not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and "error" in await resp.json()
    resp = await client.post("/api/auth/token", json=["a", "b"])
    assert resp.status == 400
    wrong = await client.post(
        "/api/auth/token", json={"email": user.email, "password": "nope nope"}
    )
    unknown = await client.post(
        "/api/auth/token", json={"email": "x@y.test", "password": "nope nope"}
    )
    assert wrong.status == unknown.status == 401
    assert (await wrong.json()) == (await unknown.json())


async def test_token_endpoint_is_throttled(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for _ in range(10):
        resp = await client.post(
            "/api/auth/token", json={"email": user.email, "password": "bad pw 123"}
        )
        assert resp.status == 401
    resp = await client.post(
        "/api/auth/token", json={"email": user.email, "password": DEFAULT_PASSWORD}
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert "error" in await resp.json()


async def test_bad_tokens_are_refused(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    token = await get_token(client, user.email)
    for bad in ("garbage", token[:-2] + "xx", ""):
        resp = await client.get("/api/me", headers=bearer(bad))
        assert resp.status == 401, bad
        assert "error" in await resp.json()
    assert (await client.get("/api/me")).status == 401


async def test_token_is_revoked_when_password_changes(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    token = await get_token(client, user.email)
    assert (await client.get("/api/me", headers=bearer(token))).status == 200
    await login(client, user.email)
    csrf = await get_csrf(client, "/profile")
    new = "another long passphrase"
    resp = await client.post(
        "/profile/password",
        data={
            "csrf_token": csrf,
            "current_password": DEFAULT_PASSWORD,
            "password": new,
            "password_confirm": new,
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    client.session.cookie_jar.clear()
    assert (await client.get("/api/me", headers=bearer(token))).status == 401
    fresh = await get_token(client, user.email, new)
    assert (await client.get("/api/me", headers=bearer(fresh))).status == 200


async def test_deactivated_user_gets_no_token_and_loses_access(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    token = await get_token(client, user.email)
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(User, user.id)
        assert row is not None
        row.is_active = False
        await db.commit()
    assert (await client.get("/api/me", headers=bearer(token))).status == 401
    resp = await client.post(
        "/api/auth/token", json={"email": user.email, "password": DEFAULT_PASSWORD}
    )
    assert resp.status == 403


async def test_patch_me_with_bearer_and_with_session(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    token = await get_token(client, user.email)
    resp = await client.patch(
        "/api/me",
        headers=bearer(token),
        json={
            "name": "New Name",
            "timezone": "Asia/Kolkata",
            "interests": ["Chess", "chess", "Art"],
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "New Name" and body["timezone"] == "Asia/Kolkata"
    assert body["interests"] == ["Chess", "Art"]
    resp = await client.patch(
        "/api/me", headers=bearer(token), json={"timezone": "Moon/Base", "name": "", "bio": 3}
    )
    assert resp.status == 422
    assert set((await resp.json())["fields"]) == {"timezone", "name", "bio"}
    resp = await client.patch("/api/me", headers=bearer(token), json={"role": "admin"})
    assert resp.status == 400
    # Cookie session: needs the CSRF header.
    await login(client, user.email)
    resp = await client.patch("/api/me", json={"bio": "hello"})
    assert resp.status == 403 and "error" in await resp.json()
    csrf = await get_csrf(client, "/profile")
    resp = await client.patch("/api/me", json={"bio": "hello"}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200 and (await resp.json())["bio"] == "hello"
    me = await (await client.get("/api/me")).json()
    assert me["role"] == "student" and me["bio"] == "hello"
