"""Join-to-first-frame benchmark: a real Chromium participant joining a running call.

Starts the real server (``python -m panda serve``, SQLite in a temporary data directory,
loopback-only ICE) and the demo accounts with a session booked now. The tutor joins once
in headless Chromium (fake camera and microphone) and stays; the student then joins
``--joins`` times (a fresh page each time, leaving in between). Each join is timed from
the click on ``[data-action="join"]`` to the first remote video frame: the first
``requestVideoFrameCallback`` on a ``.remote-video`` (frame decoded and handed to the
compositor), with getStats' ``framesDecoded > 0`` as a cross-check. A trace of the steps
in between (signalling, offer/answer, ICE, DTLS, first packet, first keyframe, keyframe
requests sent) says where the time goes. Prints one JSON object.
Run: python bench/browser_join.py [--joins 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
]
DEADLINE_S = 45.0

# Installed before the call page's own scripts: timestamps (performance.now(), ms) of each
# step of a join, relative to nothing; the orchestrator subtracts the click.
TRACE_JS = r"""
(() => {
  const t = {};
  const mark = (name) => { if (!(name in t)) t[name] = performance.now(); };
  window.__joinTrace = t;
  document.addEventListener("click", (event) => {
    if (event.target.closest && event.target.closest('[data-action="join"]')) {
      mark("click");
      window.__joinClickWall = Date.now();  // one clock for both pages
    }
  }, true);
  // On the publisher's page (flag set by the benchmark): when keyframe requests arrive and
  // keyframes leave, on the wall clock.
  window.__publisherEvents = [];
  const watchPublisher = async (pc, last) => {
    if (pc.signalingState === "closed") return;
    if (window.__watchPublisher) {
      try {
        const report = await pc.getStats();
        report.forEach((s) => {
          if (s.type !== "outbound-rtp" || s.kind !== "video") return;
          const now = Date.now();
          if (last.pli !== undefined && s.pliCount > last.pli) {
            window.__publisherEvents.push({ kind: "pli", at: now });
          }
          if (last.kf !== undefined && s.keyFramesEncoded > last.kf) {
            window.__publisherEvents.push({ kind: "keyframe", at: now });
          }
          last.pli = s.pliCount;
          last.kf = s.keyFramesEncoded;
        });
      } catch (e) { /* closed meanwhile */ }
    }
    setTimeout(() => watchPublisher(pc, last), window.__watchPublisher ? 10 : 100);
  };
  const NativeWS = window.WebSocket;
  window.WebSocket = class extends NativeWS {
    constructor(...args) {
      super(...args);
      if (!("click" in t)) return;  // the page's other sockets, opened before the join
      mark("ws_created");
      this.addEventListener("open", () => mark("ws_open"));
      this.addEventListener("message", (event) => {
        try {
          const msg = JSON.parse(event.data);
          if (msg && typeof msg.type === "string") mark("msg_" + msg.type);
        } catch (e) { /* not ours */ }
      });
    }
  };
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePC {
    constructor(...args) {
      super(...args);
      mark("pc_created");
      window.__joinPc = this;
      this.addEventListener("icegatheringstatechange",
        () => mark("ice_gathering_" + this.iceGatheringState));
      this.addEventListener("iceconnectionstatechange",
        () => mark("ice_" + this.iceConnectionState));
      this.addEventListener("connectionstatechange", () => mark("pc_" + this.connectionState));
      this.addEventListener("track", (event) => mark("track_" + event.track.kind));
      const poll = async () => {
        if (this.signalingState === "closed" || "first_decoded" in t) return;
        try {
          const report = await this.getStats();
          report.forEach((s) => {
            if (s.type !== "inbound-rtp" || s.kind !== "video") return;
            if (s.packetsReceived > 0) mark("first_video_packet");
            if (s.framesReceived > 0) mark("first_frame_received");
            if (s.framesDecoded > 0) {
              mark("first_decoded");
              t.pli_sent = s.pliCount || 0;
              t.fir_sent = s.firCount || 0;
              t.nack_sent = s.nackCount || 0;
            }
          });
        } catch (e) { /* closed meanwhile */ }
        setTimeout(poll, 10);
      };
      poll();
      watchPublisher(this, {});
    }
    async setLocalDescription(...args) {
      const out = await super.setLocalDescription(...args);
      if (this.localDescription) mark("local_" + this.localDescription.type);
      return out;
    }
    async setRemoteDescription(...args) {
      const out = await super.setRemoteDescription(...args);
      if (this.remoteDescription) mark("remote_" + this.remoteDescription.type);
      return out;
    }
  };
  const watch = (video) => {
    if (video.__watched || !video.requestVideoFrameCallback) return;
    video.__watched = true;
    video.requestVideoFrameCallback((now) => mark("first_frame"));
  };
  new MutationObserver(() => {
    document.querySelectorAll("video.remote-video").forEach(watch);
  }).observe(document, { childList: true, subtree: true });
})();
"""

# Steps reported in the breakdown, in the order a join goes through them.
STEPS = ("ws_created", "ws_open", "msg_join", "pc_created", "local_offer", "remote_answer",
         "remote_offer", "local_answer", "ice_gathering_complete", "ice_checking", "ice_connected",
         "pc_connected", "track_video", "publisher_pli", "publisher_keyframe",
         "first_video_packet", "first_frame_received", "first_decoded", "first_frame")


# ---------------------------------------------------------------------- pure logic


def publisher_steps(events: list[dict[str, Any]], click_wall: float) -> dict[str, float]:
    """The first keyframe request the publisher got and its first keyframe after the click,
    in ms after it (both pages' wall clock; ms resolution)."""
    out: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e["at"]):
        name = f"publisher_{event['kind']}"
        if event["at"] >= click_wall and name not in out:
            out[name] = float(event["at"] - click_wall)
    return out


