"""Real Chromium, UDP blocked: it reaches an aiortc server over our passive ICE-TCP port, and
re-opens a reset stream; UDP open: it keeps UDP although TCP is on offer.

The test runs a helper process in a fresh network namespace (`unshare -n`): only loopback,
with policy-routing rules that refuse every UDP packet, so nothing but TCP works. Inside it
an aiohttp page hands Chromium's offer to a server RTCPeerConnection configured by
`ice_tcp.configure_peer_connection`; Chromium sends its fake camera and receives a test
picture back, and reports the selected candidate pair from getStats().
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

PAGE = """<!doctype html><meta charset="utf-8"><title>ice-tcp</title>
<video id="v" autoplay muted playsinline></video>
<script>
async function run() {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 320, height: 240, frameRate: 15}, audio: true});
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  const remote = new MediaStream();
  pc.ontrack = e => { remote.addTrack(e.track); document.getElementById("v").srcObject = remote; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
  const resp = await fetch("/offer", {method: "POST", body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: "answer", sdp: await resp.text()});
  return pc.localDescription.sdp;
}
async function selected() {
  const stats = await window.pc.getStats();
  let pairId = null, decoded = 0;
  stats.forEach(s => {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    if (s.type === "inbound-rtp" && s.kind === "video") decoded = s.framesDecoded || 0;
  });
  if (!pairId) return {decoded};
  const pair = stats.get(pairId);
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return {decoded, state: pair.state, local_protocol: local.protocol, local_tcptype: local.tcpType,
          remote_protocol: remote.protocol, remote_port: remote.port};
}
</script>"""


# Policy routing refuses UDP before the local routing table is consulted (no packet
# filter is installed on these machines, and none is needed).
_BLOCK_UDP = [
    ["ip", "rule", "add", "pref", "10", "ipproto", "udp", "prohibit"],
    ["ip", "rule", "add", "pref", "100", "lookup", "local"],
    ["ip", "rule", "del", "pref", "0"],
    ["ip", "-6", "rule", "add", "pref", "10", "ipproto", "udp", "prohibit"],
    ["ip", "-6", "rule", "add", "pref", "100", "lookup", "local"],
    ["ip", "-6", "rule", "del", "pref", "0"],
]


def _setup_namespace(block_udp: bool) -> dict[str, Any]:
    """Loopback up, every UDP packet refused if asked; return a probe of what UDP does."""
    import socket

    commands = [["ip", "link", "set", "lo", "up"]]
    if block_udp:
        commands += _BLOCK_UDP
    for cmd in commands:
        subprocess.run(cmd, check=True)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    a.settimeout(0.5)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        b.sendto(b"probe", a.getsockname())
        a.recv(16)
        udp = "works"
    except OSError as exc:
        udp = f"blocked ({exc.__class__.__name__})"
    finally:
        a.close()
        b.close()
    return {"udp": udp}


async def _break_and_recover(tab: Any, listener: Any, connection: Any) -> dict[str, Any]:
    """Reset the browser's TCP stream; see whether it re-opens it and media resumes."""
    from panda.media import aioice_patches

    before = (await tab.evaluate("selected()"))["decoded"]
    old = aioice_patches.selected_pair(connection)
    old_addr = old.remote_addr if old else None
    for stream in list(listener._streams):
        stream.abort("test-reset")
    reset_at = asyncio.get_running_loop().time()
    out: dict[str, Any] = {"decoded_before": before}
    try:
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.2)
                decoded = (await tab.evaluate("selected()")).get("decoded", 0)
                pair = aioice_patches.selected_pair(connection)
                if (
                    decoded > before + 30
                    and pair is not None
                    and pair.remote_addr != old_addr
                    and pair.remote_addr in pair.protocol.streams
                ):
                    out.update(decoded_after=decoded, recovered=True)
                    out["seconds"] = round(asyncio.get_running_loop().time() - reset_at, 1)
                    break
    except TimeoutError:
        out["recovered"] = False
    out["streams_authenticated"] = listener.stats.authenticated
    out["state"] = await tab.evaluate("window.pc.connectionState")
    return out


