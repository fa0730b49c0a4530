"""The relay's rooms with ICE-TCP on: a participant without UDP calls one with UDP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from panda.media import aiortc_patches, ice, ice_tcp
from panda.media.room import RoomRegistry
from tests.media.clients import Client, contiguous_in, wait_for
from tests.media.mediagen import EncodedMedia
from tests.media.test_ice_tcp_client import Cfg, make_tcp_only_client


@pytest.fixture
async def listener() -> AsyncIterator[ice_tcp.IceTcpListener]:
    """ICE-TCP wired into every ICE agent the media layer creates, as the app does."""
    lst = ice_tcp.IceTcpListener(0, host="127.0.0.1")
    await lst.start()
    hook = ice_tcp.connection_hook(lst)
    ice.add_ice_connection_hook(hook)
    yield lst
    ice.remove_ice_connection_hook(hook)
    await lst.close()


async def test_tcp_only_participant_calls_udp_participant(
    listener: ice_tcp.IceTcpListener,
    registry: RoomRegistry,
    vp8: EncodedMedia,
    opus: EncodedMedia,
) -> None:
    room = registry.get_or_create("call-tcp")
    alice = Client("alice", video=vp8, audio=opus)
    # Alice's network has no UDP: her only candidate is an active TCP one.
    aiortc_patches.on_ice_connection_created(alice.pc, make_tcp_only_client)
    bob = Client("bob", video=vp8, audio=opus)
    try:
        await alice.join(room)
        await alice.publish()
        await bob.join(room)
        await bob.publish()

        def enough() -> bool:
            return all(
                len(c.frames_from(other, "video")) >= 20
                and len(c.frames_from(other, "audio")) >= 30
                for c, other in ((alice, "bob"), (bob, "alice"))
            )

        await wait_for(enough, limit=30, what="media both ways")
        for receiver, sender in ((alice, bob), (bob, alice)):
            video_mid = next(m for m, s in sender.sources.items() if s == "camera")
            got_video = receiver.frames_from(sender.name, "video")
            assert contiguous_in(got_video, sender.published[video_mid].sent)
        stats = room.stats()
        assert stats["alice"]["transport"] == "tcp"
        assert stats["bob"]["transport"] == "udp"
        assert listener.stats.authenticated >= 1
    finally:
        await alice.close()
        await bob.close()


async def test_ice_network_wires_listener_and_hook() -> None:
    network = await ice_tcp.IceNetwork.start(Cfg(ice_tcp_port=0))
    try:
        assert network.listener is not None and network.listener.port
        pc = ice.create_peer_connection(ice.MediaConfig(ice_loopback=True))
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        assert f"127.0.0.1 {network.listener.port} typ host tcptype passive" in sdp
        await pc.close()
    finally:
        await network.close()
    # Unhooked: later peer connections get no TCP candidate.
    pc = ice.create_peer_connection(ice.MediaConfig(ice_loopback=True))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    assert "tcptype" not in pc.localDescription.sdp
    await pc.close()


async def test_ice_network_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="PANDA_ICE_PUBLIC_IP"):
        await ice_tcp.IceNetwork.start(Cfg(ice_public_ip="not-an-address"))
