"""ICE configuration of the relay's peer connections.

Every server-side (and test-client) ``RTCPeerConnection`` is built by
:func:`create_peer_connection`, and every ICE agent it creates goes through
:func:`configure_ice_connection`. Other ICE features (ICE-TCP, UDP port range,
public address) hook in with :func:`add_ice_connection_hook` instead of editing
this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aioice import Connection
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from . import aiortc_patches

LOOPBACK_ADDRESS = "127.0.0.1"
RELAY_PATHS = ("frame", "packet")


@dataclass(frozen=True)
class MediaConfig:
    """Settings of the media relay (see the media contract for the env variables)."""

    ice_loopback: bool = False
    ice_servers: tuple[dict[str, Any], ...] = ()
    ice_tcp_port: int | None = None
    ice_public_ip: str | None = None
    ice_udp_ports: tuple[int, int] | None = None
    relay_path: str = "frame"

    def __post_init__(self) -> None:
        for server in self.ice_servers:
            _validate_ice_server(server)
        if self.ice_tcp_port is not None and not 0 < self.ice_tcp_port < 65536:
            raise ValueError(f"ice_tcp_port out of range: {self.ice_tcp_port}")
        if self.ice_udp_ports is not None:
            low, high = self.ice_udp_ports
            if not 0 < low <= high < 65536:
                raise ValueError(f"bad ice_udp_ports range: {self.ice_udp_ports}")
        if self.relay_path not in RELAY_PATHS:
            raise ValueError(f"relay_path must be one of {RELAY_PATHS}, not {self.relay_path!r}")


def _validate_ice_server(server: Mapping[str, Any]) -> None:
    if not isinstance(server, Mapping):
        raise ValueError("each ICE server must be an object")
    urls = server.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError("each ICE server needs 'urls' (a string or a list of strings)")
    for url in urls:
        if not url.startswith(("stun:", "turn:", "turns:")):
            raise ValueError(f"unsupported ICE server URL: {url!r}")
    unknown = set(server) - {"urls", "username", "credential", "credentialType"}
    if unknown:
        raise ValueError(f"unknown ICE server keys: {sorted(unknown)}")


def media_config_from_env(env: Mapping[str, str] | None = None) -> MediaConfig:
    """Build a :class:`MediaConfig` from the ``PANDA_ICE_*`` variables; bad values raise."""
    env = os.environ if env is None else env
    loopback_raw = env.get("PANDA_ICE_LOOPBACK", "0").strip().lower()
    if loopback_raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"PANDA_ICE_LOOPBACK must be 0 or 1, not {loopback_raw!r}")
    servers_raw = env.get("PANDA_ICE_SERVERS", "").strip()
    servers: tuple[dict[str, Any], ...] = ()
    if servers_raw:
        try:
            parsed = json.loads(servers_raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"PANDA_ICE_SERVERS is not valid JSON: {exc}") from exc
        if isinstance(parsed, dict):
            parsed = [parsed]
        if not isinstance(parsed, list):
            raise ValueError("PANDA_ICE_SERVERS must be a JSON list of RTCIceServer objects")
        servers = tuple(parsed)
    tcp_raw = env.get("PANDA_ICE_TCP_PORT", "").strip()
    udp_raw = env.get("PANDA_ICE_UDP_PORTS", "").strip()
    udp_ports: tuple[int, int] | None = None
    if udp_raw:
        low, sep, high = udp_raw.partition("-")
        if not sep:
            raise ValueError("PANDA_ICE_UDP_PORTS must look like 50000-50199")
        udp_ports = (int(low), int(high))
    return MediaConfig(
        ice_loopback=loopback_raw in ("1", "true", "yes"),
        ice_servers=servers,
        ice_tcp_port=int(tcp_raw) if tcp_raw else None,
        ice_public_ip=env.get("PANDA_ICE_PUBLIC_IP", "").strip() or None,
        ice_udp_ports=udp_ports,
        relay_path=env.get("PANDA_RELAY_PATH", "frame").strip() or "frame",
    )


IceConnectionHook = Callable[[Connection, MediaConfig], None]
_connection_hooks: list[IceConnectionHook] = []


def add_ice_connection_hook(hook: IceConnectionHook) -> None:
    """Register a function called for every new ICE agent (after the built-in setup)."""
    if hook not in _connection_hooks:
        _connection_hooks.append(hook)


def remove_ice_connection_hook(hook: IceConnectionHook) -> None:
    """Undo :func:`add_ice_connection_hook`."""
    if hook in _connection_hooks:
        _connection_hooks.remove(hook)


def rtc_configuration(config: MediaConfig) -> RTCConfiguration:
    """The RTCConfiguration for our peer connections: never aiortc's default public STUN."""
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in config.ice_servers
    ]
    # max-bundle: every transceiver shares the first transport, so tracks added by the
    # server never open an extra socket that bundling would close again.
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def configure_ice_connection(connection: Connection, config: MediaConfig) -> None:
    """Apply the config to one aioice agent, before it gathers candidates."""
    if config.ice_loopback:
        aiortc_patches.restrict_ice_to_addresses(connection, (LOOPBACK_ADDRESS,))
    for hook in list(_connection_hooks):
        hook(connection, config)


def configure_peer_connection(pc: RTCPeerConnection, config: MediaConfig) -> None:
    """Make every ICE agent ``pc`` creates go through :func:`configure_ice_connection`
    (and harden every DTLS transport against packets aiortc cannot parse, and have it
    deliver FIRs)."""

    def on_transport(dtls: RTCDtlsTransport) -> None:
        aiortc_patches.harden_dtls_transport(dtls)
        aiortc_patches.route_fir_by_fci(dtls)
        configure_ice_connection(aiortc_patches.dtls_ice_connection(dtls), config)

    aiortc_patches.on_dtls_transport_created(pc, on_transport)


def create_peer_connection(config: MediaConfig) -> RTCPeerConnection:
    """A new RTCPeerConnection with our ICE configuration applied."""
    pc = RTCPeerConnection(configuration=rtc_configuration(config))
    configure_peer_connection(pc, config)
    return pc
