"""In real Chromium: a student finds a tutor and requests a slot, the tutor accepts, and both
dashboards show the session. Also saves screenshots of the marketplace pages when asked."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.conftest import LiveServer

SHOTS = os.environ.get("PANDA_SCREENSHOTS")  # a folder: save desktop and phone screenshots


async def _login(
    browser: Browser, server: LiveServer, email: str, password: str, **ctx: object
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(**ctx)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.goto(server.url + "/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard")
    return context, page


def _shot_path(name: str) -> str:
    folder = Path(SHOTS or ".")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{name}.png")


async def _shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=_shot_path(name), full_page=True)


async def test_search_request_accept_dashboards(browser: Browser, live_server: LiveServer) -> None:
    logins = json.loads(live_server.run_cli("demo", "--json"))
    errors: list[str] = []
    s_ctx, student = await _login(
        browser, live_server, logins["student"]["email"], logins["student"]["password"]
    )
    student.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await student.goto(live_server.url + "/tutors")
    await student.get_by_label("Subject").select_option(label="Algebra")
    await student.get_by_role("button", name="Search").click()
    await student.wait_for_url("**/tutors?*")
    await _shot(student, "search-desktop")
    await student.get_by_role("link", name="Tomás Tutor").click()
    await expect(student.get_by_role("heading", name="Next free slots")).to_be_visible()
    await _shot(student, "profile-desktop")
    await student.locator("a.slot").first.click()
    await expect(student.get_by_text("may be recorded")).to_be_visible()
    await student.get_by_label("Subject").select_option("Algebra")
    await student.get_by_label(re.compile("What would you like")).fill("Quadratic equations")
    await _shot(student, "book-desktop")
    await student.get_by_role("button", name="Send request").click()
    await student.wait_for_url(re.compile(r".*/bookings/\d+$"))
    booking_path = "/bookings/" + student.url.rsplit("/", 1)[1]
    await expect(student.locator(".badge", has_text="pending")).to_be_visible()

    t_ctx, tutor = await _login(
        browser, live_server, logins["tutor"]["email"], logins["tutor"]["password"]
    )
    tutor.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await expect(tutor.get_by_role("heading", name="Requests to answer")).to_be_visible()
    await _shot(tutor, "dashboard-tutor-desktop")
    await tutor.locator(f"a[href='{booking_path}']", has_text="Answer").click()
    await tutor.get_by_role("button", name="Accept").click()
    await expect(tutor.locator(".badge", has_text="scheduled")).to_be_visible()
    await tutor.goto(live_server.url + "/dashboard")
    upcoming = tutor.locator("section", has=tutor.get_by_role("heading", name="Upcoming sessions"))
    await expect(upcoming.locator(f"a[href='{booking_path}']")).to_be_visible()

    # The student's open tab hears about the acceptance without reloading (live push).
    await expect(student.locator("#nav-notifications-badge .nav-badge")).to_be_visible(
        timeout=20000
    )
    await student.goto(live_server.url + "/dashboard")
    upcoming = student.locator(
        "section", has=student.get_by_role("heading", name="Upcoming sessions")
    )
    await expect(upcoming.locator(f"a[href='{booking_path}']")).to_be_visible()
    await expect(upcoming.get_by_role("button", name=re.compile("^Join")).first).to_be_visible()
    await _shot(student, "dashboard-student-desktop")
    if SHOTS:
        for path, name in (
            ("/calendar", "calendar"),
            ("/calendar?view=month", "calendar-month"),
            (booking_path, "booking"),
            ("/notifications", "notifications"),
            ("/questions", "questions"),
            ("/bookings", "bookings"),
        ):
            await student.goto(live_server.url + path)
            await _shot(student, f"{name}-desktop")
        for path, name in (
            ("/tutor/availability", "availability"),
            ("/tutor/profile", "tutor-profile-edit"),
        ):
            await tutor.goto(live_server.url + path)
            await _shot(tutor, f"{name}-desktop")
        a_ctx, admin = await _login(
            browser, live_server, logins["admin"]["email"], logins["admin"]["password"]
        )
        for path, name in (
            ("/admin/analytics", "admin-analytics"),
            ("/admin/sessions", "admin-sessions"),
        ):
            await admin.goto(live_server.url + path)
            await _shot(admin, f"{name}-desktop")
        await a_ctx.close()
        p_ctx, phone = await _login(
            browser,
            live_server,
            logins["student"]["email"],
            logins["student"]["password"],
            viewport={"width": 390, "height": 844},
            is_mobile=True,
            has_touch=True,
            device_scale_factor=2,
        )
        for path, name in (
            ("/tutors", "search"),
            ("/dashboard", "dashboard-student"),
            ("/calendar", "calendar"),
            (booking_path, "booking"),
        ):
            await phone.goto(live_server.url + path)
            await _shot(phone, f"{name}-phone")
        await phone.goto(live_server.url + "/tutors")
        await phone.get_by_role("link", name="Tomás Tutor").click()
        await _shot(phone, "profile-phone")
        await p_ctx.close()
    await s_ctx.close()
    await t_ctx.close()
    assert errors == []