async def _start_nginx(tmp: Path, ice_port: int, front: int) -> asyncio.subprocess.Process:
    """nginx with the documented stream + ssl_preread layout (no web upstream needed here)."""
    from tests.media.test_ice_tcp_nginx import NGINX, NGINX_CONF, STREAM_MODULE

    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(module=STREAM_MODULE, tmp=tmp, web=1, ice=ice_port, front=front)
    )
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        *("-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(15):
        while True:
            assert proc.returncode is None, (tmp / "error.log").read_text()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", front)
                writer.close()
                return proc
            except OSError:
                await asyncio.sleep(0.05)


async def _inside_namespace(
    block_udp: bool, break_stream: bool = False, via_nginx: bool = False
) -> dict[str, Any]:
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import VideoStreamTrack
    from playwright.async_api import async_playwright

    from panda.media import ice_tcp
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
    from tests.media.test_ice_tcp_client import Cfg

    result: dict[str, Any] = _setup_namespace(block_udp)
    nginx: asyncio.subprocess.Process | None = None
    nginx_dir: Path | None = None
    if via_nginx:
        # Browsers reach the relay through nginx's shared port, as on a real port 443.
        import socket
        import tempfile

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            front = probe.getsockname()[1]
        listener = ice_tcp.IceTcpListener(0, host="127.0.0.1", advertised_port=front)
        await listener.start()
        assert listener.port is not None
        nginx_dir = Path(tempfile.mkdtemp(prefix="ice-tcp-nginx-"))
        nginx = await _start_nginx(nginx_dir, listener.port, front)
        result["front_port"] = front
    else:
        listener = ice_tcp.IceTcpListener(0, host="127.0.0.1")
        await listener.start()
    pcs: list[RTCPeerConnection] = []
    server_frames: asyncio.Queue[Any] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    class Picture(VideoStreamTrack):
        async def recv(self) -> Any:
            frame = await super().recv()
            return frame.reformat(width=160, height=120)

    async def offer(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.append(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":

                async def first() -> None:
                    server_frames.put_nowait(await track.recv())

                task = asyncio.ensure_future(first())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        pc.addTrack(Picture())
        ice_tcp.configure_peer_connection(pc, Cfg(), listener)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(text=pc.localDescription.sdp)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/offer", offer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                tab = await browser.new_page()
                await tab.goto(f"http://127.0.0.1:{port}/")
                offer_sdp = await tab.evaluate("run()")
                result["offer_tcp_active"] = "tcptype active" in offer_sdp
                await tab.wait_for_function(
                    "window.pc.connectionState === 'connected'", timeout=30000
                )
                # Poll getStats until the picture sent back has been decoded and the
                # pair the browser settled on is the one expected.
                want = "tcp" if block_udp else "udp"
                async with asyncio.timeout(30):
                    while True:
                        stats = await tab.evaluate("selected()")
                        if stats.get("decoded", 0) > 0 and stats.get("local_protocol") == want:
                            break
                        await asyncio.sleep(0.2)
                result.update(stats)
                frame = await asyncio.wait_for(server_frames.get(), 30)
                result["server_frame"] = [frame.width, frame.height]
                connection = pcs[0].getTransceivers()[0].receiver.transport.transport._connection
                result["server_transport"] = ice_tcp.selected_transport(connection)
                result["listener_port"] = listener.port
                result["tcp_streams"] = listener.stats.authenticated
                if break_stream:
                    result["reconnect"] = await _break_and_recover(tab, listener, connection)
            finally:
                await browser.close()
    finally:
        for pc in pcs:
            await pc.close()
        await runner.cleanup()
        await listener.close()
        if nginx is not None:
            nginx.terminate()
            await nginx.wait()
        if nginx_dir is not None:
            shutil.rmtree(nginx_dir, ignore_errors=True)
    return result


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


async def _run_in_namespace(mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "tests.media.test_ice_tcp_chromium",
        mode,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n (network namespaces)")
async def test_chromium_without_udp_connects_over_ice_tcp() -> None:
    result = await _run_in_namespace("block-udp")
    assert result["udp"].startswith("blocked"), result
    assert result["offer_tcp_active"], result
    assert result["state"] == "succeeded", result
    assert result["local_protocol"] == "tcp" and result["local_tcptype"] == "active", result
    assert result["remote_protocol"] == "tcp", result
    assert result["remote_port"] == result["listener_port"], result
    assert result["decoded"] > 0, result
    assert result["server_frame"][0] > 0, result
    assert result["server_transport"] == "tcp", result
    assert result["tcp_streams"] >= 1, result


@pytest.mark.e2e
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n (network namespaces)")
async def test_chromium_prefers_udp_when_it_works() -> None:
    result = await _run_in_namespace("udp-open")
    assert result["udp"] == "works", result
    assert result["offer_tcp_active"], result  # TCP was on offer, and not chosen
    assert result["local_protocol"] == "udp" and result["remote_protocol"] == "udp", result
    assert result["decoded"] > 0 and result["server_frame"][0] > 0, result
    assert result["server_transport"] == "udp", result


@pytest.mark.e2e
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n (network namespaces)")
async def test_chromium_reopens_a_reset_tcp_stream() -> None:
    """The relay resets the stream: Chromium re-opens it, the relay renominates, media resumes."""
    result = await _run_in_namespace("reconnect")
    assert result["udp"].startswith("blocked"), result
    assert result["server_transport"] == "tcp", result
    reconnect = result["reconnect"]
    assert reconnect["recovered"], result
    assert reconnect["streams_authenticated"] >= 2, result
    assert reconnect["state"] == "connected", result


@pytest.mark.e2e
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n (network namespaces)")
@pytest.mark.skipif(
    not (shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists()),
    reason="needs nginx with the stream module",
)
async def test_chromium_without_udp_through_nginx_shared_port() -> None:
    """The port-443 layout with a real browser: nginx's shared port is the advertised one."""
    result = await _run_in_namespace("nginx")
    assert result["udp"].startswith("blocked"), result
    assert result["local_protocol"] == "tcp" and result["remote_protocol"] == "tcp", result
    assert result["remote_port"] == result["front_port"] != result["listener_port"], result
    assert result["decoded"] > 0 and result["server_frame"][0] > 0, result
    assert result["server_transport"] == "tcp", result


if __name__ == "__main__":
    mode = sys.argv[1]
    print(
        json.dumps(
            asyncio.run(_inside_namespace(mode != "udp-open", mode == "reconnect", mode == "nginx"))
        )
    )
