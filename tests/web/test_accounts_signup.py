"""Sign-up, e-mail verification and the resend banner."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from panda import keys
from panda.store.models import OneTimeToken, User
from panda.store.types import utcnow
from tests.helpers import get_csrf, links_in, mail_body, outbox

GOOD = {
    "name": "Lena Learner",
    "email": "Lena@Example.test",
    "password": "violet kettle drums 42",
    "role": "student",
    "timezone": "Europe/Berlin",
}


async def signup(client: TestClient, **changes: str):  # type: ignore[no-untyped-def]
    token = await get_csrf(client, "/signup")
    return await client.post(
        "/signup", data={**GOOD, **changes, "csrf_token": token}, allow_redirects=False
    )


async def user_by_email(client: TestClient, email: str) -> User | None:
    async with client.app[keys.sessionmaker]() as db:
        return (await db.execute(select(User).where(User.email == email))).scalar_one_or_none()


def verify_link(client: TestClient) -> str:
    msgs = [m for m in outbox(client.app[keys.settings].data_dir) if "Confirm" in m["Subject"]]
    assert msgs, "no verification mail"
    links = [u for u in links_in(mail_body(msgs[-1])) if "/verify/" in u]
    assert len(links) == 1
    return links[0]


async def test_signup_page_has_every_field(client: TestClient) -> None:
    resp = await client.get("/signup")
    assert resp.status == 200
    html = await resp.text()
    for name in ("name", "email", "password", "role", "timezone", "csrf_token"):
        assert f'name="{name}"' in html
    assert 'value="Europe/Berlin"' in html and 'href="/login"' in html
    assert "/static/js/timezone.js" in html


async def test_signup_creates_unverified_logged_in_user_and_mails_link(client: TestClient) -> None:
    resp = await signup(client)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    user = await user_by_email(client, "lena@example.test")
    assert user is not None and not user.is_verified and user.role == "student"
    assert user.timezone == "Europe/Berlin"
    assert user.password_hash and user.password_hash.startswith("$argon2id$")
    link = verify_link(client)
    assert link.startswith("http://127.0.0.1:8080/verify/")
    # Stored hashed: the raw token never appears in the database.
    raw = link.rsplit("/", 1)[1]
    async with client.app[keys.sessionmaker]() as db:
        hashes = (await db.execute(select(OneTimeToken.token_hash))).scalars().all()
    assert raw not in hashes and len(hashes) == 1 and len(hashes[0]) == 64
    dash = await client.get("/dashboard")
    html = await dash.text()
    assert "Lena Learner" in html and "confirm your e-mail" in html
    assert 'action="/verify/resend"' in html


async def test_tutor_signup_starts_pending(client: TestClient) -> None:
    await signup(client, role="tutor", email="tom@example.test")
    user = await user_by_email(client, "tom@example.test")
    assert user is not None and user.role == "tutor" and user.tutor_status == "pending"


async def test_verification_link_verifies_once_and_mails(client: TestClient) -> None:
    await signup(client)
    link = verify_link(client)
    path = link.replace("http://127.0.0.1:8080", "")
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    user = await user_by_email(client, "lena@example.test")
    assert user is not None and user.is_verified
    subjects = [m["Subject"] for m in outbox(client.app[keys.settings].data_dir)]
    assert "You are verified" in subjects
    # The message shows on the next page.
    page = await client.get("/dashboard")
    assert "verified" in await page.text()
    # Reused: refused clearly.
    again = await client.get(path)
    assert again.status == 400
    assert "already used" in await again.text()
    assert again.headers["Referrer-Policy"] == "no-referrer"


async def test_expired_and_garbage_verification_tokens_are_refused(client: TestClient) -> None:
    await signup(client)
    path = verify_link(client).replace("http://127.0.0.1:8080", "")
    async with client.app[keys.sessionmaker]() as db:
        await db.execute(update(OneTimeToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        await db.commit()
    assert (await client.get(path)).status == 400
    user = await user_by_email(client, "lena@example.test")
    assert user is not None and not user.is_verified
    for bad in ("x", "a" * 500, "'%20OR%201=1--", "%3Cscript%3E"):
        resp = await client.get(f"/verify/{bad}")
        assert resp.status in (400, 404), bad


async def test_verification_token_expires_after_24_hours(client: TestClient) -> None:
    await signup(client)
    async with client.app[keys.sessionmaker]() as db:
        token = (await db.execute(select(OneTimeToken))).scalar_one()
    lifetime = token.expires_at - token.created_at
    assert lifetime == timedelta(hours=24)


async def test_resend_sends_new_link_and_is_rate_limited(client: TestClient) -> None:
    await signup(client)
    first = verify_link(client)
    for _ in range(3):
        token = await get_csrf(client, "/dashboard")
        resp = await client.post(
            "/verify/resend", data={"csrf_token": token, "next": "/profile"}, allow_redirects=False
        )
        assert resp.status == 303 and resp.headers["Location"] == "/profile"
    latest = verify_link(client)
    assert latest != first
    # The older link stopped working; the newest works.
    assert (await client.get(first.replace("http://127.0.0.1:8080", ""))).status == 400
    token = await get_csrf(client, "/dashboard")
    resp = await client.post("/verify/resend", data={"csrf_token": token})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    resp = await client.get(latest.replace("http://127.0.0.1:8080", ""), allow_redirects=False)
    assert resp.status == 303


async def test_resend_needs_csrf(client: TestClient) -> None:
    await signup(client)
    resp = await client.post("/verify/resend", data={"csrf_token": "wrong"})
    assert resp.status == 403


async def test_signup_bad_inputs_get_field_errors(client: TestClient) -> None:
    cases = {
        "name": "",
        "email": "not-an-email",
        "password": "short",
        "role": "admin",
        "timezone": "Mars/Olympus",
    }
    for field, value in cases.items():
        resp = await signup(client, **{field: value})
        assert resp.status == 422, field
        html = await resp.text()
        assert f'id="{field}-error"' in html, field
    assert (await signup(client, password="password123")).status == 422
    assert (await signup(client, password="x" * 257)).status == 422
    async with client.app[keys.sessionmaker]() as db:
        assert (await db.execute(select(User))).first() is None


async def test_signup_refuses_duplicate_email_case_insensitively(client: TestClient) -> None:
    assert (await signup(client)).status == 303
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/dashboard")})
    resp = await signup(client, email="LENA@example.TEST")
    assert resp.status == 422
    assert "exists already" in await resp.text()


async def test_signup_without_csrf_is_refused(client: TestClient) -> None:
    resp = await client.post("/signup", data=GOOD)
    assert resp.status == 403
    resp = await client.post("/signup", data={**GOOD, "csrf_token": "forged"})
    assert resp.status == 403
    assert await user_by_email(client, "lena@example.test") is None


async def test_signup_page_redirects_logged_in_user(client: TestClient) -> None:
    await signup(client)
    resp = await client.get("/signup", allow_redirects=False)
    assert resp.status == 303


async def test_signups_per_network_are_limited(client: TestClient) -> None:
    from panda.ratelimit import SIGNUP_PER_IP, get_limiter

    limiter = get_limiter(client.app)
    # Failed attempts do not count...
    for _ in range(3):
        assert (await signup(client, password="short")).status == 422
    count, _ = await limiter.peek(f"{SIGNUP_PER_IP.name}:127.0.0.1", SIGNUP_PER_IP.window)
    assert count == 0
    # ...created accounts do; past the limit the form answers 429.
    for _ in range(SIGNUP_PER_IP.limit):
        await limiter.hit(f"{SIGNUP_PER_IP.name}:127.0.0.1", SIGNUP_PER_IP.window)
    resp = await signup(client)
    assert resp.status == 429 and "Retry-After" in resp.headers
    assert await user_by_email(client, "lena@example.test") is None
