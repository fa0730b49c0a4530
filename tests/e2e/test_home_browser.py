"""The landing page renders in a real browser and leads to sign-up."""

from __future__ import annotations

from playwright.async_api import Browser

from tests.conftest import LiveServer


async def test_home_page_in_chromium(browser: Browser, live_server: LiveServer) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(live_server.url + "/")
    assert "Panda Professor" in await page.title()
    await page.get_by_role("link", name="Log in").click()
    await page.wait_for_url("**/login")
    assert await page.get_by_label("E-mail").is_visible()
    assert errors == []
