"""Two real headless Chromium participants in a call through the real server and relay.

Media is proven with each page's RTCPeerConnection.getStats(), polled with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.conftest import LiveServer

STATS_JS = """
async () => {
  const call = window.pandaCall;
  const pc = call && call.peer && call.peer.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  const out = { state: call.state, pc: pc.connectionState, video: [], audio: [], pair: null };
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.video.push({ mid: s.mid, frames: s.framesDecoded || 0, width: s.frameWidth || 0 });
    }
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.audio.push({
        mid: s.mid, packets: s.packetsReceived || 0, energy: s.totalAudioEnergy || 0 });
    }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      if (pair) {
        const l = byId.get(pair.localCandidateId) || {};
        const r = byId.get(pair.remoteCandidateId) || {};
        out.pair = { local: l.address, remote: r.address, protocol: l.protocol };
      }
    }
  });
  out.remoteVideos = [...document.querySelectorAll("video.remote-video")].map((v) => ({
    source: v.dataset.source, playing: !v.paused && v.readyState >= 2, width: v.videoWidth }));
  out.audioPlaying = [...document.querySelectorAll("audio.remote-audio")]
    .some((a) => !a.paused && a.srcObject);
  return out;
}
"""
DEADLINE = 45.0
POLL = 0.25


async def stats(page: Page) -> dict[str, Any]:
    """One getStats() snapshot of the page's call ({} before it has a peer connection)."""
    return await page.evaluate(STATS_JS) or {}


