"""How the relay's ICE gathers: loopback, UDP port range, public address and passive ICE-TCP.

aioice gathers UDP host candidates on ephemeral ports only. `configure()` takes over the
gathering of one `aioice.Connection` (the ICE agent of one server-side peer connection):

- UDP host candidates on ports from `ice_udp_ports` (PANDA_ICE_UDP_PORTS), on 127.0.0.1 only
  when `ice_loopback` is set, advertised with `ice_public_ip` (PANDA_ICE_PUBLIC_IP, 1:1 NAT);
- a passive TCP host candidate (RFC 6544 `tcptype passive`) on the port of the process-wide
  `IceTcpListener` (PANDA_ICE_TCP_PORT). Browsers connect to it with their `tcptype active`
  candidates; the listener reads RFC 4571 frames (2-byte length, then a STUN, DTLS, RTP or
  RTCP packet), finds the peer connection by the ICE username fragment of the first STUN
  binding request, and from then on the stream carries that connection's checks, DTLS and
  SRTP like a UDP 5-tuple would.

UDP stays preferred: TCP candidates get a lower type preference (RFC 6544 section 4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol

from panda.media import aioice_patches as patches

logger = logging.getLogger(__name__)

Addr = tuple[str, int]

# libwebrtc's type preference for TCP host candidates: below UDP host (126) and srflx (100).
TCP_HOST_TYPE_PREFERENCE = 90
# RFC 6544 section 4.2: direction-pref of a passive host candidate.
PASSIVE_DIRECTION_PREFERENCE = 4
MAX_FRAME = 0xFFFF  # RFC 4571: the length field has 16 bits.
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)  # Linux >= 6.15
UDP_SOCKET_BUFFER_SIZE = 1024 * 1024


class IceSettings(Protocol):
    """The ICE fields of `panda.config.Settings` / `panda.media.ice.MediaConfig`."""

    @property
    def ice_loopback(self) -> bool: ...

    @property
    def ice_tcp_port(self) -> int | None: ...

    @property
    def ice_public_ip(self) -> str | None: ...

    @property
    def ice_udp_ports(self) -> tuple[int, int] | None: ...


def tcp_candidate_priority(
    component: int,
    *,
    type_preference: int = TCP_HOST_TYPE_PREFERENCE,
    direction_preference: int = PASSIVE_DIRECTION_PREFERENCE,
    other_preference: int = 8191,
) -> int:
    """RFC 6544 section 4.2: priority of a TCP candidate (local pref = 2^13*dir + other)."""
    local_preference = (direction_preference << 13) + other_preference
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def parse_public_ip(value: str | None) -> str | None:
    """Validate PANDA_ICE_PUBLIC_IP: a literal IPv4/IPv6 address (no host names) or None."""
    if value is None or not value.strip():
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"PANDA_ICE_PUBLIC_IP must be an IP address, not {value!r}") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"PANDA_ICE_PUBLIC_IP must be a unicast address, not {value!r}")
    return str(address)


def check_port_range(ports: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate PANDA_ICE_UDP_PORTS as (first, last), both included."""
    if ports is None:
        return None
    lo, hi = ports
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"PANDA_ICE_UDP_PORTS must be an ascending port range, not {ports!r}")
    return lo, hi


@dataclass(frozen=True)
class IceTcpLimits:
    """Protection of the ICE-TCP port against bad or idle clients (sizes in bytes, times in s)."""

    # The first frame must be a STUN binding request: browsers send ~100-200 bytes.
    max_first_frame: int = 2048
    # Browsers send packets of at most ~1200-1500 bytes; anything far above is not WebRTC.
    max_frame: int = 16384
    # From accept to an authenticated STUN binding request.
    handshake_timeout: float = 10.0
    # Without a complete frame for this long (browsers check consent every few seconds).
    idle_timeout: float = 30.0
    # Not yet authenticated connections; beyond it the oldest is closed.
    max_pending: int = 128
    # All connections; beyond it new connections are closed at once.
    max_connections: int = 2048
    # Streams per peer connection (a browser opens one per local active candidate).
    max_streams_per_session: int = 8
    # Frames are dropped (as UDP would lose them) while this much waits to be sent: old media
    # queued behind a stall only delays the new (~1.4 s of 1.5 Mbit/s video).
    write_buffer_limit: int = 256 * 1024
    # Cap on TCP's retransmission timeout (Linux >= 6.15; ignored elsewhere): after a network
    # outage, exponential backoff would otherwise leave the stream silent for seconds more.
    # The kernel accepts 1000-120000.
    rto_max_ms: int = 1000
    # Non-STUN frames (DTLS, RTP) dropped before the first check: a browser that reconnects
    # a broken stream may send media before its next check. Beyond this, the stream closes.
    max_unauthenticated_frames: int = 16
    # When the stream of the selected pair closes and no other stream of that peer connection
    # is selected within this time, its ICE connection is closed (the peer connection fails
    # at once instead of after consent freshness expires, ~30 s). Browsers re-open a broken
    # active TCP connection within ~5 s.
    selected_stream_grace: float = 10.0


