"""Firefox in a call with Chromium through the real server: both decode the other's media.

Firefox is driven over WebDriver BiDi (tests/e2e/firefox.py); Chromium through Playwright.
Firefox gathers no loopback ICE candidates, so the server, both browsers and the test run in a
network namespace the test creates (`unshare -n`): loopback plus a veth pair with a private
address and a default route, which Firefox needs before it gathers any host candidate. Nothing
leaves the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from tests.conftest import LiveServer
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.firefox import FIREFOX, Firefox
from tests.e2e.test_call_browser import (
    DEADLINE,
    POLL,
    STATS_JS,
    audio_growing,
    best_video,
    join,
    login,
    stats,
    total,
    video_growing,
)

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE_SETUP = [
    ["ip", "link", "set", "lo", "up"],
    ["ip", "link", "add", "pp0", "type", "veth", "peer", "name", "pp1"],
    ["ip", "addr", "add", "10.77.0.1/24", "dev", "pp0"],
    ["ip", "link", "set", "pp0", "up"],
    ["ip", "link", "set", "pp1", "up"],
    ["ip", "route", "add", "default", "via", "10.77.0.2", "dev", "pp0"],
]


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


async def ff_until(
    firefox: Firefox,
    test: Callable[[Any], bool],
    what: str,
    js: str = STATS_JS,
    limit: float = DEADLINE,
) -> Any:
    """Poll a JS function in Firefox until `test` holds on its result."""
    deadline = time.monotonic() + limit
    last: Any = None
    while time.monotonic() < deadline:
        last = await firefox.evaluate(js)
        if last and test(last):
            return last
        await asyncio.sleep(POLL)
    raise AssertionError(
        f"Firefox: timed out waiting for {what}; last: {json.dumps(last)[:2000]};"
        f" console errors: {firefox.console_errors[-5:]}"
    )


async def ff_login_and_join(firefox: Firefox, base: str, account: dict[str, str], sid: int) -> None:
    await firefox.goto(base + "/login")
    await firefox.evaluate(
        """(email, password) => {
          document.querySelector('input[name="email"]').value = JSON.parse(email);
          document.querySelector('input[name="password"]').value = JSON.parse(password);
          document.querySelector('input[name="password"]').form.requestSubmit();
          return true;
        }""",
        account["email"],
        account["password"],
    )
    await ff_until(firefox, lambda p: p == "/dashboard", "login", "() => location.pathname")
    await firefox.goto(f"{base}/sessions/{sid}/call")
    await ff_until(
        firefox,
        bool,
        "camera preview on the pre-join screen",
        """() => document.querySelector('[data-call-state="idle"]') !== null
                 && document.querySelector('#preview-video').srcObject !== null""",
    )
    await firefox.evaluate("() => { document.querySelector('[data-action=\"join\"]').click(); }")
    await ff_until(
        firefox,
        lambda state: state == "connected",
        "connected",
        "() => document.querySelector('[data-call-state]').dataset.callState",
    )


def _prepare() -> tuple[LiveServer, dict[str, Any]]:
    """Namespace interfaces up; a server with demo accounts and a session booked now."""
    for command in NAMESPACE_SETUP:
        subprocess.run(command, check=True, capture_output=True)
    server = LiveServer(Path(tempfile.mkdtemp(prefix="panda-ff-")), {"PANDA_ICE_LOOPBACK": "0"})
    server.run_cli("migrate")
    demo = json.loads(server.run_cli("demo", "--json"))
    server.start()
    return server, demo


async def scenario() -> dict[str, Any]:
    """Inside the namespace: a real server, a Chromium student and a Firefox tutor in one call."""
    server, demo = await asyncio.to_thread(_prepare)
    sid = demo["session_id"]
    firefox = Firefox()
    result: dict[str, Any] = {}
    try:
        await firefox.start()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            context = await browser.new_context(viewport={"width": 1100, "height": 760})
            chromium = await login(
                context, server.url, demo["student"]["email"], demo["student"]["password"]
            )
            await asyncio.gather(
                join(chromium, server.url, sid),
                ff_login_and_join(firefox, server.url, demo["tutor"], sid),
            )
            # Chromium decodes Firefox's fake camera and hears its fake microphone (a tone).
            await video_growing(chromium, "Chromium receives Firefox video")
            await audio_growing(chromium, "Chromium receives Firefox audio")
            # Firefox decodes Chromium's camera and receives its audio into a playing element.
            first = await ff_until(
                firefox, lambda s: best_video(s)["frames"] > 0, "Firefox decodes Chromium video"
            )
            start = best_video(first)["frames"]
            last = await ff_until(
                firefox,
                lambda s: best_video(s)["frames"] > start + 10 and best_video(s)["width"] >= 320,
                "Firefox video frames growing at >= 320 px",
            )
            packets = total(first["audio"], "packets")
            await ff_until(
                firefox,
                lambda s: total(s["audio"], "packets") > packets + 50 and s.get("audioPlaying"),
                "Firefox audio packets growing while playing",
            )
            result = {
                "firefox_video": best_video(last),
                "firefox_pair": last.get("pair"),
                "chromium_video": best_video(await stats(chromium)),
                "firefox_errors": [e for e in firefox.console_errors if "panda" in e.lower()],
            }
            await browser.close()
    finally:
        await firefox.stop()
        server.stop()
    return result


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n (network namespaces)")
@pytest.mark.skipif(
    FIREFOX is None and os.environ.get("CI") != "true",
    reason="Firefox is not installed (make test-deps installs firefox-esr)",
)
async def test_firefox_and_chromium_see_and_hear_each_other() -> None:
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "tests.e2e.test_call_firefox",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, err.decode()[-4000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["firefox_video"]["width"] >= 320, result
    assert result["chromium_video"]["width"] >= 320, result
    assert result["firefox_errors"] == [], result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scenario())))
