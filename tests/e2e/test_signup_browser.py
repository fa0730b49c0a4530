"""Real Chromium: sign up -> verification link from the outbox -> log in -> dashboard."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from tests.conftest import LiveServer
from tests.helpers import links_in, mail_body, outbox

PASSWORD = "a sturdy browser passphrase"


async def test_signup_verify_login_dashboard(browser: Browser, live_server: LiveServer) -> None:
    context = await browser.new_context(timezone_id="Europe/Madrid")
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(live_server.url + "/")
    await page.get_by_role("button", name="Sign up", exact=True).click()
    await page.wait_for_url("**/signup")
    # The browser's time zone was preselected by our script.
    await expect(page.get_by_label("Time zone")).to_have_value("Europe/Madrid")
    await page.get_by_label("Teach").check()
    await page.get_by_label("Your name").fill("Bea Browser")
    await page.get_by_label("E-mail").fill("bea@example.test")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url("**/dashboard")
    await expect(page.get_by_role("heading", name="Welcome, Bea Browser")).to_be_visible()
    banner = page.get_by_role("complementary", name="E-mail verification")
    await expect(banner).to_be_visible()
    await expect(page.get_by_text("being reviewed")).to_be_visible()

    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(live_server.url + "/")

    mails = [m for m in outbox(live_server.data_dir) if m["To"] == "bea@example.test"]
    assert len(mails) == 1 and mails[0]["Subject"] == "Confirm your e-mail address"
    link = next(u for u in links_in(mail_body(mails[0])) if "/verify/" in u)
    assert link.startswith(live_server.url + "/verify/")
    await page.goto(link)
    await page.wait_for_url("**/login")
    await expect(page.get_by_text("Your e-mail address is verified")).to_be_visible()

    await page.get_by_label("E-mail").fill("bea@example.test")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard")
    await expect(page.get_by_role("heading", name="Welcome, Bea Browser")).to_be_visible()
    await expect(page.get_by_role("complementary", name="E-mail verification")).to_have_count(0)
    await expect(page.get_by_text("times shown in Europe/Madrid")).to_be_visible()
    subjects = [m["Subject"] for m in outbox(live_server.data_dir)]
    assert "You are verified" in subjects
    assert errors == []
    await context.close()
