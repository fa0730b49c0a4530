"""A recording plays in the browser: the combined file seeks to the middle and shows both
participants there; the participants' files play side by side."""

from __future__ import annotations

from playwright.async_api import Browser

from tests.helpers import DEFAULT_PASSWORD
from tests.recordings_support import World, world

__all__ = ["world"]

MIDDLE_FRAME = """async (selector) => {
  const v = document.querySelector(selector);
  if (v.readyState < 1) {
    await new Promise((ok, fail) => {
      v.onloadedmetadata = ok;
      v.onerror = () => fail(v.error.message);
    });
  }
  const duration = v.duration;
  v.currentTime = duration / 2;
  await new Promise((ok) => { v.onseeked = ok; });
  const canvas = document.createElement("canvas");
  canvas.width = v.videoWidth; canvas.height = v.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
  return {duration, time: v.currentTime, width: v.videoWidth,
          left: at(v.videoWidth / 4, v.videoHeight / 2),
          right: at(3 * v.videoWidth / 4, v.videoHeight / 2)};
}"""


def _near(colour: list[int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 45 for a, b in zip(colour, expected, strict=True))


async def test_admin_plays_a_recording_and_seeks_to_the_middle(
    browser: Browser, world: World
) -> None:
    world.seconds = 4.0
    recording = await world.recording()
    base = str(world.client.make_url("/")).rstrip("/")
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{base}/login")
    await page.get_by_label("E-mail").fill(world.admin.email)
    await page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard")

    await page.goto(f"{base}/admin/recordings")
    await page.get_by_role("link", name=str(recording.started_at.year), exact=False).first.click()
    await page.wait_for_url(f"**/recordings/{recording.id}")

    combined = await page.evaluate(MIDDLE_FRAME, '[data-testid="combined-player"]')
    assert 3.8 < combined["duration"] < 4.4
    assert abs(combined["time"] - combined["duration"] / 2) < 0.1
    assert combined["width"] == 320
    assert _near(combined["left"], (200, 30, 30)), combined  # the tutor, on the left
    assert _near(combined["right"], (30, 30, 200)), combined  # the student, on the right

    first = await page.evaluate(MIDDLE_FRAME, '[data-testid="file-player"]')
    assert 3.8 < first["duration"] < 4.4 and first["width"] == 320
    # Playing one participant's file starts the other one in step.
    await page.evaluate("""() => {
        const [a] = document.querySelectorAll('[data-testid="file-player"]');
        a.muted = true;
        return a.play(); }""")
    await page.wait_for_function("""() => {
        const [a, b] = document.querySelectorAll('[data-testid="file-player"]');
        return !b.paused && Math.abs(a.currentTime - b.currentTime) < 0.5; }""")
    assert errors == []
