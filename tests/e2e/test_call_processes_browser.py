"""Two Chromium participants whose pages are served by different `panda serve` processes.

The processes share PostgreSQL and Redis. The second participant's call socket is redirected to
the process holding the room, and media flows both ways; when that process is killed, the pages
reconnect and the call continues on the live process.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.conftest import LiveServer
from tests.e2e.test_call_browser import DEADLINE, join, login, video_growing, wait_js

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(420)]


@pytest.fixture
async def pages(
    browser: Browser, processes: tuple[LiveServer, LiveServer, dict[str, Any]]
) -> AsyncIterator[dict[str, Page]]:
    """The student logged in through A, the tutor through B (each in their own context)."""
    a, b, demo = processes
    contexts = []
    found: dict[str, Page] = {}
    for role, server in (("student", a), ("tutor", b)):
        context = await browser.new_context(viewport={"width": 1100, "height": 760})
        contexts.append(context)
        found[role] = await login(context, server.url, demo[role]["email"], demo[role]["password"])
    yield found
    for context in contexts:
        await context.close()


async def signalling_url(page: Page) -> str:
    """Where the page's call socket is connected now."""
    return str(await page.evaluate("() => window.pandaCall.sig && window.pandaCall.sig.url"))


async def test_participants_on_different_processes_share_one_call(
    processes: tuple[LiveServer, LiveServer, dict[str, Any]], pages: dict[str, Page]
) -> None:
    a, b, demo = processes
    sid = int(demo["session_id"])
    student, tutor = pages["student"], pages["tutor"]
    errors: list[str] = []
    for page in (student, tutor):
        page.on("pageerror", lambda exc: errors.append(str(exc)))

    await join(student, a.url, sid)  # the room is created on A
    await join(tutor, b.url, sid)  # B redirects the tutor's socket to A
    assert await signalling_url(student) == f"ws://127.0.0.1:{a.port}/ws/sessions/{sid}/call"
    assert await signalling_url(tutor) == f"ws://127.0.0.1:{a.port}/ws/sessions/{sid}/call"
    assert tutor.url.startswith(b.url)  # the page stayed where it was
    await asyncio.gather(
        video_growing(student, "student (on A) receives the tutor's video"),
        video_growing(tutor, "tutor (page on B, media on A) receives the student's video"),
    )

    # A dies. The tutor's page reconnects through B, which takes the room once A's lease lapsed.
    a.stop(signal.SIGKILL)
    await tutor.wait_for_selector('[data-call-state="reconnecting"]', timeout=DEADLINE * 1000)
    await tutor.wait_for_selector('[data-call-state="connected"]', timeout=DEADLINE * 1000)
    assert await signalling_url(tutor) == f"ws://127.0.0.1:{b.port}/ws/sessions/{sid}/call"
    # The student, whose page was on A, comes back through B (as a proxy would send them).
    await join(student, b.url, sid)
    assert await signalling_url(student) == f"ws://127.0.0.1:{b.port}/ws/sessions/{sid}/call"
    await asyncio.gather(
        video_growing(student, "student receives the tutor's video after the fail-over"),
        video_growing(tutor, "tutor receives the student's video after the fail-over"),
    )
    await wait_js(tutor, "() => window.pandaCall.participants.size === 1")
    assert errors == []
