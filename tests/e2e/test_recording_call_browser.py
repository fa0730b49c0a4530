"""Recording a real call between two Chromium participants: the tutor's record button, the
indicator both see, the files, the combined file, and playing it back in the recording page."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Page

from tests.conftest import LiveServer
from tests.e2e.test_call_browser import _both_join, demo, pair, wait_js

__all__ = ["demo", "pair"]


@pytest.fixture
def live_server(live_server_factory: Any) -> LiveServer:
    """The server, with small combined files so this test stays quick."""
    server: LiveServer = live_server_factory(PANDA_RECORDING_COMBINED_SIZE="320x180",
                                             PANDA_RECORDING_COMBINED_FPS="5")
    return server

DEADLINE = 90.0
API_JS = """async (path) => {
  const r = await fetch(path, {credentials: "same-origin"});
  return {status: r.status, body: await r.json()};
}"""
INDICATOR_JS = "() => !document.querySelector('[data-recording-indicator]').hidden"
MIDDLE_FRAME_JS = """async () => {
  const v = document.querySelector('[data-testid="combined-player"]');
  if (v.readyState < 1) await new Promise((ok) => { v.onloadedmetadata = ok; });
  v.currentTime = v.duration / 2;
  await new Promise((ok) => { v.onseeked = ok; });
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const x = c.getContext("2d");
  x.drawImage(v, 0, 0);
  const spread = (x0) => {
    const d = x.getImageData(x0, 0, c.width / 2, c.height).data;
    let lo = 255, hi = 0;
    for (let i = 0; i < d.length; i += 4 * 97) {
      lo = Math.min(lo, d[i + 1]);
      hi = Math.max(hi, d[i + 1]);
    }
    return hi - lo;
  };
  return {duration: v.duration, time: v.currentTime, left: spread(0), right: spread(c.width / 2)};
}"""


async def _api(page: Page, path: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(API_JS, path)
    return result


async def _until_api(page: Page, path: str, test: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = await _api(page, path)
        if test(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {result}")
        await asyncio.sleep(0.5)


async def test_tutor_records_a_call_and_plays_it_back(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    assert await tutor.locator('[data-action="record"]').count() == 1
    assert await student.locator('[data-action="record"]').count() == 0
    assert not await tutor.evaluate(INDICATOR_JS)

    await tutor.locator('[data-action="record"]').click()
    await asyncio.gather(wait_js(tutor, INDICATOR_JS), wait_js(student, INDICATOR_JS))
    listed = await _until_api(
        tutor, "/api/recordings",
        lambda r: r["body"].get("total") == 1, "the recording to be listed")
    recording_id = listed["body"]["recordings"][0]["id"]
    assert listed["body"]["recordings"][0]["status"] == "recording"
    # Let a few seconds of both participants reach the files.
    directory = pair["server"].data_dir / "recordings"
    deadline = time.monotonic() + DEADLINE
    while sum(p.stat().st_size for p in directory.rglob("*-main-*.webm")) < 150_000:
        assert time.monotonic() < deadline, "recorded files do not grow"
        await asyncio.sleep(0.5)

    await tutor.locator('[data-action="record"]').click()
    hidden = "() => document.querySelector('[data-recording-indicator]').hidden"
    await asyncio.gather(wait_js(tutor, hidden), wait_js(student, hidden))

    done = await _until_api(
        tutor, f"/api/recordings/{recording_id}",
        lambda r: r["body"].get("combined", {}).get("status") in ("ready", "failed"),
        "the combined file")
    body = done["body"]
    assert body["status"] == "ready" and body["combined"]["status"] == "ready", body
    assert len(body["files"]) == 2 and body["duration_seconds"] > 1.5, body
    assert {f["source"] for f in body["files"]} == {"main"}

    # The student cannot see it (the default setting), the tutor plays it.
    assert (await _api(student, f"/api/recordings/{recording_id}"))["status"] == 403
    await tutor.goto(f"{pair['server'].url}/recordings/{recording_id}")
    frame = await tutor.evaluate(MIDDLE_FRAME_JS)
    assert frame["duration"] > 1.5 and abs(frame["time"] - frame["duration"] / 2) < 0.2
    # Both halves show a moving camera picture (Chromium's fake camera), not the background.
    assert frame["left"] > 30 and frame["right"] > 30, frame
    assert pair["errors"] == []
