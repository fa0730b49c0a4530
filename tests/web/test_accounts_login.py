"""Log in, throttling, logout, password reset and invitations' set-password pages."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from panda import keys
from panda.store.models import OneTimeToken, User, UserSession
from panda.store.types import utcnow
from tests.helpers import DEFAULT_PASSWORD, get_csrf, links_in, login, mail_body, outbox

NEW_PASSWORD = "a brand new passphrase 77"


def second_browser(client: TestClient) -> TestClient:
    """Another cookie jar on the same running server (closed with the test's session)."""
    return TestClient(client.server)


async def post_login(client: TestClient, email: str, password: str):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/login")
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token},
        allow_redirects=False,
    )


async def test_wrong_password_and_unknown_email_answer_the_same(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    wrong = await post_login(client, user.email, "not the password at all")
    unknown = await post_login(client, "nobody@example.test", "not the password at all")
    assert wrong.status == unknown.status == 400
    assert "do not match" in await wrong.text() and "do not match" in await unknown.text()


async def test_login_renews_session_and_logout_ends_it_server_side(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await client.get("/login")
    before = client.session.cookie_jar.filter_cookies(client.make_url("/"))["panda_session"].value
    resp = await post_login(client, user.email, DEFAULT_PASSWORD)
    assert resp.status == 303
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # plain http base URL in tests
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["panda_session"]
    assert cookie.value != before
    token = await get_csrf(client, "/dashboard")
    resp = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert resp.status == 303
    async with client.app[keys.sessionmaker]() as db:
        rows = (await db.execute(select(UserSession))).scalars().all()
    assert len(rows) == 1 and rows[0].revoked_at is not None
    # Replaying the old cookie does not bring the session back.
    client.session.cookie_jar.update_cookies({"panda_session": cookie.value})
    resp = await client.get("/dashboard", allow_redirects=False)
    assert resp.status == 303


async def test_throttle_per_account_after_ten_failures(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for _ in range(10):
        assert (await post_login(client, user.email, "wrong password!!")).status == 400
    resp = await post_login(client, user.email, DEFAULT_PASSWORD)
    assert resp.status == 429
    assert 0 < int(resp.headers["Retry-After"]) <= 15 * 60
    assert "Too many" in await resp.text()


async def test_throttle_is_the_same_for_unknown_addresses(client) -> None:  # type: ignore[no-untyped-def]
    for _ in range(10):
        await post_login(client, "ghost@example.test", "wrong password!!")
    resp = await post_login(client, "ghost@example.test", "wrong password!!")
    assert resp.status == 429 and "Retry-After" in resp.headers


async def test_throttle_per_ip_across_accounts(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for i in range(10):
        await post_login(client, f"other{i}@example.test", "wrong password!!")
    resp = await post_login(client, user.email, DEFAULT_PASSWORD)
    assert resp.status == 429


async def test_success_clears_account_failures(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for _ in range(5):
        await post_login(client, user.email, "wrong password!!")
    assert (await post_login(client, user.email, DEFAULT_PASSWORD)).status == 303
    # The account counter is reset (the per-IP one still counts the 5 failures).
    from panda.ratelimit import LOGIN_PER_ACCOUNT, get_limiter

    count, _ = await get_limiter(client.app).peek(f"{LOGIN_PER_ACCOUNT.name}:{user.email}", 900)
    assert count == 0


async def test_deactivated_user_cannot_log_in(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(update(User).where(User.id == user.id).values(is_active=False))
        await db.commit()
    resp = await post_login(client, user.email, DEFAULT_PASSWORD)
    assert resp.status == 403 and "deactivated" in await resp.text()


async def test_login_next_is_kept_but_never_offsite(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for target, expected in (
        ("/profile", "/profile"),
        ("https://evil.test/", "/dashboard"),
        ("//evil.test", "/dashboard"),
    ):
        token = await get_csrf(client, "/login")
        resp = await client.post(
            "/login",
            data={
                "email": user.email,
                "password": DEFAULT_PASSWORD,
                "csrf_token": token,
                "next": target,
            },
            allow_redirects=False,
        )
        assert resp.headers["Location"] == expected
        await client.post("/logout", data={"csrf_token": await get_csrf(client, "/dashboard")})


# --- password reset ----------------------------------------------------------------------------


async def request_reset(client: TestClient, email: str):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/password/forgot")
    return await client.post("/password/forgot", data={"email": email, "csrf_token": token})


def reset_path(client: TestClient) -> str:
    msgs = [m for m in outbox(client.app[keys.settings].data_dir) if "Reset" in m["Subject"]]
    assert msgs
    links = [u for u in links_in(mail_body(msgs[-1])) if "/password/reset/" in u]
    return links[0].replace("http://127.0.0.1:8080", "")


async def test_forgot_answers_the_same_for_known_and_unknown(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    known = await request_reset(client, user.email)
    unknown = await request_reset(client, "nobody@example.test")
    assert known.status == unknown.status == 200
    strip = lambda html: html.split('name="csrf_token"')[0]  # noqa: E731
    assert strip(await known.text()) == strip(await unknown.text())
    msgs = outbox(client.app[keys.settings].data_dir)
    assert [m["To"] for m in msgs] == [user.email]


async def test_reset_flow_changes_password_ends_sessions_and_mails(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    other = second_browser(client)
    await login(other, user.email)
    assert (await other.get("/dashboard", allow_redirects=False)).status == 200
    await request_reset(client, user.email)
    path = reset_path(client)
    page = await client.get(path)
    assert page.status == 200 and page.headers["Referrer-Policy"] == "no-referrer"
    token = await get_csrf(client, path)
    resp = await client.post(
        path,
        data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD, "csrf_token": token},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    # The other device is logged out, the old password is dead, the new one works.
    assert (await other.get("/dashboard", allow_redirects=False)).status == 303
    assert (await post_login(client, user.email, DEFAULT_PASSWORD)).status == 400
    await login(client, user.email, NEW_PASSWORD)
    subjects = [m["Subject"] for m in outbox(client.app[keys.settings].data_dir)]
    assert "Your password was changed" in subjects
    # Single use.
    assert (await client.get(path)).status == 400
    await other.session.close()


async def test_reset_token_expires_after_one_hour(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await request_reset(client, user.email)
    path = reset_path(client)
    async with client.app[keys.sessionmaker]() as db:
        tok = (await db.execute(select(OneTimeToken))).scalar_one()
        assert tok.expires_at - tok.created_at == timedelta(hours=1)
        tok.expires_at = utcnow() - timedelta(seconds=1)
        await db.commit()
    assert (await client.get(path)).status == 400
    token = await get_csrf(client, "/login")
    resp = await client.post(
        path, data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD, "csrf_token": token}
    )
    assert resp.status == 400
    assert (await post_login(client, user.email, NEW_PASSWORD)).status == 400


async def test_reset_form_validates_password(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await request_reset(client, user.email)
    path = reset_path(client)
    token = await get_csrf(client, path)
    resp = await client.post(
        path, data={"password": "short", "password_confirm": "short", "csrf_token": token}
    )
    assert resp.status == 422 and 'id="password-error"' in await resp.text()
    resp = await client.post(
        path,
        data={
            "password": NEW_PASSWORD,
            "password_confirm": "different one 123",
            "csrf_token": token,
        },
    )
    assert resp.status == 422 and 'id="password_confirm-error"' in await resp.text()
    # The failed attempts did not use the token up.
    assert (await client.get(path)).status == 200


async def test_reset_without_csrf_is_refused(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await request_reset(client, user.email)
    path = reset_path(client)
    resp = await client.post(
        path, data={"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )
    assert resp.status == 403
    assert (await client.get(path)).status == 200


async def test_forgot_rejects_empty_and_limits_mails(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    assert (await request_reset(client, "")).status == 422
    for _ in range(5):
        assert (await request_reset(client, user.email)).status == 200
    # At most three mails an hour per address, and the answer never changes.
    assert len(outbox(client.app[keys.settings].data_dir)) == 3


async def test_throttle_uses_forwarded_address_from_local_proxy(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    for i in range(10):
        token = await get_csrf(client, "/login")
        await client.post(
            "/login",
            data={"email": f"x{i}@example.test", "password": "wrong pw!!", "csrf_token": token},
            headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.9"},
        )
    token = await get_csrf(client, "/login")
    data = {"email": user.email, "password": DEFAULT_PASSWORD, "csrf_token": token}
    # The same client behind the proxy is throttled, even when it forges an earlier entry...
    resp = await client.post(
        "/login",
        data=data,
        headers={"X-Forwarded-For": "9.9.9.9, 203.0.113.9"},
        allow_redirects=False,
    )
    assert resp.status == 429
    # ...while another client behind the same proxy is not.
    resp = await client.post(
        "/login", data=data, headers={"X-Forwarded-For": "198.51.100.7"}, allow_redirects=False
    )
    assert resp.status == 303