def join_record(trace: dict[str, float], publisher: dict[str, float] | None = None
                ) -> dict[str, Any]:
    """One join from its page trace: each step in ms after the click, and the result.

    ``join_to_first_frame_ms`` is the first video frame callback, or the first getStats
    ``framesDecoded > 0`` when the page had no frame callback; None if neither happened.
    ``publisher``: steps seen on the other participant's page (:func:`publisher_steps`).
    """
    if "click" not in trace:
        raise ValueError("the trace has no click on the join button")
    click = trace["click"]
    merged = {**{name: trace[name] - click for name in STEPS if name in trace},
              **(publisher or {})}
    steps = {name: round(merged[name], 1) for name in STEPS if name in merged}
    first = steps.get("first_frame", steps.get("first_decoded"))
    return {"join_to_first_frame_ms": first, "steps_ms": steps,
            "pli_sent": trace.get("pli_sent"), "nack_sent": trace.get("nack_sent")}


def summarise(joins: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95 of join-to-first-frame, and the median of every step over the joins."""
    times = [j["join_to_first_frame_ms"] for j in joins if j["join_to_first_frame_ms"] is not None]
    medians = {}
    for name in STEPS:
        values = [j["steps_ms"][name] for j in joins if name in j["steps_ms"]]
        if values:
            medians[name] = statistics.median(values)
    return {
        "joins": len(joins),
        "with_first_frame": len(times),
        "join_to_first_frame_ms": {"p50": percentile(times, 50), "p95": percentile(times, 95),
                                   "min": min(times) if times else None,
                                   "max": max(times) if times else None},
        "median_steps_ms": medians,
    }


# ---------------------------------------------------------------------- server and browser

class Server:
    """A real ``python -m panda serve`` on a free loopback port, with its own data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PANDA_")}
        self.env = {**inherited, "PANDA_DATA_DIR": str(data_dir), "PANDA_PORT": str(self.port),
                    "PANDA_HOST": "127.0.0.1", "PANDA_BASE_URL": self.url,
                    "PANDA_SECRET_KEY": secrets.token_hex(32), "PANDA_ICE_LOOPBACK": "1",
                    "PYTHONPATH": str(ROOT), **(env or {})}
        self.log = data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "panda", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True).stdout

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "panda", "serve"], env=self.env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)  # no event to await from another process's socket
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_js(page: Any, predicate: str, limit: float = DEADLINE_S) -> Any:
    """Poll a JS expression until truthy (the page's CSP forbids wait_for_function)."""
    deadline = time.monotonic() + limit
    while True:
        value = await page.evaluate(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.02)


