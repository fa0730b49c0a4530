"""Network loss: one participant's traffic is blocked for 10 s, then allowed again; media must
come back on both sides within 3 s, without a reload (issue #6). A 3 s outage, which the
connection usually survives, must heal as fast.

Everything runs in network namespaces this test creates (`unshare -n`), never on the host's
network. The hub namespace holds the server and the tutor's Chromium; the student's Chromium
runs in a second namespace behind a veth pair (10.77.1.2 <-> 10.77.1.1). The outage is an
nftables rule in each namespace that drops every packet arriving over the veth pair, so
neither side gets an error: packets simply vanish, as on a dead link.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HUB_ADDR = "10.77.1.1"
LEAF_ADDR = "10.77.1.2"
HUB_IF = "ploss0"
LEAF_IF = "ploss1"
OUTAGE_SECONDS = 10.0
# Issue #6: media on both sides resumes within 3 s of the network returning.
RECOVERY_LIMIT = 3.0

# Per page: a counter for each inbound stream that only grows; keys name the peer connection
# too, so a replacement connection (whose counters restart at 0) counts as new streams.
PROGRESS_JS = """
async () => {
  const call = window.pandaCall;
  const pc = call && call.peer && call.peer.pc;
  if (!pc) return { state: call ? call.state : null, video: {}, audio: {} };
  if (!call.peer.testId) call.peer.testId = (window.testPeers = (window.testPeers || 0) + 1);
  const out = { state: call.state, peers: window.testPeers, video: {}, audio: {} };
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    const key = `${call.peer.testId}/${s.id}`;
    if (s.kind === "video") out.video[key] = s.framesDecoded || 0;
    if (s.kind === "audio") out.audio[key] = s.packetsReceived || 0;
  });
  return out;
}
"""


def _run(*cmd: str, netns_pid: int | None = None) -> None:
    if netns_pid is not None:
        cmd = ("nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", *cmd)
    subprocess.run(cmd, check=True, capture_output=True)


class Leaf:
    """A second network namespace (held by a sleeping process) wired to ours by veth."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.proc.pid}/ns/net") == own:
            if time.monotonic() > deadline:
                raise RuntimeError("the leaf namespace did not appear")
            time.sleep(0.01)
        self.pid = self.proc.pid
        _run("ip", "link", "add", HUB_IF, "type", "veth", "peer", "name", LEAF_IF)
        _run("ip", "link", "set", LEAF_IF, "netns", str(self.pid))
        _run("ip", "addr", "add", f"{HUB_ADDR}/24", "dev", HUB_IF)
        _run("ip", "link", "set", HUB_IF, "up")
        for cmd in (
            ("ip", "link", "set", "lo", "up"),
            ("ip", "addr", "add", f"{LEAF_ADDR}/24", "dev", LEAF_IF),
            ("ip", "link", "set", LEAF_IF, "up"),
            ("ip", "route", "add", "default", "via", HUB_ADDR),
        ):
            _run(*cmd, netns_pid=self.pid)

    def block(self) -> None:
        """Drop everything that arrives over the veth pair, on both ends."""
        for interface, pid in ((HUB_IF, None), (LEAF_IF, self.pid)):
            _run(
                "nft",
                f"add table inet panda_loss; add chain inet panda_loss input "
                f"{{ type filter hook input priority 0; policy accept; }}; "
                f'add rule inet panda_loss input iifname "{interface}" drop',
                netns_pid=pid,
            )

    def unblock(self) -> None:
        for pid in (None, self.pid):
            _run("nft", "delete table inet panda_loss", netns_pid=pid)

    def chromium(self, folder: Path) -> str:
        """An executable that starts Chromium inside the leaf namespace."""
        from tests.e2e.conftest import CHROMIUM

        script = folder / "chromium-in-leaf"
        script.write_text(
            f'#!/bin/sh\nexec nsenter --net=/proc/{self.pid}/ns/net -- {CHROMIUM} "$@"\n'
        )
        script.chmod(0o755)
        return str(script)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def _progress(page: Any) -> dict[str, Any]:
    return await page.evaluate(PROGRESS_JS)


def _grew(before: dict[str, int], after: dict[str, int], by: int) -> bool:
    return any(value >= before.get(key, 0) + by for key, value in after.items())


async def _wait_flowing(pages: dict[str, Any], limit: float = 60) -> None:
    """Video frames and audio packets grow on every page."""
    deadline = time.monotonic() + limit
    first = {name: await _progress(page) for name, page in pages.items()}
    pending = set(pages)
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"media not flowing on {sorted(pending)}")
        await asyncio.sleep(0.25)
        for name in list(pending):
            now = await _progress(pages[name])
            if _grew(first[name]["video"], now["video"], 10) and _grew(
                first[name]["audio"], now["audio"], 25
            ):
                pending.discard(name)


async def _measure_recovery(
    pages: dict[str, Any], unblocked_at: float, limit: float
) -> dict[str, float | None]:
    """Seconds from ``unblocked_at`` until video frames and audio packets grow on each page.

    Growth must go on for three polls in a row: a few frames decoded from packets that were
    in flight when the outage began do not count.
    """
    last = {name: await _progress(page) for name, page in pages.items()}
    found: dict[str, float | None] = {f"{n}_{k}": None for n in pages for k in ("video", "audio")}
    since: dict[str, float] = {}
    streak = dict.fromkeys(found, 0)
    while any(v is None for v in found.values()) and time.monotonic() - unblocked_at < limit:
        await asyncio.sleep(0.1)
        for name, page in pages.items():
            current = await _progress(page)
            at = time.monotonic() - unblocked_at
            for kind in ("video", "audio"):
                key = f"{name}_{kind}"
                if found[key] is not None:
                    continue
                if not _grew(last[name][kind], current[kind], 1):
                    streak[key] = 0
                    continue
                streak[key] += 1
                if streak[key] == 1:
                    since[key] = at
                if streak[key] >= 3:
                    found[key] = round(since[key], 2)
            last[name] = current
    return found


