"""Two real headless Chromium pages call each other through the relay (loopback only).

A minimal page and websocket live in this test so the relay's browser interop is
checked on its own; the product's call page has its own end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from playwright.async_api import Browser, Page, async_playwright

from panda.media.errors import SignalError
from panda.media.ice import MediaConfig
from panda.media.room import RoomRegistry
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.helpers import free_port
from tests.media.clients import wait_for

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html><html><head><title>relay check</title></head><body>
<script type="module">
const params = new URLSearchParams(location.search);
const ws = new WebSocket(`ws://${location.host}/ws?pid=${params.get("pid")}`);
const pc = new RTCPeerConnection({iceServers: []});
window.pc = pc; window.errors = []; window.offersFromServer = 0; window.tracksInfo = {};
const sources = {};
let makingOffer = false;
const send = (m) => ws.send(JSON.stringify(m));
pc.onicecandidate = (e) => send({type: "ice-candidate",
                                 candidate: e.candidate ? e.candidate.toJSON() : null});
pc.ontrack = (e) => {
  const el = document.createElement(e.track.kind);
  el.autoplay = true; el.muted = false; el.srcObject = new MediaStream([e.track]);
  el.className = "remote-" + e.track.kind; document.body.appendChild(el);
  el.play().catch(() => {});
};
// Perfect negotiation, browser = polite peer: the server's offer wins a collision.
pc.onnegotiationneeded = async () => {
  if (ws.readyState !== WebSocket.OPEN) return;
  try {
    makingOffer = true;
    await pc.setLocalDescription();
    for (const t of pc.getTransceivers()) {
      if (t.sender.track && t.mid !== null) sources[t.mid] = t.sender.track._source;
    }
    send({type: "offer", sdp: pc.localDescription.sdp, sources});
  } finally { makingOffer = false; }
};
// Handle server messages one at a time, in order.
let chain = Promise.resolve();
ws.onmessage = (ev) => { chain = chain.then(() => handle(JSON.parse(ev.data)))
                                      .catch((e) => window.errors.push(String(e))); };
async function handle(msg) {
  if (msg.type === "answer") {
    if (pc.signalingState === "have-local-offer") await pc.setRemoteDescription(msg);
  } else if (msg.type === "offer") {
    // a collision with our own offer rolls it back implicitly (we are the polite peer)
    await pc.setRemoteDescription({type: "offer", sdp: msg.sdp});
    await pc.setLocalDescription();
    window.offersFromServer += 1; window.tracksInfo = msg.tracks;
    send({type: "answer", sdp: pc.localDescription.sdp});
  } else if (msg.type === "error") {
    if (msg.code !== "glare") window.errors.push(msg);
    // our offer was refused: roll back so negotiation can start again
    if (pc.signalingState === "have-local-offer" && msg.code !== "glare") {
      await pc.setLocalDescription({type: "rollback"});
    }
  }
}
ws.onopen = () => { if (pc.getTransceivers().length) pc.onnegotiationneeded(); };
// ?delay=ms holds the camera back, so the server's offer comes first (the glare path)
await new Promise((r) => setTimeout(r, Number(params.get("delay") || 0)));
const stream = await navigator.mediaDevices.getUserMedia(
  {audio: true, video: {width: 640, height: 360}});
for (const track of stream.getTracks()) {
  track._source = track.kind === "audio" ? "microphone" : "camera";
  pc.addTrack(track, stream);
}
window.addScreen = async () => {
  const extra = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
  const track = extra.getVideoTracks()[0]; track._source = "screen";
  window.screenSender = pc.addTrack(track, extra);
};
window.removeScreen = () => pc.removeTrack(window.screenSender);
window.ready = true;
</script></body></html>"""

STATS_JS = """async () => {
  const out = {video: [], audio: [], pair: null};
  const stats = await window.pc.getStats();
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video")
      out.video.push({mid: s.mid, frames: s.framesDecoded || 0, width: s.frameWidth || 0});
    if (s.type === "inbound-rtp" && s.kind === "audio")
      out.audio.push({packets: s.packetsReceived || 0, energy: s.totalAudioEnergy || 0});
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      const local = stats.get(s.localCandidateId), remote = stats.get(s.remoteCandidateId);
      out.pair = [local.address || local.ip, remote.address || remote.ip];
    }
  });
  return out;
}"""


