"""Chat in real Chromium: two people talk live, links are safe, receipts, reconnect, history."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.conftest import LiveServer
from tests.helpers import DEFAULT_PASSWORD
from tests.multiproc.helpers import create_users

pytestmark = pytest.mark.timeout(240)
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


async def _logged_in(browser: Browser, server: LiveServer, email: str, viewport: dict) -> Page:
    context: BrowserContext = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on("console", lambda m: _console.append(m.text) if m.type == "error" else None)
    await page.goto(server.url + "/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard")
    return page


_console: list[str] = []


def _shot_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path / "shots"]
    extra = os.environ.get("PANDA_SCREENSHOT_DIR")
    if extra:
        dirs.append(Path(extra))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


async def _shot(page: Page, tmp_path: Path, name: str) -> None:
    for d in _shot_dirs(tmp_path):
        await page.screenshot(path=str(d / f"{name}.png"), full_page=False)


async def _api_post(page: Page, path: str, body: dict) -> dict:
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    resp = await page.request.post(
        page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2] + path,
        data=body,
        headers={"X-CSRF-Token": token or ""},
    )
    assert resp.ok, await resp.text()
    return await resp.json()


async def test_two_people_chat_live(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    _console.clear()
    db_url = f"sqlite+aiosqlite:///{live_server.data_dir / 'panda.sqlite3'}"
    student_user, tutor_user, _admin = await create_users(
        db_url,
        [
            ("student", "sam.student@example.test"),
            ("tutor", "tina.tutor@example.test"),
            ("admin", "ada.admin@example.test"),
        ],
    )
    student = await _logged_in(browser, live_server, student_user.email, DESKTOP)
    tutor = await _logged_in(browser, live_server, tutor_user.email, PHONE)

    await student.goto(live_server.url + "/messages")
    await _shot(student, tmp_path, "messages-empty-desktop")
    conv = await _api_post(student, "/api/conversations", {"user_id": tutor_user.id})
    # Some history first, so there is something to scroll back to.
    for n in range(1, 61):
        await _api_post(
            student, f"/api/conversations/{conv['id']}/messages", {"text": f"Question {n}"}
        )
    url = f"{live_server.url}/messages/{conv['id']}"
    await student.goto(url)
    await tutor.goto(url)
    tutor_log = tutor.locator("[data-chat-messages] li[data-seq]")
    await expect(tutor_log).to_have_count(50)
    # Newest at the bottom; older ones load when scrolling up.
    await tutor.locator("[data-chat-log]").evaluate("el => { el.scrollTop = 0; }")
    await expect(tutor_log).to_have_count(60)
    seqs = await tutor_log.evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == list(range(1, 61))
    await tutor.locator("[data-chat-log]").evaluate("el => { el.scrollTop = el.scrollHeight; }")

    # The student writes: HTML stays text, only the https link is a link.
    text = "See <b>this</b> https://example.org/notes and javascript:alert(1) <script>x()</script>"
    box = student.get_by_label(f"Message to {tutor_user.name}")
    await box.fill(text)
    await box.press("Enter")
    last = tutor.locator("[data-chat-messages] li[data-seq]").last
    await expect(last).to_contain_text("See <b>this</b>", timeout=5000)
    assert await tutor.locator("[data-chat-messages] b, [data-chat-messages] script").count() == 0
    links = last.locator("a")
    await expect(links).to_have_count(1)
    assert await links.get_attribute("href") == "https://example.org/notes"
    assert "noopener" in (await links.get_attribute("rel") or "")
    # The tutor's page is open at the bottom: it marks the message read, the student sees it.
    await expect(student.locator("[data-seen]")).to_be_visible(timeout=5000)

    # The tutor answers from a phone.
    reply = tutor.get_by_label(f"Message to {student_user.name}")
    await reply.fill("Happy to help! Let's book 30 minutes.")
    await tutor.get_by_role("button", name="Send").click()
    await expect(student.locator("[data-chat-messages] li.theirs").last).to_contain_text(
        "Happy to help", timeout=5000
    )
    await _shot(student, tmp_path, "conversation-desktop")
    await _shot(tutor, tmp_path, "conversation-phone")

    # The tutor's connection drops; messages sent meanwhile arrive once it is back, once each.
    await tutor.evaluate("window.pandaLive.drop()")
    for n in range(3):
        await _api_post(
            student, f"/api/conversations/{conv['id']}/messages", {"text": f"While away {n}"}
        )
    await expect(tutor.locator("[data-chat-messages] li[data-seq]").last).to_contain_text(
        "While away 2", timeout=20000
    )
    seqs = await tutor.locator("[data-chat-messages] li[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    assert seqs == sorted(set(seqs)) and seqs[-1] == 65

    # Reporting a message puts it in the admin queue.
    tutor.once("dialog", lambda d: d.accept("Spam"))
    await tutor.locator("[data-chat-messages] li.theirs [data-report]").last.click()
    await expect(tutor.get_by_text("Reported").last).to_be_visible()

    # The list page shows the conversation with its unread count, and updates live.
    await tutor.goto(live_server.url + "/messages")
    await _api_post(student, f"/api/conversations/{conv['id']}/messages", {"text": "One more"})
    badge = tutor.locator(f'[data-unread-for="{conv["id"]}"]')
    await expect(badge).to_be_visible(timeout=5000)
    await expect(badge).to_contain_text("1")
    await _shot(tutor, tmp_path, "messages-phone")
    await student.goto(live_server.url + "/messages")
    await _shot(student, tmp_path, "messages-desktop")

    admin = await _logged_in(browser, live_server, "ada.admin@example.test", DESKTOP)
    await admin.goto(live_server.url + "/admin/chat/reports")
    await expect(admin.get_by_text("While away 2")).to_be_visible()
    await _shot(admin, tmp_path, "admin-reports-desktop")
    await admin.get_by_role("link", name="Read the conversation").click()
    await expect(admin.get_by_text("This access is recorded")).to_be_visible()
    await _shot(admin, tmp_path, "admin-conversation-desktop")
    csp = [m for m in _console if "Content Security Policy" in m or "Refused" in m]
    assert csp == []


async def test_chat_panel_mounts_in_another_page(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{live_server.data_dir / 'panda.sqlite3'}"
    student_user, tutor_user = await create_users(
        db_url, [("student", "pia.student@example.test"), ("tutor", "ted.tutor@example.test")]
    )
    student = await _logged_in(browser, live_server, student_user.email, DESKTOP)
    tutor = await _logged_in(browser, live_server, tutor_user.email, DESKTOP)
    await student.goto(live_server.url + "/messages")
    conv = await _api_post(student, "/api/conversations", {"user_id": tutor_user.id})
    await _api_post(student, f"/api/conversations/{conv['id']}/messages", {"text": "Ready?"})
    # A page that is not the chat page (as the call page would be) mounts the panel.
    await tutor.goto(live_server.url + "/messages")
    await tutor.evaluate(
        """async ([cid, uid]) => {
            const box = document.createElement("div");
            box.id = "panel";
            document.querySelector("main").append(box);
            const { mountChat } = await import("/static/chat/panel.js");
            window.panel = mountChat(box, { conversationId: cid, userId: uid });
        }""",
        [conv["id"], tutor_user.id],
    )
    panel = tutor.locator("#panel")
    await expect(panel.locator("li[data-seq]")).to_have_count(1)
    await expect(panel.locator("li[data-seq]").first).to_contain_text("Ready?")
    await panel.get_by_role("textbox", name="Message").fill("Yes, joining now")
    await panel.get_by_role("textbox", name="Message").press("Enter")
    await expect(panel.locator("li.mine[data-seq]")).to_contain_text("Yes, joining now")
    await student.goto(f"{live_server.url}/messages/{conv['id']}")
    await expect(student.locator("[data-chat-messages] li.theirs").last).to_contain_text(
        "Yes, joining now"
    )
    await _api_post(student, f"/api/conversations/{conv['id']}/messages", {"text": "Great"})
    await expect(panel.locator("li[data-seq]")).to_have_count(3)
    assert await tutor.evaluate("window.panel.seqs()") == [1, 2, 3]
