"""A real aiortc peer connection that can reach the server only over ICE-TCP: DTLS and SRTP flow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
)
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from panda.media import ice_tcp
from tests.media.test_ice_tcp_client import Cfg, make_tcp_only_client


class SmallVideo(VideoStreamTrack):
    """A 160x120 test picture, to keep the encoder cheap."""

    async def recv(self) -> Any:
        frame = await super().recv()
        return frame.reformat(width=160, height=120)


@pytest.fixture
async def listener() -> Any:
    lst = ice_tcp.IceTcpListener(0, host="127.0.0.1")
    await lst.start()
    yield lst
    await lst.close()


async def _first_frame(track: MediaStreamTrack) -> Any:
    return await asyncio.wait_for(track.recv(), 20)


async def test_aiortc_call_over_tcp_only(listener: ice_tcp.IceTcpListener) -> None:
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    browser = RTCPeerConnection(config)
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server_tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    browser_tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    server.on("track", server_tracks.put_nowait)
    browser.on("track", browser_tracks.put_nowait)
    try:
        browser.addTrack(AudioStreamTrack())
        browser.addTrack(SmallVideo())
        offer = await browser.createOffer()
        # The "browser" gets only an active TCP candidate: no UDP path exists at all.
        for t in browser.getTransceivers():
            make_tcp_only_client(t.sender.transport.transport._connection)
        await browser.setLocalDescription(offer)
        assert " udp " not in browser.localDescription.sdp.lower()
        assert "tcptype active" in browser.localDescription.sdp

        await server.setRemoteDescription(browser.localDescription)
        server.addTrack(AudioStreamTrack())
        assert ice_tcp.configure_peer_connection(server, Cfg(), listener) == 1
        # Configuring twice is harmless (the relay may call it before every answer/offer).
        assert ice_tcp.configure_peer_connection(server, Cfg(), listener) == 0
        await server.setLocalDescription(await server.createAnswer())
        answer = server.localDescription.sdp
        assert f"127.0.0.1 {listener.port} typ host tcptype passive" in answer
        await browser.setRemoteDescription(server.localDescription)

        # Media arrives both ways: audio and video from the browser, audio back.
        got = [await asyncio.wait_for(server_tracks.get(), 20) for _ in range(2)]
        frames = await asyncio.gather(*(_first_frame(t) for t in got))
        assert {t.kind for t in got} == {"audio", "video"}
        assert any(getattr(f, "width", 0) == 160 for f in frames)
        back = await asyncio.wait_for(browser_tracks.get(), 20)
        assert back.kind == "audio"
        await _first_frame(back)

        assert server.connectionState == "connected"
        connection = server.getTransceivers()[0].receiver.transport.transport._connection
        assert ice_tcp.selected_transport(connection) == "tcp"
        assert listener.connections == 1
        assert listener.stats.authenticated == 1
    finally:
        await browser.close()
        await server.close()
    assert listener._sessions == {}