@dataclass
class IceTcpStats:
    """Counters of the listener, for logs, metrics and tests."""

    accepted: int = 0
    authenticated: int = 0
    rejected_full: int = 0
    evicted_pending: int = 0
    closed_garbage: int = 0
    closed_oversized: int = 0
    closed_unknown_user: int = 0
    closed_timeout: int = 0
    closed_too_many_streams: int = 0
    frames_dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class _Session:
    """The passive TCP protocols of one aioice connection, found by its username fragment."""

    ufrag: str
    password: bytes
    protocols: list[patches.StreamStunProtocol]
    streams: set[_IceTcpStream] = field(default_factory=set)


class _IceTcpStream(asyncio.Protocol):
    """One accepted TCP connection: RFC 4571 de-framing, then frames to its ICE session."""

    def __init__(self, listener: IceTcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)
        self.local: Addr = ("", 0)
        self.buffer = bytearray()
        self.session: _Session | None = None
        self.protocol: patches.StreamStunProtocol | None = None
        self.opened = time.monotonic()
        self.last_frame = self.opened
        self.unauthenticated_frames = 0
        self.closing = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        self.local = (str(local[0]), int(local[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, self.listener.limits.rto_max_ms)
        self.listener._stream_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.buffer
        buf += data
        limits = self.listener.limits
        pos = 0
        try:
            while len(buf) - pos >= 2:
                length = (buf[pos] << 8) | buf[pos + 1]
                limit = limits.max_frame if self.session else limits.max_first_frame
                if length > limit:
                    self.abort("oversized")
                    return
                if len(buf) - pos - 2 < length:
                    break
                frame = bytes(buf[pos + 2 : pos + 2 + length])
                pos += 2 + length
                self.last_frame = time.monotonic()
                self._frame_received(frame)
                if self.closing:
                    return
        finally:
            if not self.closing and pos:
                del buf[:pos]

    def eof_received(self) -> bool:
        # A half-closed stream cannot carry ICE any more (the peer stopped sending).
        self.abort("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.buffer = bytearray()
        self.listener._stream_closed(self)

    # frames

    def _frame_received(self, frame: bytes) -> None:
        if self.protocol is None:
            if not frame or frame[0] > 3:
                # Not STUN (RFC 7983): nobody to deliver it to yet.
                self.unauthenticated_frames += 1
                self.listener.stats.frames_dropped += 1
                if self.unauthenticated_frames > self.listener.limits.max_unauthenticated_frames:
                    self.abort("garbage")
                return
            if not self.listener._authenticate(self, frame):
                return
            assert self.protocol is not None
        try:
            self.protocol.frame_received(frame, self.peer)
        except Exception as exc:
            logger.debug("ICE-TCP %s: bad frame (%s)", self.peer, exc)
            self.abort("garbage")

    def write_frame(self, data: bytes) -> None:
        """Send one RFC 4571 frame; drop it if it cannot be framed or the peer reads too slowly."""
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            return
        if len(data) > MAX_FRAME or (
            transport.get_write_buffer_size() > self.listener.limits.write_buffer_limit
        ):
            self.listener.stats.frames_dropped += 1
            return
        transport.write(struct.pack("!H", len(data)) + data)

    def close(self) -> None:
        """Close the stream (its session is going away)."""
        self.abort("session-closed")

    def abort(self, reason: str) -> None:
        """Close the stream now and count why."""
        if self.closing:
            return
        self.closing = True
        self.listener._count(reason)
        if self.transport is not None:
            self.transport.abort()

    def __repr__(self) -> str:
        return f"IceTcpStream({self.peer[0]}:{self.peer[1]})"


class IceTcpListener:
    """The process-wide passive ICE-TCP port, shared by every peer connection.

    Streams are assigned to peer connections by the ICE username fragment of their first STUN
    binding request, whose MESSAGE-INTEGRITY must verify with that connection's password.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str | None = None,
        advertised_port: int | None = None,
        limits: IceTcpLimits | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.limits = limits or IceTcpLimits()
        self.stats = IceTcpStats()
        self._advertised_port = advertised_port
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._sessions: dict[str, list[_Session]] = {}
        self._streams: set[_IceTcpStream] = set()
        # Insertion-ordered, so the oldest pending stream is first.
        self._pending: dict[_IceTcpStream, None] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: IceSettings,
        *,
        worker_index: int | None = None,
        advertised_port: int | None = None,
        limits: IceTcpLimits | None = None,
    ) -> IceTcpListener | None:
        """The listener the settings ask for (not started), or None if ICE-TCP is off.

        With several worker processes each listens on PANDA_ICE_TCP_PORT + its worker index.
        """
        if settings.ice_tcp_port is None:
            return None
        if worker_index is None:
            worker_index = int(getattr(settings, "worker_index", 0) or 0)
        if advertised_port is None:
            advertised_port = getattr(settings, "ice_tcp_advertised_port", None)
        port = settings.ice_tcp_port + worker_index
        if advertised_port is not None:
            advertised_port += worker_index
        host = "127.0.0.1" if settings.ice_loopback else None
        return cls(port, host=host, advertised_port=advertised_port, limits=limits)

    @property
    def port(self) -> int | None:
        """The bound TCP port (None until started)."""
        return self._port

    @property
    def advertised_port(self) -> int | None:
        """The port written into candidates (differs from `port` behind a TCP proxy)."""
        return self._advertised_port or self._port

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self._streams)

    @property
    def pending(self) -> int:
        """Open TCP connections not yet assigned to a peer connection."""
        return len(self._pending)

    async def start(self) -> None:
        """Bind and listen."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _IceTcpStream(self),
            host=self.host,
            port=self.requested_port,
            reuse_address=True,
            backlog=512,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info("ICE-TCP listening on %s:%s", self.host or "*", self._port)

    async def close(self) -> None:
        """Stop listening and close every stream."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for stream in list(self._streams):
            stream.abort("shutdown")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # sessions

    def _register(
        self, connection: Connection, protocols: list[patches.StreamStunProtocol]
    ) -> None:
        session = _Session(
            ufrag=connection.local_username,
            password=connection.local_password.encode("utf8"),
            protocols=protocols,
        )
        self._sessions.setdefault(session.ufrag, []).append(session)

    def _unregister(self, protocol: patches.StreamStunProtocol) -> None:
        ufrag = protocol.connection.local_username
        sessions = self._sessions.get(ufrag, [])
        for session in sessions:
            if protocol in session.protocols:
                session.protocols.remove(protocol)
                if not session.protocols:
                    sessions.remove(session)
                    for stream in list(session.streams):
                        stream.abort("session-closed")
                break
        if not sessions:
            self._sessions.pop(ufrag, None)

    def _authenticate(self, stream: _IceTcpStream, frame: bytes) -> bool:
        """Assign a new stream to a session by its first frame, or close it."""
        try:
            message = stun.parse_message(frame)
        except Exception:
            stream.abort("garbage")
            return False
        username = message.attributes.get("USERNAME")
        if (
            message.message_method != stun.Method.BINDING
            or message.message_class != stun.Class.REQUEST
            or not isinstance(username, str)
            or "MESSAGE-INTEGRITY" not in message.attributes
        ):
            stream.abort("garbage")
            return False
        ufrag = username.partition(":")[0]
        session = next(
            (s for s in self._sessions.get(ufrag, []) if s.protocols),
            None,
        )
        if session is None or not message.check_message_integrity(session.password):
            stream.abort("unknown-user")
            return False
        if len(session.streams) >= self.limits.max_streams_per_session:
            stream.abort("too-many-streams")
            return False
        protocol = next(
            (p for p in session.protocols if p.local_candidate.host == stream.local[0]),
            session.protocols[0],
        )
        self._pending.pop(stream, None)
        session.streams.add(stream)
        stream.session = session
        stream.protocol = protocol
        protocol.attach(stream.peer, stream)
        self.stats.authenticated += 1
        return True

    # streams

    def _stream_opened(self, stream: _IceTcpStream) -> None:
        self.stats.accepted += 1
        if len(self._streams) >= self.limits.max_connections:
            self._streams.add(stream)
            stream.abort("full")
            return
        self._streams.add(stream)
        while len(self._pending) >= self.limits.max_pending:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest)
            oldest.abort("evicted")
        self._pending[stream] = None

    def _stream_closed(self, stream: _IceTcpStream) -> None:
        self._streams.discard(stream)
        self._pending.pop(stream, None)
        if stream.session is not None:
            stream.session.streams.discard(stream)
        protocol = stream.protocol
        if protocol is not None:
            protocol.detach(stream.peer, stream)
            pair = patches.selected_pair(protocol.connection)
            if (
                pair is not None
                and pair.protocol is protocol
                and pair.remote_addr == stream.peer
                and not protocol.closed
            ):
                asyncio.get_running_loop().call_later(
                    self.limits.selected_stream_grace, self._check_selected, protocol
                )

    def _check_selected(self, protocol: patches.StreamStunProtocol) -> None:
        """Close an ICE connection whose selected TCP stream is gone and was not replaced."""
        if protocol.closed:
            return
        connection = protocol.connection
        pair = patches.selected_pair(connection)
        if pair is None or pair.protocol is not protocol or pair.remote_addr in protocol.streams:
            return
        logger.info("ICE-TCP: selected stream of %s gone, closing", connection)
        task = asyncio.ensure_future(connection.close())
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)

    def _count(self, reason: str) -> None:
        stats = self.stats
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        attr = {
            "full": "rejected_full",
            "evicted": "evicted_pending",
            "garbage": "closed_garbage",
            "oversized": "closed_oversized",
            "unknown-user": "closed_unknown_user",
            "timeout": "closed_timeout",
            "too-many-streams": "closed_too_many_streams",
        }.get(reason)
        if attr is not None:
            setattr(stats, attr, getattr(stats, attr) + 1)

    async def _sweep(self) -> None:
        limits = self.limits
        interval = max(0.02, min(1.0, limits.handshake_timeout / 4, limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for stream in list(self._streams):
                if stream.session is None:
                    expired = now - stream.opened > limits.handshake_timeout
                else:
                    expired = now - stream.last_frame > limits.idle_timeout
                if expired:
                    stream.abort("timeout")


# Gathering


def _advertise(address: str, public_ip: str | None) -> str:
    if public_ip is not None and patches.ip_version(address) == patches.ip_version(public_ip):
        return public_ip
    return address


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


async def _bind_udp(
    connection: Connection, address: str, ports: tuple[int, int] | None
) -> StunProtocol | None:
    loop = asyncio.get_running_loop()
    if ports is None:
        candidates_ports = [0]
    else:
        lo, hi = ports
        # Start at a random offset so concurrent connections rarely collide.
        start = random.randint(lo, hi)
        candidates_ports = [*range(start, hi + 1), *range(lo, start)]
    for port in candidates_ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address, port)
            )
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES) and port != 0:
                continue
            logger.info("ICE: could not bind UDP %s:%s - %s", address, port, exc)
            return None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        return protocol
    logger.warning("ICE: no free UDP port in %s-%s on %s", ports[0], ports[1], address)  # type: ignore[index]
    return None


def configure(
    connection: Connection,
    settings: IceSettings,
    listener: IceTcpListener | None = None,
) -> None:
    """Make `connection` gather as `settings` say, adding a passive TCP candidate on `listener`.

    Call it once per server-side ICE connection, before its candidates are gathered (aiortc
    gathers in `setLocalDescription`). `listener` must be started; None leaves ICE-TCP off.
    """
    if patches.gathering_started(connection):
        raise RuntimeError("configure() must run before the connection gathers candidates")
    public_ip = None if settings.ice_loopback else parse_public_ip(settings.ice_public_ip)
    ports = check_port_range(settings.ice_udp_ports)
    loopback = settings.ice_loopback

    async def gather(component: int, addresses: list[str], wait: int) -> list[Candidate]:
        gathers_host, use_ipv4, _use_ipv6 = patches.host_policy(connection)
        if gathers_host and loopback:
            # aioice never gathers on loopback; tests and single-machine setups need it.
            addresses = ["127.0.0.1"] if use_ipv4 else ["::1"]
        candidates: list[Candidate] = []
        udp: list[StunProtocol] = []
        for address in addresses:
            protocol = await _bind_udp(connection, address, ports)
            if protocol is None:
                continue
            bound = protocol.transport.get_extra_info("sockname")
            host = _advertise(bound[0], public_ip)
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=bound[1],
                type="host",
            )
            patches.add_protocol(connection, protocol)
            udp.append(protocol)
            candidates.append(protocol.local_candidate)

        # Server-reflexive candidates only help when the public address is not known.
        if connection.stun_server and public_ip is None:
            tasks = [
                asyncio.create_task(
                    patches.server_reflexive_candidate(protocol, connection.stun_server)
                )
                for protocol in udp
                if patches.ip_version(protocol.local_candidate.host) == 4
            ]
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=wait)
                for task in pending:
                    task.cancel()
                for task in done:
                    if task.exception() is None:
                        candidates.append(task.result()[0])
        if connection.turn_server:
            candidates += await patches.default_component_candidates(
                connection, component, [], wait
            )

        if listener is not None and gathers_host and component == 1:
            candidates += _add_tcp(connection, listener, component, addresses, public_ip)
        return candidates

    patches.override_gathering(connection, gather)


def _add_tcp(
    connection: Connection,
    listener: IceTcpListener,
    component: int,
    addresses: list[str],
    public_ip: str | None,
) -> list[Candidate]:
    port = listener.advertised_port
    if port is None:
        logger.warning("ICE-TCP listener not started: no TCP candidate")
        return []
    protocols: list[patches.StreamStunProtocol] = []
    for index, host in enumerate(_dedupe(_advertise(a, public_ip) for a in addresses)):
        candidate = patches.PassiveTcpCandidate(
            foundation=candidate_foundation("host", "tcp", host),
            component=component,
            transport="tcp",
            priority=tcp_candidate_priority(component, other_preference=8191 - index),
            host=host,
            port=port,
            type="host",
            tcptype="passive",
        )
        protocol = patches.StreamStunProtocol(connection, candidate, on_close=listener._unregister)
        patches.add_protocol(connection, protocol)
        protocols.append(protocol)
    if protocols:
        listener._register(connection, protocols)
    return [p.local_candidate for p in protocols]


def connection_hook(
    listener: IceTcpListener | None,
) -> Callable[[Connection, IceSettings], None]:
    """A `(connection, config)` hook applying `configure()` with `listener` to each ICE agent.

    For `panda.media.ice.add_ice_connection_hook`, which calls it for every ICE agent a peer
    connection creates, before it gathers.
    """

    def hook(connection: Connection, settings: IceSettings) -> None:
        configure(connection, settings, listener)

    return hook


class IceNetwork:
    """The app-wide ICE setup: the ICE-TCP listener (if configured) and the hook that applies
    `configure()` to every ICE agent the media layer creates (`panda.media.ice`).

    `await IceNetwork.start(settings)` at app startup, `await network.close()` at shutdown
    (after the rooms are closed).
    """

    def __init__(self, listener: IceTcpListener | None) -> None:
        self.listener = listener
        self.hook = connection_hook(listener)

    @classmethod
    async def start(
        cls,
        settings: IceSettings,
        *,
        worker_index: int | None = None,
        advertised_port: int | None = None,
        limits: IceTcpLimits | None = None,
    ) -> IceNetwork:
        """Start the listener PANDA_ICE_TCP_PORT asks for and hook into the media layer.

        `worker_index` defaults to `settings.worker_index` (0 when absent).
        """
        from panda.media import ice  # the media layer, which calls the hook

        parse_public_ip(settings.ice_public_ip)  # fail at startup, not at the first call
        check_port_range(settings.ice_udp_ports)
        listener = IceTcpListener.from_settings(
            settings, worker_index=worker_index, advertised_port=advertised_port, limits=limits
        )
        if listener is not None:
            await listener.start()
        network = cls(listener)
        ice.add_ice_connection_hook(network.hook)
        return network

    async def close(self) -> None:
        """Unhook and stop the listener."""
        from panda.media import ice

        ice.remove_ice_connection_hook(self.hook)
        if self.listener is not None:
            await self.listener.close()


def configure_peer_connection(
    pc: Any, settings: IceSettings, listener: IceTcpListener | None = None
) -> int:
    """`configure()` every not yet gathered ICE connection of an aiortc RTCPeerConnection.

    Safe to call before each `setLocalDescription`; returns how many were configured.
    """
    transports = []
    for transceiver in pc.getTransceivers():
        transports.append(transceiver.receiver.transport)
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    count = 0
    seen: set[int] = set()
    for dtls in transports:
        connection = dtls.transport._connection
        if id(connection) in seen or patches.gathering_started(connection):
            continue
        seen.add(id(connection))
        if getattr(connection, "_panda_configured", False):
            continue
        configure(connection, settings, listener)
        connection._panda_configured = True
        count += 1
    return count


def selected_transport(connection: Connection) -> str | None:
    """The selected pair's transport, "udp" or "tcp"; None before ICE completes."""
    pair = patches.selected_pair(connection)
    if pair is None:
        return None
    return pair.local_candidate.transport.lower()
