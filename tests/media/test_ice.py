"""ICE configuration: loopback mode, no default STUN, env parsing, hooks."""

from __future__ import annotations

import pytest
from aioice import Connection
from aiortc.sdp import SessionDescription

from panda.media import aiortc_patches
from panda.media.ice import (
    MediaConfig,
    add_ice_connection_hook,
    create_peer_connection,
    media_config_from_env,
    remove_ice_connection_hook,
    rtc_configuration,
)


def candidate_hosts(sdp: str) -> set[str]:
    description = SessionDescription.parse(sdp)
    return {c.ip for m in description.media for c in m.ice_candidates}


def test_defaults_use_no_ice_servers() -> None:
    config = MediaConfig()
    assert rtc_configuration(config).iceServers == []  # never aiortc's public STUN default
    assert not config.ice_loopback and config.relay_path == "packet"


async def test_loopback_mode_gathers_127_0_0_1_only() -> None:
    pc = create_peer_connection(MediaConfig(ice_loopback=True))
    try:
        pc.addTransceiver("audio")
        pc.addTransceiver("video")
        await pc.setLocalDescription(await pc.createOffer())
        assert candidate_hosts(pc.localDescription.sdp) == {"127.0.0.1"}
        connection = aiortc_patches.ice_connection_of(pc)
        assert connection is not None and connection.stun_server is None
    finally:
        await pc.close()


async def test_default_mode_leaves_loopback_out() -> None:
    pc = create_peer_connection(MediaConfig())
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        assert "127.0.0.1" not in candidate_hosts(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_ice_connection_hook_sees_every_agent() -> None:
    seen: list[tuple[Connection, MediaConfig]] = []

    def hook(connection: Connection, config: MediaConfig) -> None:
        seen.append((connection, config))

    add_ice_connection_hook(hook)
    config = MediaConfig(ice_loopback=True)
    pc = create_peer_connection(config)
    try:
        pc.addTransceiver("audio")
        pc.addTransceiver("video")  # max-bundle: shares the first transport
        assert len(seen) == 1 and seen[0][1] is config
        assert seen[0][0] is aiortc_patches.ice_connection_of(pc)
    finally:
        remove_ice_connection_hook(hook)
        await pc.close()


def test_config_from_env() -> None:
    config = media_config_from_env({
        "PANDA_ICE_LOOPBACK": "1",
        "PANDA_ICE_SERVERS": '[{"urls": "stun:stun.example.org:3478"},'
                             ' {"urls": ["turn:turn.example.org"], "username": "u",'
                             ' "credential": "p"}]',
        "PANDA_ICE_TCP_PORT": "3478",
        "PANDA_ICE_PUBLIC_IP": "203.0.113.5",
        "PANDA_ICE_UDP_PORTS": "50000-50199",
    })
    assert config.ice_loopback
    assert len(config.ice_servers) == 2
    assert config.ice_tcp_port == 3478
    assert config.ice_public_ip == "203.0.113.5"
    assert config.ice_udp_ports == (50000, 50199)
    servers = rtc_configuration(config).iceServers
    assert [s.urls for s in servers] == ["stun:stun.example.org:3478", ["turn:turn.example.org"]]
    assert media_config_from_env({}) == MediaConfig()


@pytest.mark.parametrize("env", [
    {"PANDA_ICE_LOOPBACK": "maybe"},
    {"PANDA_ICE_SERVERS": "not json"},
    {"PANDA_ICE_SERVERS": '"stun:x"'},
    {"PANDA_ICE_SERVERS": '[{"urls": "http://x"}]'},
    {"PANDA_ICE_SERVERS": '[{"url": "stun:x"}]'},
    {"PANDA_ICE_TCP_PORT": "70000"},
    {"PANDA_ICE_TCP_PORT": "abc"},
    {"PANDA_ICE_UDP_PORTS": "50000"},
    {"PANDA_ICE_UDP_PORTS": "50199-50000"},
    {"PANDA_RELAY_PATH": "sideways"},
])
def test_bad_config_fails_loudly(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        media_config_from_env(env)
