"""Small helpers shared by the tests: forms, CSRF, the mail outbox, free ports."""

from __future__ import annotations

import email
import email.policy
import re
import socket
from email.message import EmailMessage
from pathlib import Path

from aiohttp.test_utils import TestClient

DEFAULT_PASSWORD = "correct horse battery staple"
_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
_LINK_RE = re.compile(r"https?://[^\s<>\"]+")


def csrf_from(html: str) -> str:
    """The CSRF token in a rendered form."""
    match = _CSRF_RE.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


async def get_csrf(client: TestClient, path: str = "/login") -> str:
    """Load a page and return the CSRF token of its form."""
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return csrf_from(await resp.text())


async def login(client: TestClient, email_addr: str, password: str = DEFAULT_PASSWORD) -> None:
    """Log in through the real login form; assert it worked."""
    token = await get_csrf(client, "/login")
    resp = await client.post(
        "/login",
        data={"email": email_addr, "password": password, "csrf_token": token},
        allow_redirects=False,
    )
    assert resp.status == 303, f"login failed: {resp.status} {await resp.text()}"


async def post_form(
    client: TestClient, path: str, data: dict[str, str], *, page: str | None = None, **kw: object
):  # type: ignore[no-untyped-def]
    """POST a form with a fresh CSRF token taken from `page` (default: the same path)."""
    token = await get_csrf(client, page or path)
    return await client.post(path, data={**data, "csrf_token": token}, **kw)  # type: ignore[arg-type]


def outbox(data_dir: Path) -> list[EmailMessage]:
    """Every message written to the outbox, oldest first."""
    folder = data_dir / "outbox"
    if not folder.exists():
        return []
    msgs = []
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        msgs.append(msg)  # type: ignore[arg-type]
    return msgs  # type: ignore[return-value]


def mail_body(msg: EmailMessage) -> str:
    """The plain-text body of a message."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def links_in(text: str) -> list[str]:
    """Every http(s) link in a text."""
    return _LINK_RE.findall(text)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