@pytest.fixture
async def relay_server(relay_path: str) -> AsyncIterator[tuple[str, RoomRegistry]]:
    registry = RoomRegistry(MediaConfig(ice_loopback=True, relay_path=relay_path))
    room = registry.get_or_create("chromium")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        pid = request.query["pid"]

        async def send(msg: dict[str, Any]) -> None:
            if not ws.closed:
                await ws.send_json(msg)

        participant = await room.join(pid, name=pid, role="student", send=send)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
            try:
                await participant.handle_signal(json.loads(message.data))
            except SignalError as exc:
                await send({"type": "error", "code": exc.code, "message": exc.message})
        if room.participants.get(pid) is participant:
            await room.leave(pid)
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", registry
    finally:
        await registry.close()
        await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            await instance.close()


async def stats(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(STATS_JS)
    return result


async def wait_growing(page: Page, kind: str, count: int = 1, limit: float = 30) -> None:
    """Wait until ``count`` inbound streams of ``kind`` make progress (frames / energy)."""
    first = await stats(page)

    def progress(before: dict[str, Any], after: dict[str, Any]) -> int:
        if kind == "video":
            old = {v["mid"]: v["frames"] for v in before["video"]}
            return sum(1 for v in after["video"]
                       if v["frames"] > old.get(v["mid"], 0) + 5 and v["width"] >= 320)
        return sum(1 for a, b in zip(before["audio"], after["audio"], strict=False)
                   if b["packets"] > a["packets"] and b["energy"] > a["energy"])

    latest: dict[str, Any] = {}

    async def poll() -> bool:
        nonlocal latest
        latest = await stats(page)
        return progress(first, latest) >= count

    deadline = asyncio.get_running_loop().time() + limit
    while not await poll():
        if asyncio.get_running_loop().time() > deadline:
            info = await page.evaluate(
                "[window.errors, window.offersFromServer, window.pc.signalingState,"
                " window.pc.connectionState, window.pc.getTransceivers().map("
                "t => [t.mid, t.direction, t.currentDirection])]")
            raise AssertionError(f"{kind} not flowing: {first} -> {latest}; page: {info}")
        await asyncio.sleep(0.5)


async def test_two_chromium_pages_through_the_relay(
    relay_server: tuple[str, RoomRegistry], browser: Browser
) -> None:
    base, registry = relay_server
    room = registry.get("chromium")
    assert room is not None
    pages = []
    for pid in ("alice", "bob"):
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{base}/?pid={pid}")
        pages.append(page)
    alice, bob = pages
    for page in pages:
        await wait_growing(page, "video")
        await wait_growing(page, "audio")
        assert await page.evaluate("window.errors") == []
        pair = (await stats(page))["pair"]
        assert pair is not None and pair[1] == "127.0.0.1"
    server_stats = room.stats()
    assert server_stats["alice"]["transport"] == "udp"
    assert server_stats["alice"]["frames_forwarded"] > 0
    assert {p["codec"] for p in server_stats["alice"]["publications"]} == {
        "audio/opus", "video/VP8"}

    # screen share by renegotiation: bob decodes two videos from alice, then one again
    await alice.evaluate("window.addScreen()")
    await wait_for(lambda: any(p.source == "screen" for p in
                               room.participants["alice"].publications.values()),
                   what="screen published")
    await wait_growing(bob, "video", count=2)
    await alice.evaluate("window.removeScreen()")
    await wait_for(lambda: not any(p.source == "screen" for p in
                                   room.participants["alice"].publications.values()),
                   what="screen unpublished")
    tracks = await bob.evaluate("window.tracksInfo")
    await wait_for(lambda: True)
    assert sorted(t["source"] for t in tracks.values()) in (
        ["camera", "microphone"], ["camera", "microphone", "screen"])

    # alice reloads: a new pc replaces the old one and media flows again both ways
    await alice.reload()
    await wait_growing(alice, "video")
    await wait_growing(bob, "video")
    assert await bob.evaluate("window.errors") == []
    assert len(room.participants) == 2