async def until(
    page: Page, test: Callable[[dict[str, Any]], bool], what: str, limit: float = DEADLINE
) -> dict[str, Any]:
    """Poll the page's stats until `test` holds; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = await stats(page)
        if last and test(last):
            return last
        await asyncio.sleep(POLL)
    raise AssertionError(f"timed out waiting for {what}; last stats: {json.dumps(last)[:2000]}")


def total(items: list[dict[str, Any]], key: str) -> float:
    return float(sum(i[key] for i in items))


def best_video(snapshot: dict[str, Any]) -> dict[str, Any]:
    return max(snapshot.get("video") or [{"frames": 0, "width": 0}], key=lambda v: v["frames"])


async def video_growing(
    page: Page, what: str, limit: float = DEADLINE, min_width: int = 320
) -> None:
    """Some inbound video decodes frames, keeps decoding, and is at least `min_width` wide."""
    first = await until(page, lambda s: best_video(s)["frames"] > 0, f"{what}: first frames", limit)
    start = best_video(first)["frames"]
    await until(
        page,
        lambda s: best_video(s)["frames"] > start + 10 and best_video(s)["width"] >= min_width,
        f"{what}: frames growing at >= {min_width}px",
        limit,
    )


async def audio_growing(page: Page, what: str, limit: float = DEADLINE) -> None:
    """Audio packets arrive and carry energy while a playing element holds the remote track."""
    first = await until(
        page,
        lambda s: total(s["audio"], "packets") > 0 and s.get("audioPlaying"),
        f"{what}: audio playing",
        limit,
    )
    packets, energy = total(first["audio"], "packets"), total(first["audio"], "energy")
    await until(
        page,
        lambda s: (
            total(s["audio"], "packets") > packets + 50 and total(s["audio"], "energy") > energy
        ),
        f"{what}: audio packets and energy growing",
        limit,
    )


async def wait_js(page: Page, predicate: str, limit: float = DEADLINE) -> None:
    """Poll a JS predicate (page.wait_for_function would need eval, which our CSP forbids)."""
    deadline = time.monotonic() + limit
    while not await page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await asyncio.sleep(POLL)


async def login(context: BrowserContext, base: str, email: str, password: str) -> Page:
    page = await context.new_page()
    await page.goto(base + "/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard", timeout=15000)
    return page


async def join(page: Page, base: str, session_id: int) -> None:
    await page.goto(f"{base}/sessions/{session_id}/call")
    await page.wait_for_selector('[data-call-state="idle"]')
    button = page.locator('[data-action="join"]')
    await button.wait_for(state="visible")
    await wait_js(page, "() => document.querySelector('#preview-video').srcObject !== null")
    await button.click()
    await page.wait_for_selector('[data-call-state="connected"]', timeout=DEADLINE * 1000)


@pytest.fixture
def demo(live_server: LiveServer) -> dict[str, Any]:
    """Demo accounts and a session booked now on the live server."""
    return json.loads(live_server.run_cli("demo", "--json"))


@pytest.fixture
async def pair(
    browser: Browser, live_server: LiveServer, demo: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """Student and tutor, each in their own browser context, logged in (not yet joined)."""
    contexts = []
    pages = {}
    for role in ("student", "tutor"):
        context = await browser.new_context(viewport={"width": 1100, "height": 760})
        contexts.append(context)
        pages[role] = await login(
            context, live_server.url, demo[role]["email"], demo[role]["password"]
        )
    errors: list[str] = []
    for page in pages.values():
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield {"pages": pages, "demo": demo, "errors": errors, "server": live_server}
    for context in contexts:
        await context.close()


async def _both_join(pair: dict[str, Any]) -> tuple[Page, Page]:
    student, tutor = pair["pages"]["student"], pair["pages"]["tutor"]
    sid = pair["demo"]["session_id"]
    url = pair["server"].url
    await asyncio.gather(join(student, url, sid), join(tutor, url, sid))
    return student, tutor


async def test_call_media_mute_camera_and_screen(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    # Both directions carry video and audible audio.
    await asyncio.gather(
        video_growing(student, "student receives tutor video"),
        video_growing(tutor, "tutor receives student video"),
        audio_growing(student, "student hears tutor"),
        audio_growing(tutor, "tutor hears student"),
    )
    snap = await stats(tutor)
    assert snap["pair"] == {"local": "127.0.0.1", "remote": "127.0.0.1", "protocol": "udp"}
    assert [v["source"] for v in snap["remoteVideos"]] == ["camera"]
    await tutor.locator("details.connection-details summary").click()
    # The details panel fills in from the next stats poll: wait for it, then check.
    await wait_js(
        tutor, "document.querySelector('[data-detail=\"transport\"]')?.textContent.trim() !== '–'"
    )
    assert await tutor.locator('[data-detail="transport"]').inner_text() == "UDP"

    # Mute: the tutor's received audio energy stays flat while packets keep coming.
    await student.click('[data-action="mute"]')
    assert await student.get_attribute('[data-action="mute"]', "aria-pressed") == "true"
    await tutor.wait_for_selector(".toasts li:has-text('muted')")
    settle = await stats(tutor)
    await until(
        tutor,
        lambda s: total(s["audio"], "packets") > total(settle["audio"], "packets") + 25,
        "packets after mute settles",
    )
    base = await stats(tutor)
    after = await until(
        tutor,
        lambda s: total(s["audio"], "packets") > total(base["audio"], "packets") + 100,
        "two seconds of muted audio packets",
    )
    assert total(after["audio"], "energy") - total(base["audio"], "energy") < 1e-6
    await student.click('[data-action="mute"]')
    await audio_growing(tutor, "tutor hears student again after unmute")

    # Camera off: frames from the student's camera (nearly) stop.
    await student.click('[data-action="camera"]')
    await tutor.wait_for_selector(".camera-off:not([hidden])")
    settle = await stats(tutor)
    await until(
        tutor,
        lambda s: total(s["audio"], "packets") > total(settle["audio"], "packets") + 25,
        "packets after camera off settles",
    )
    base, t0 = await stats(tutor), time.monotonic()
    after = await until(
        tutor,
        lambda s: total(s["audio"], "packets") > total(base["audio"], "packets") + 150,
        "three seconds with the camera off",
    )
    rate = (best_video(after)["frames"] - best_video(base)["frames"]) / (time.monotonic() - t0)
    assert rate < 2, f"{rate:.1f} frames/s still decoded with the camera off"
    await student.click('[data-action="camera"]')
    await video_growing(tutor, "tutor sees the camera again")

    # Screen share arrives as an extra decoded video.
    await student.click('[data-action="screen"]')
    await until(
        tutor,
        lambda s: any(v["source"] == "screen" and v["playing"] for v in s["remoteVideos"]),
        "a playing screen-share video",
    )
    snap = await until(
        tutor,
        lambda s: len([v for v in s["video"] if v["frames"] > 5]) >= 2,
        "two decoded inbound videos (camera and screen)",
    )
    assert len(snap["remoteVideos"]) == 2
    await student.click('[data-action="screen"]')
    await until(
        tutor,
        lambda s: [v["source"] for v in s["remoteVideos"]] == ["camera"],
        "the screen-share video removed after stopping",
    )
    assert pair["errors"] == []


async def test_reload_comes_back_with_media(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    await video_growing(tutor, "tutor receives student video")
    before = best_video(await stats(tutor))["frames"]
    t0 = time.monotonic()
    await student.reload()
    await student.wait_for_selector('[data-call-state="idle"]')
    await student.click('[data-action="join"]')
    await student.wait_for_selector('[data-call-state="connected"]', timeout=DEADLINE * 1000)
    # The tutor receives the student's new camera track (new inbound stream) and decodes it.
    await until(
        tutor,
        lambda s: best_video(s)["frames"] > 10 and best_video(s)["frames"] != before,
        "tutor decodes the reloaded student's video",
        limit=30,
    )
    await video_growing(student, "reloaded student receives tutor video", limit=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 30, f"back with media after {elapsed:.1f} s"
    assert await tutor.get_attribute("#call", "data-call-state") == "connected"


async def test_lost_connection_recovers_without_reload(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    await video_growing(student, "student receives tutor video")
    # Drop the peer connection and the socket under the page, as a network change would.
    await student.evaluate("window.pandaCall.peer.pc.close(); window.pandaCall.sig.ws.close()")
    await student.wait_for_selector('[data-call-state="reconnecting"]', timeout=10000)
    await student.wait_for_selector('[data-call-state="connected"]', timeout=DEADLINE * 1000)
    await video_growing(student, "student receives tutor video after recovery", limit=30)
    await video_growing(tutor, "tutor receives student video after recovery", limit=30)


async def test_server_restart_is_survived(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    await video_growing(tutor, "tutor receives student video")
    server: LiveServer = pair["server"]
    server.stop()
    await student.wait_for_selector('[data-call-state="reconnecting"]', timeout=15000)
    server.start()
    back = time.monotonic()  # the server answers /healthz again
    for page in (student, tutor):
        await page.wait_for_selector('[data-call-state="connected"]', timeout=DEADLINE * 1000)
    # Frames decoded on the pages' new peer connections, on both sides.
    await asyncio.gather(
        *(
            until(page, lambda s: s.get("pc") == "connected" and best_video(s)["frames"] > 5,
                  f"{name} decodes video after the restart", limit=40)
            for name, page in (("student", student), ("tutor", tutor))
        )
    )
    elapsed = time.monotonic() - back
    print(f"both pages back with media {elapsed:.1f} s after the server was up again")
    assert elapsed < 10, f"back with media after {elapsed:.1f} s"
    await asyncio.gather(
        video_growing(student, "student video after restart", limit=40),
        video_growing(tutor, "tutor video after restart", limit=40),
    )


async def test_logging_out_elsewhere_ends_the_call_page(pair: dict[str, Any]) -> None:
    student = pair["pages"]["student"]
    url = pair["server"].url
    await join(student, url, pair["demo"]["session_id"])
    # The same browser logs out in another tab: the call's socket is closed with its session,
    # and the call page goes to the login page instead of reconnecting.
    other = await student.context.new_page()
    await other.goto(url + "/dashboard")
    await other.get_by_role("button", name="Log out").click()
    await other.wait_for_url("**/", timeout=15000)
    await student.wait_for_url("**/login?next=*", timeout=15000)
    assert f"/sessions/{pair['demo']['session_id']}/call" in student.url.replace("%2F", "/")


async def test_outsider_is_refused(
    browser: Browser, live_server: LiveServer, demo: dict[str, Any]
) -> None:
    script = (
        "import asyncio\n"
        "from panda.config import Settings\n"
        "from panda.store.db import create_engine, create_sessionmaker\n"
        "from panda.store.users import create_user\n"
        "async def main():\n"
        "    engine = create_engine(Settings.from_env().database_url)\n"
        "    async with create_sessionmaker(engine)() as db:\n"
        "        await create_user(db, email='outsider@example.test', name='Outsider',\n"
        "            password='correct horse battery staple', role='student', verified=True)\n"
        "        await db.commit()\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=live_server.env, cwd=str(live_server.env["PYTHONPATH"])
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    context = await browser.new_context()
    try:
        page = await login(
            context, live_server.url, "outsider@example.test", "correct horse battery staple"
        )
        resp = await page.goto(f"{live_server.url}/sessions/{demo['session_id']}/call")
        assert resp is not None and resp.status == 403
        assert "Only the student and the tutor" in await page.content()
        assert await page.locator('[data-action="join"]').count() == 0
        opened = await page.evaluate(
            """(path) => new Promise((resolve) => {
                const ws = new WebSocket(`ws://${location.host}${path}`);
                ws.onopen = () => resolve("open");
                ws.onclose = () => resolve("closed");
                setTimeout(() => resolve("timeout"), 10000);
            })""",
            f"/ws/sessions/{demo['session_id']}/call",
        )
        assert opened == "closed"
    finally:
        await context.close()


DENY_DEVICES_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""


async def test_denied_devices_join_receive_only(
    browser: Browser, live_server: LiveServer, demo: dict[str, Any]
) -> None:
    sid = demo["session_id"]
    contexts = []
    try:
        student_ctx = await browser.new_context()
        contexts.append(student_ctx)
        await student_ctx.add_init_script(DENY_DEVICES_JS)
        student = await login(
            student_ctx, live_server.url, demo["student"]["email"], demo["student"]["password"]
        )
        tutor_ctx = await browser.new_context()
        contexts.append(tutor_ctx)
        tutor = await login(
            tutor_ctx, live_server.url, demo["tutor"]["email"], demo["tutor"]["password"]
        )
        await join(tutor, live_server.url, sid)
        await student.goto(f"{live_server.url}/sessions/{sid}/call")
        problems = student.locator("[data-device-problems]")
        await problems.wait_for(state="visible")
        text = await problems.inner_text()
        assert "blocked" in text and "still join to watch and listen" in text
        await student.click('[data-action="join"]')
        await student.wait_for_selector('[data-call-state="connected"]')
        assert await student.get_attribute('[data-action="mute"]', "aria-pressed") == "true"
        await asyncio.gather(
            video_growing(student, "receive-only student sees the tutor"),
            audio_growing(student, "receive-only student hears the tutor"),
        )
        await tutor.wait_for_selector("[data-stage-empty-text]:has-text('without a camera')")
    finally:
        for context in contexts:
            await context.close()


async def test_hostile_messages_and_ending_the_call(pair: dict[str, Any]) -> None:
    student, tutor = await _both_join(pair)
    await video_growing(tutor, "tutor receives student video")
    errors: list[str] = []
    four = asyncio.Event()

    def on_console(message: Any) -> None:
        if "call error" in message.text:
            errors.append(message.text)
            if len(errors) >= 4:
                four.set()

    student.on("console", on_console)
    await student.evaluate(
        """() => {
          const sig = window.pandaCall.sig;
          sig.send({ type: "offer", sdp: "garbage", sources: {} });
          sig.send({ type: "dance" });
          sig.send({ type: "answer", sdp: "v=0 " + "x".repeat(70000) });
          sig.ws.send("not json");
        }"""
    )
    await asyncio.wait_for(four.wait(), 20)
    codes = sorted(e.split()[2] for e in errors)
    assert codes == ["bad-message", "bad-sdp", "too-large", "unknown-type"], errors
    # The call carries on in both directions.
    await video_growing(tutor, "tutor still receives student video", limit=20)
    await video_growing(student, "student still receives tutor video", limit=20)
    assert await student.get_attribute("#call", "data-call-state") == "connected"
    # The tutor ends it for everyone; coming back shows the ended page.
    await tutor.click('[data-action="end"]')
    await student.wait_for_selector('[data-call-state="ended"]', timeout=15000)
    await tutor.wait_for_selector('[data-call-state="ended"]', timeout=15000)
    await student.reload()
    assert await student.get_attribute("#call", "data-call-state") == "ended"
    assert await student.locator('[data-action="join"]').is_hidden()