async def _inside_hub(outage: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from tests.conftest import LiveServer
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
    from tests.e2e.test_call_browser import join, login

    _run("ip", "link", "set", "lo", "up")
    folder = Path(tempfile.mkdtemp(prefix="panda-loss-"))
    leaf = Leaf()
    server = LiveServer(folder, {"PANDA_HOST": "0.0.0.0", "PANDA_ICE_LOOPBACK": "0"})
    result: dict[str, Any] = {}
    try:
        server.start()
        demo = json.loads(server.run_cli("demo", "--json"))
        sid = demo["session_id"]
        # The student reaches the server over the veth pair; its page is not on loopback, so
        # Chromium is told to treat it as a secure origin (camera access).
        student_base = f"http://{HUB_ADDR}:{server.port}"
        async with async_playwright() as pw:
            tutor_browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            student_browser = await pw.chromium.launch(
                executable_path=leaf.chromium(folder),
                headless=True,
                args=[*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={student_base}"],
            )
            try:
                pages = {}
                for role, browser, base in (
                    ("student", student_browser, student_base),
                    ("tutor", tutor_browser, server.url),
                ):
                    context = await browser.new_context()
                    pages[role] = await login(
                        context, base, demo[role]["email"], demo[role]["password"]
                    )
                await asyncio.gather(
                    join(pages["student"], student_base, sid),
                    join(pages["tutor"], server.url, sid),
                )
                await _wait_flowing(pages)
                leaf.block()
                blocked_at = time.monotonic()
                await asyncio.sleep(1.0)
                during = {name: await _progress(page) for name, page in pages.items()}
                await asyncio.sleep(outage - (time.monotonic() - blocked_at))
                end = {name: await _progress(page) for name, page in pages.items()}
                result["grew_during_outage"] = {
                    name: _grew(during[name]["video"], end[name]["video"], 5)
                    for name in pages
                }
                leaf.unblock()
                unblocked_at = time.monotonic()
                result["outage"] = round(unblocked_at - blocked_at, 2)
                result["recovery"] = await _measure_recovery(pages, unblocked_at, 40.0)
                final = {name: await _progress(page) for name, page in pages.items()}
                result["states"] = {name: snap["state"] for name, snap in final.items()}
                # Peer connections each page used: 2 for the student means it rejoined (the
                # server dropped its silent connection meanwhile), 1 that the old one recovered.
                result["peer_connections"] = {name: snap["peers"] for name, snap in final.items()}
                # Media keeps flowing afterwards (not a burst of queued frames).
                await _wait_flowing(pages, limit=15)
                result["flowing_after"] = True
            finally:
                await student_browser.close()
                await tutor_browser.close()
    finally:
        server.stop()
        leaf.close()
        result["server_log"] = server.log_path.read_text()[-4000:]
        shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()
    result["load"] = [round(x, 2) for x in load]
    return result


def _can_run() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("nft")):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "nft", "add table inet probe"], capture_output=True
    )
    return probe.returncode == 0


def run_outage(seconds: float = OUTAGE_SECONDS) -> dict[str, Any]:
    """One outage of ``seconds`` in fresh namespaces; returns the measured recovery figures."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.e2e.test_call_network_loss", "run",
         str(seconds)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(result: dict[str, Any], outage: float) -> None:
    recovery = result["recovery"]
    print(f"media back after a {outage:.0f} s outage (s):", json.dumps(recovery),
          "peer connections:", result["peer_connections"], "load:", result["load"])
    assert result["outage"] >= outage, result
    assert not any(result["grew_during_outage"].values()), result
    missing = [k for k, v in recovery.items() if v is None]
    assert not missing, f"no media for {missing}: {json.dumps(result)[:6000]}"
    worst = max(recovery.values())
    assert worst <= RECOVERY_LIMIT, f"media back after {worst:.1f} s: {json.dumps(recovery)}"
    assert result["flowing_after"], result
    assert result["states"] == {"student": "connected", "tutor": "connected"}, result


needs_namespaces = pytest.mark.skipif(
    not _can_run(), reason="needs unshare, nsenter and nft (network namespaces)"
)


@needs_namespaces
def test_media_resumes_on_both_sides_after_a_10_s_outage() -> None:
    """Issue #6. The server drops the silent participant meanwhile; the page rejoins."""
    _check(run_outage(OUTAGE_SECONDS), OUTAGE_SECONDS)


@needs_namespaces
def test_pictures_come_back_after_a_short_outage() -> None:
    """Usually the connection survives 3 s: the relay must then repair the pictures itself
    (packets lost mid-frame once held every later frame back for seconds)."""
    _check(run_outage(3.0), 3.0)


if __name__ == "__main__":
    # python -m tests.e2e.test_call_network_loss repeat N [SECONDS]: figures for N outages.
    if sys.argv[1] == "repeat":
        seconds = float(sys.argv[3]) if len(sys.argv) > 3 else OUTAGE_SECONDS
        times = []
        for _ in range(int(sys.argv[2])):
            figures = run_outage(seconds)
            times.append(max(v or 99.0 for v in figures["recovery"].values()))
            print(json.dumps(figures["recovery"]), figures["peer_connections"], figures["load"],
                  flush=True)
        print("median", statistics.median(times), "max", max(times))
    else:
        print(json.dumps(asyncio.run(_inside_hub(float(sys.argv[2])))))
