"""The real call page, one participant's network refusing UDP: the call runs over ICE-TCP.

Like `test_ice_tcp_call.py`, everything runs in network namespaces the test creates: `panda
serve` (with PANDA_ICE_TCP_PORT, no loopback mode) and the student's Chromium in namespace A,
the tutor's Chromium in namespace B, joined to A by a veth pair, where every UDP packet is
refused. Both log in, join the booked session's call, and must see and hear each other; the
tutor's selected candidate pair is TCP (getStats) and the call page says "TCP" in its
connection details, the student's says "UDP".
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.media.test_ice_tcp_call import NET_A, _can_run

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


async def _transport_detail(page: Any) -> str:
    await page.locator("details.connection-details summary").click()
    locator = page.locator('[data-detail="transport"]')
    async with asyncio.timeout(30):
        while True:
            text = (await locator.inner_text()).strip()
            if text in ("UDP", "TCP"):
                return text
            await asyncio.sleep(0.25)


async def _inside_namespace_a() -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from tests.conftest import LiveServer
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
    from tests.e2e.test_call_browser import (
        audio_growing,
        join,
        login,
        stats,
        video_growing,
    )
    from tests.media.test_ice_tcp_call import _make_namespace_b, _probe_udp_from_b

    tmp = Path(tempfile.mkdtemp(prefix="ice-tcp-call-page-"))
    holder, enter = await _make_namespace_b()
    result: dict[str, Any] = {"udp_from_b": _probe_udp_from_b(enter)}
    wrapper = tmp / "chromium-in-b"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(enter)} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    data_dir = tmp / "data"
    data_dir.mkdir()
    tcp_port = _free_port()
    server = LiveServer(
        data_dir,
        {"PANDA_HOST": "0.0.0.0", "PANDA_ICE_LOOPBACK": "0", "PANDA_ICE_TCP_PORT": str(tcp_port)},
    )
    base = f"http://{NET_A}:{server.port}"
    server.env["PANDA_BASE_URL"] = base
    try:
        await asyncio.to_thread(server.start)
        demo = json.loads(await asyncio.to_thread(server.run_cli, "demo", "--json"))
        # The page is served from the veth address, not a secure context by default.
        flags = [*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={base}"]
        async with async_playwright() as pw:
            browsers = [
                await pw.chromium.launch(executable_path=exe, headless=True, args=flags)
                for exe in (CHROMIUM, str(wrapper))
            ]
            try:
                pages = {}
                for role, browser in zip(("student", "tutor"), browsers, strict=True):
                    context = await browser.new_context(viewport={"width": 1100, "height": 760})
                    pages[role] = await login(
                        context, base, demo[role]["email"], demo[role]["password"]
                    )
                student, tutor = pages["student"], pages["tutor"]
                sid = demo["session_id"]
                await asyncio.gather(join(student, base, sid), join(tutor, base, sid))
                await asyncio.gather(
                    video_growing(student, "student receives tutor video"),
                    video_growing(tutor, "tutor receives student video (over TCP)"),
                    audio_growing(student, "student hears tutor"),
                    audio_growing(tutor, "tutor hears student (over TCP)"),
                )
                result["student_pair"] = (await stats(student))["pair"]
                result["tutor_pair"] = (await stats(tutor))["pair"]
                result["student_detail"] = await _transport_detail(student)
                result["tutor_detail"] = await _transport_detail(tutor)
            finally:
                for browser in browsers:
                    await browser.close()
    finally:
        await asyncio.to_thread(server.stop)
        holder.kill()
        await holder.wait()
        log = server.log_path.read_text() if server.log_path.exists() else ""
        result["server_log_tail"] = log[-1500:]
        shutil.rmtree(tmp, ignore_errors=True)
    return result


@pytest.mark.e2e
@pytest.mark.skipif(not _can_run(), reason="needs unshare, nsenter and ip (network namespaces)")
async def test_call_page_with_a_participant_whose_udp_is_blocked() -> None:
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "tests.media.test_ice_tcp_call_page",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 280)
    assert proc.returncode == 0, err.decode()[-4000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["udp_from_b"].startswith("blocked"), result
    assert result["tutor_pair"]["protocol"] == "tcp", result
    assert result["student_pair"]["protocol"] == "udp", result
    assert result["tutor_detail"] == "TCP", result
    assert result["student_detail"] == "UDP", result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_inside_namespace_a())))