async def login(context: Any, base: str, email: str, password: str) -> None:
    page = await context.new_page()
    await page.goto(base + "/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/dashboard", timeout=15000)
    await page.close()


async def open_call(context: Any, base: str, session_id: int) -> Any:
    """A call page ready to join: idle, preview running, join button visible."""
    page = await context.new_page()
    await page.goto(f"{base}/sessions/{session_id}/call")
    await page.wait_for_selector('[data-call-state="idle"]')
    await page.locator('[data-action="join"]').wait_for(state="visible")
    await wait_js(page, "() => document.querySelector('#preview-video').srcObject !== null")
    return page


async def one_join(context: Any, base: str, session_id: int, tutor: Any) -> dict[str, Any]:
    """The student joins, sees the tutor's first frame, leaves; the join's record."""
    page = await open_call(context, base, session_id)
    try:
        await page.locator('[data-action="join"]').click()
        await wait_js(page, "() => window.__joinTrace && ('first_frame' in window.__joinTrace"
                            " || 'first_decoded' in window.__joinTrace)")
        # the frame callback comes with or right after the decode: give it a moment
        try:
            await wait_js(page, "() => 'first_frame' in window.__joinTrace", limit=2.0)
        except TimeoutError:
            pass
        trace = await page.evaluate("() => ({...window.__joinTrace})")
        click_wall = await page.evaluate("() => window.__joinClickWall")
        events = await tutor.evaluate("() => window.__publisherEvents")
        record = join_record(trace, publisher_steps(events, click_wall))
        await page.locator('[data-action="leave"]').click()
    finally:
        await page.close()
    # the next join starts from the same state: the tutor alone in the call
    await wait_js(tutor, "() => window.pandaCall.participants.size === 0")
    return record


async def run(joins: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="panda-join-bench-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            demo = json.loads(server.cli("demo", "--json"))
            sid = int(demo["session_id"])
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS)
                try:
                    contexts = {}
                    for role in ("tutor", "student"):
                        ctx = await browser.new_context(viewport={"width": 1100, "height": 760})
                        await ctx.add_init_script(TRACE_JS)
                        await login(ctx, server.url, demo[role]["email"], demo[role]["password"])
                        contexts[role] = ctx
                    tutor = await open_call(contexts["tutor"], server.url, sid)
                    await tutor.locator('[data-action="join"]').click()
                    await tutor.wait_for_selector('[data-call-state="connected"]',
                                                  timeout=DEADLINE_S * 1000)
                    await tutor.evaluate("() => { window.__watchPublisher = true; }")
                    records = []
                    for _ in range(joins):
                        records.append(await one_join(contexts["student"], server.url, sid,
                                                      tutor))
                finally:
                    await browser.close()
        finally:
            server.stop()
    return {**summarise(records), "records": records}


def machine() -> dict[str, Any]:
    """What the figures ran on (and how busy it was when they started)."""
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
    return {"cores": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "chromium": version.strip(), "python": sys.version.split()[0]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=10)
    args = parser.parse_args(argv)
    if args.joins < 1:
        parser.error("--joins must be at least 1")
    info = machine()
    result = asyncio.run(run(args.joins))
    print(json.dumps({"machine": info, **result}, indent=1))


if __name__ == "__main__":
    main()
