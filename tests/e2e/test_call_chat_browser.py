"""The chat panel on the call page, in real Chromium: talk while media flows, history kept."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import LiveServer
from tests.e2e.test_call_browser import DEADLINE, audio_growing, join, login, video_growing

pytestmark = pytest.mark.timeout(300)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


async def _shot(page: Page, tmp_path: Path, name: str) -> None:
    dirs = [tmp_path / "shots"]
    if os.environ.get("PANDA_SCREENSHOT_DIR"):
        dirs.append(Path(os.environ["PANDA_SCREENSHOT_DIR"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(d / f"{name}.png"))


async def _person(
    browser: Browser, server: LiveServer, account: dict[str, Any], viewport: dict[str, int]
) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport=viewport)
    page = await login(context, server.url, account["email"], account["password"])
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


async def _chat_ready(page: Page) -> None:
    """Wait until the panel has mounted its conversation (or say why it did not)."""
    try:
        await page.wait_for_selector(
            "[data-call-chat][data-conversation-id] textarea[data-chat-input]",
            state="attached",
            timeout=DEADLINE * 1000,
        )
    except Exception:
        note = await page.locator("[data-call-chat]").inner_text()
        raise AssertionError(f"the chat did not start: {note!r}") from None


async def _say(page: Page, text: str) -> None:
    box = page.locator("[data-call-chat] textarea[data-chat-input]")
    await box.fill(text)
    await box.press("Enter")


async def test_call_chat_panel_while_media_flows(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    demo = json.loads(live_server.run_cli("demo", "--json"))
    sid, url = demo["session_id"], live_server.url
    (student, s_errors), (tutor, t_errors) = await asyncio.gather(
        _person(browser, live_server, demo["student"], DESKTOP),
        _person(browser, live_server, demo["tutor"], DESKTOP),
    )
    await asyncio.gather(join(student, url, sid), join(tutor, url, sid))
    await asyncio.gather(
        video_growing(student, "student receives tutor video"),
        video_growing(tutor, "tutor receives student video"),
    )
    # On a wide screen the chat sits beside the call, ready to use.
    for page in (student, tutor):
        await _chat_ready(page)
        await expect(page.locator("[data-call-chat]")).to_be_visible()
        await expect(page.locator("[data-chat-toggle]")).to_have_attribute("aria-expanded", "true")
        await expect(page.locator("[data-call-chat] textarea[data-chat-input]")).to_be_visible()

    await _say(student, "Can you see my screen? https://example.test/notes")
    their = tutor.locator("[data-call-chat] li.theirs[data-seq]")
    await expect(their.last).to_contain_text("Can you see my screen?", timeout=DEADLINE * 1000)
    await expect(their.last.get_by_role("link")).to_have_attribute(
        "href", "https://example.test/notes"
    )
    await _say(tutor, "Yes, <b>perfectly</b>")
    await expect(
        student.locator("[data-call-chat] li.theirs[data-seq] .bubble").last
    ).to_have_text("Yes, <b>perfectly</b>", timeout=DEADLINE * 1000)
    # The call went on meanwhile.
    assert await student.get_attribute("#call", "data-call-state") == "connected"
    await asyncio.gather(
        video_growing(tutor, "tutor video after chatting"),
        audio_growing(student, "student hears the tutor after chatting"),
    )
    await _shot(student, tmp_path, "call-chat-desktop")

    # Closed, the panel counts what arrives; opened again, the count clears.
    await tutor.locator("[data-chat-close]").click()
    await expect(tutor.locator("[data-call-chat]")).to_be_hidden()
    await _say(student, "One more thing")
    await expect(tutor.locator("[data-chat-unread]")).to_have_text("1")
    await tutor.locator("[data-chat-toggle]").click()
    await expect(tutor.locator("[data-chat-unread]")).to_be_hidden()
    await expect(their.last).to_contain_text("One more thing")
    assert await tutor.get_attribute("#call", "data-call-state") == "connected"

    # The same conversation as the chat pages, with its history.
    conv = await student.get_attribute("[data-call-chat]", "data-conversation-id")
    history = await student.context.new_page()
    await history.goto(f"{url}/messages/{conv}")
    texts = await history.locator("[data-chat-messages] li[data-seq] .bubble").all_inner_texts()
    assert texts[-3:] == [
        "Can you see my screen? https://example.test/notes",
        "Yes, <b>perfectly</b>",
        "One more thing",
    ]
    seqs = await history.locator("[data-chat-messages] li[data-seq]").evaluate_all(
        "els => els.map((e) => Number(e.dataset.seq))"
    )
    assert seqs == sorted(set(seqs))
    await history.close()
    assert s_errors == [] and t_errors == []

    # On a phone the chat is an overlay opened from the header, over the running call.
    phone, p_errors = await _person(browser, live_server, demo["student"], PHONE)
    await join(phone, url, sid)
    await expect(phone.locator("[data-call-chat]")).to_be_hidden()
    await phone.locator("[data-chat-toggle]").click()
    await expect(phone.locator("[data-call-chat]")).to_be_visible()
    await expect(phone.locator("[data-call-chat] li[data-seq]").last).to_contain_text(
        "One more thing"
    )
    await _shot(phone, tmp_path, "call-chat-phone")
    await phone.keyboard.press("Escape")
    await expect(phone.locator("[data-call-chat]")).to_be_hidden()
    assert await phone.get_attribute("#call", "data-call-state") == "connected"
    assert p_errors == []


async def test_call_page_works_when_the_chat_cannot(
    browser: Browser, live_server: LiveServer
) -> None:
    demo = json.loads(live_server.run_cli("demo", "--json"))
    page, errors = await _person(browser, live_server, demo["student"], DESKTOP)
    # The conversation API fails: the pre-join screen and the join still work.
    await page.route(
        "**/api/conversations",
        lambda route: route.fulfill(status=503, json={"error": "Chat is resting."}),
    )
    await join(page, live_server.url, demo["session_id"])
    await expect(page.locator("[data-chat-note]")).to_have_text("Chat is resting.")
    assert [e for e in errors if "503" not in e] == []
