"""Profile editing, photo uploads (good, fake, oversized, bombs) and who may see photos."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import timedelta

from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image
from sqlalchemy import select

from panda import keys
from panda.store.models import Booking, User
from panda.store.types import utcnow
from tests.helpers import get_csrf, login, outbox


def jpeg_with_gps(size: tuple[int, int] = (1200, 800)) -> bytes:
    img = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x010E] = "GPS 52.31N 4.76E"  # ImageDescription, standing in for location data
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), comment=b"secret comment")
    return buf.getvalue()


def png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, (0, 128, 0, 128)).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


async def upload(
    client: TestClient,
    data: bytes,
    filename: str = "me.jpg",
    ctype: str = "image/jpeg",
    csrf: str | None = None,
):  # type: ignore[no-untyped-def]
    token = csrf if csrf is not None else await get_csrf(client, "/profile")
    form = FormData()
    form.add_field("csrf_token", token)
    form.add_field("photo", data, filename=filename, content_type=ctype)
    return await client.post("/profile/photo", data=form, allow_redirects=False)


async def me(client: TestClient, user_id: int) -> User:
    async with client.app[keys.sessionmaker]() as db:
        user = await db.get(User, user_id)
        assert user is not None
        return user


async def test_profile_page_shows_fields(client, make_user) -> None:  # type: ignore[no-untyped-def]
    student = await make_user("student")
    await login(client, student.email)
    html = await (await client.get("/profile")).text()
    for name in ("name", "timezone", "bio", "interests", "photo", "current_password"):
        assert f'name="{name}"' in html
    tutor = await make_user("tutor")
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/profile")})
    await login(client, tutor.email)
    html = await (await client.get("/profile")).text()
    assert 'name="interests"' not in html and 'name="bio"' in html


async def test_profile_update_saves_and_validates(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    token = await get_csrf(client, "/profile")
    resp = await client.post(
        "/profile",
        data={
            "csrf_token": token,
            "name": "  Ada   Lovelace ",
            "timezone": "America/New_York",
            "bio": "I like numbers.",
            "interests": "Algebra, piano,algebra, , Spanish",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    saved = await me(client, user.id)
    assert saved.name == "Ada Lovelace" and saved.timezone == "America/New_York"
    assert saved.interests == ["Algebra", "piano", "Spanish"]
    for field, value in (
        ("timezone", "Nowhere/City"),
        ("name", ""),
        ("bio", "x" * 2001),
        ("interests", "y" * 41),
        ("interests", ",".join(f"s{i}" for i in range(13))),
    ):
        data = {"csrf_token": token, "name": "Ada", "timezone": "UTC", "bio": "", "interests": ""}
        data[field] = value
        resp = await client.post("/profile", data=data)
        assert resp.status == 422, field
        assert f'id="{field}-error"' in await resp.text()
    assert (
        await client.post("/profile", data={"name": "No CSRF", "timezone": "UTC"})
    ).status == 403
    assert (await me(client, user.id)).name == "Ada Lovelace"


async def test_profile_requires_login(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/profile", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")


async def test_photo_upload_reencodes_strips_metadata_and_serves(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    resp = await upload(client, jpeg_with_gps())
    assert resp.status == 303
    saved = await me(client, user.id)
    assert saved.photo and saved.photo.endswith(".webp")
    stored = client.app[keys.settings].uploads_dir / "photos" / saved.photo
    raw = stored.read_bytes()
    assert b"SecretCam" not in raw and b"secret comment" not in raw and b"52.31N" not in raw
    img = Image.open(io.BytesIO(raw))
    assert img.format == "WEBP" and img.size == (512, 512)
    assert not img.getexif() and "exif" not in img.info and "icc_profile" not in img.info
    page = await (await client.get("/profile")).text()
    assert f"/users/{user.id}/photo" in page
    served = await client.get(f"/users/{user.id}/photo")
    assert served.status == 200 and served.headers["Content-Type"] == "image/webp"
    assert await served.read() == raw
    # Not under a static path.
    assert not str(stored).startswith(str(client.app[keys.settings].data_dir / "static"))
    # Replacing removes the old file; PNG with transparency works too.
    assert (await upload(client, png_bytes(), "p.png", "image/png")).status == 303
    assert not stored.exists()


async def test_fake_and_unsupported_images_are_refused(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    cases = [
        (b"<?php echo 'hi'; ?>", "evil.jpg", "image/jpeg"),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "x.svg",
            "image/svg+xml",
        ),
        (gif.getvalue(), "a.gif", "image/gif"),
        (jpeg_with_gps()[:200], "truncated.jpg", "image/jpeg"),
        (b"", "empty.jpg", "image/jpeg"),
    ]
    for data, name, ctype in cases:
        resp = await upload(client, data, name, ctype)
        assert resp.status == 422, name
        assert "JPEG, PNG or WebP" in await resp.text() or "empty" in await resp.text()
    assert (await me(client, user.id)).photo is None


async def test_decompression_bomb_is_refused(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    resp = await upload(client, png_claiming(50_000, 50_000), "bomb.png", "image/png")
    assert resp.status == 422
    assert "too large" in await resp.text()


async def test_oversized_uploads_are_refused(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    big = jpeg_with_gps((64, 64)) + b"\0" * (5 * 1024 * 1024)
    resp = await upload(client, big)
    assert resp.status == 413
    huge = b"\0" * (7 * 1024 * 1024)
    resp = await upload(client, huge)
    assert resp.status == 413
    assert (await me(client, user.id)).photo is None


async def test_upload_needs_csrf_and_a_file(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    await login(client, user.email)
    assert (await upload(client, png_bytes(), csrf="wrong")).status == 403
    token = await get_csrf(client, "/profile")
    form = FormData(default_to_multipart=True)
    form.add_field("csrf_token", token)
    form.add_field("nothing", "here")
    resp = await client.post("/profile/photo", data=form)
    assert resp.status == 422
    resp = await client.post("/profile/photo", data={"csrf_token": token})
    assert resp.status == 400


async def test_photo_visibility(client, make_user) -> None:  # type: ignore[no-untyped-def]
    student = await make_user("student")
    other = await make_user("student")
    tutor = await make_user("tutor")
    booked_tutor = await make_user("tutor")
    pending = await make_user("tutor", tutor_status="pending")
    for person in (student, tutor, pending):
        await login(client, person.email)
        assert (await upload(client, png_bytes(), "p.png", "image/png")).status == 303
        await client.post("/logout", data={"csrf_token": await get_csrf(client, "/profile")})
    async with client.app[keys.sessionmaker]() as db:
        db.add(
            Booking(
                student_id=student.id,
                tutor_id=booked_tutor.id,
                start_at=utcnow(),
                end_at=utcnow() + timedelta(hours=1),
                subject="Maths",
            )
        )
        await db.commit()
    # Anonymous: approved tutors only.
    assert (await client.get(f"/users/{tutor.id}/photo")).status == 200
    assert (await client.get(f"/users/{student.id}/photo")).status == 404
    assert (await client.get(f"/users/{pending.id}/photo")).status == 404
    assert (await client.get("/users/abc/photo")).status == 404
    assert (await client.get("/users/99999/photo")).status == 404
    await login(client, other.email)
    assert (await client.get(f"/users/{student.id}/photo")).status == 404
    await client.post("/logout", data={"csrf_token": await get_csrf(client, "/profile")})
    await login(client, booked_tutor.email)
    assert (await client.get(f"/users/{student.id}/photo")).status == 200


async def test_password_change(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    other = TestClient(client.server)
    await login(other, user.email)
    await login(client, user.email)
    token = await get_csrf(client, "/profile")
    new = "my fresh passphrase 2026"
    resp = await client.post(
        "/profile/password",
        data={
            "csrf_token": token,
            "current_password": "wrong one!!",
            "password": new,
            "password_confirm": new,
        },
    )
    assert resp.status == 422 and 'id="current_password-error"' in await resp.text()
    from tests.helpers import DEFAULT_PASSWORD

    resp = await client.post(
        "/profile/password",
        data={
            "csrf_token": token,
            "current_password": DEFAULT_PASSWORD,
            "password": new,
            "password_confirm": new,
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    # This browser stays in; the other one is out; a notice was mailed.
    assert (await client.get("/profile", allow_redirects=False)).status == 200
    assert (await other.get("/profile", allow_redirects=False)).status == 303
    assert any(
        "password was changed" in m["Subject"] for m in outbox(client.app[keys.settings].data_dir)
    )
    await other.session.close()
    async with client.app[keys.sessionmaker]() as db:
        assert (await db.execute(select(User.id))).first() is not None


async def test_devices_listed_and_others_logged_out(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    other = TestClient(client.server)
    await other.get("/login", headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/120.0"})
    token = await get_csrf(other, "/login")
    from tests.helpers import DEFAULT_PASSWORD

    await other.post(
        "/login",
        data={"email": user.email, "password": DEFAULT_PASSWORD, "csrf_token": token},
        headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/120.0"},
    )
    await login(client, user.email)
    html = await (await client.get("/profile")).text()
    assert "Firefox on Windows" in html and "this device" in html
    token = await get_csrf(client, "/profile")
    resp = await client.post(
        "/profile/sessions/end-others", data={"csrf_token": token}, allow_redirects=False
    )
    assert resp.status == 303
    assert (await other.get("/profile", allow_redirects=False)).status == 303
    assert (await client.get("/profile", allow_redirects=False)).status == 200
    html = await (await client.get("/profile")).text()
    assert "Firefox on Windows" not in html
    await other.session.close()
