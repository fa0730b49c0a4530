"""Every reach into aioice internals made by the ICE-TCP and port-range code, in one place.

aioice (pinned through aiortc 1.16) gathers UDP host candidates only. We extend one
`aioice.Connection` at a time, never aioice's classes globally:

- `override_gathering` replaces the connection's `get_component_candidates` (called by
  `gather_candidates`) with our own coroutine;
- `StreamStunProtocol` is a `StunProtocol` whose "datagrams" are RFC 4571 frames on TCP
  streams: aioice pairs it, sends checks, responses and media through it exactly like a UDP
  socket, and it routes each by remote address to the right stream.

`check_internals()` verifies that everything used here still exists with the expected shape;
the tests call it so an aioice upgrade that moves these internals fails loudly.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import (
    CandidatePair,
    Connection,
    StunProtocol,
    TransportPolicy,
    get_host_addresses,
    server_reflexive_candidate,
)

logger = logging.getLogger(__name__)

Addr = tuple[str, int]
GatherFn = Callable[[int, list[str], int], Awaitable[list[Candidate]]]

__all__ = [
    "FrameWriter",
    "PassiveTcpCandidate",
    "StreamStunProtocol",
    "add_protocol",
    "check_internals",
    "default_component_candidates",
    "gathering_started",
    "get_host_addresses",
    "host_policy",
    "override_gathering",
    "selected_pair",
    "server_reflexive_candidate",
]


class FrameWriter(Protocol):
    """One TCP stream as seen by a `StreamStunProtocol`: it can carry one frame at a time."""

    def write_frame(self, data: bytes) -> None:
        """Send one frame (dropped silently if the stream cannot take it)."""

    def close(self) -> None:
        """Close the stream."""


class PassiveTcpCandidate(Candidate):
    """A local `tcptype passive` candidate: it pairs only with remote active TCP candidates.

    A passive candidate never opens connections (RFC 6544 section 5.1), so pairing it with a
    remote passive or simultaneous-open candidate, or with UDP, makes no sense.
    """

    def can_pair_with(self, other: Candidate) -> bool:
        """Pair with remote `tcptype active` candidates of the same component and IP version."""
        if other.transport.lower() != "tcp" or (other.tcptype or "").lower() != "active":
            return False
        return super().can_pair_with(other)


class _StreamsTransport:
    """What code written for a UDP `StunProtocol` finds as `.transport` on a stream protocol."""

    def __init__(self, protocol: StreamStunProtocol) -> None:
        self._protocol = protocol

    def sendto(self, data: bytes, addr: Addr) -> None:
        self._protocol._write(data, addr)

    def close(self) -> None:
        for stream in list(self._protocol.streams.values()):
            stream.close()

    def is_closing(self) -> bool:
        return self._protocol.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._protocol.local_candidate.host, self._protocol.local_candidate.port)
        return default


class StreamStunProtocol(StunProtocol):
    """A `StunProtocol` carried over TCP streams (one per remote address) instead of UDP.

    aioice addresses everything it sends to a remote `(host, port)`; for TCP that is the peer
    address of an accepted stream. Frames for unknown addresses are dropped, as a UDP socket
    would drop them on the network.
    """

    def __init__(
        self,
        receiver: Connection,
        local_candidate: Candidate,
        on_close: Callable[[StreamStunProtocol], None] | None = None,
    ) -> None:
        super().__init__(receiver)
        self.local_candidate = local_candidate
        self.streams: dict[Addr, FrameWriter] = {}
        self.closed = False
        self._on_close = on_close
        self.transport = _StreamsTransport(self)  # type: ignore[assignment]

    @property
    def connection(self) -> Connection:
        """The aioice connection this protocol belongs to."""
        return self.receiver

    def attach(self, addr: Addr, stream: FrameWriter) -> None:
        """Route frames for `addr` to `stream` from now on."""
        self.streams[addr] = stream

    def detach(self, addr: Addr, stream: FrameWriter) -> None:
        """Forget `stream` (closed); later frames for `addr` are dropped."""
        if self.streams.get(addr) is stream:
            del self.streams[addr]

    def frame_received(self, data: bytes, addr: Addr) -> None:
        """Handle one frame read from the stream of `addr`, exactly like a UDP datagram."""
        if self.closed:
            return
        # Raises (ValueError, struct.error, ...) on some malformed STUN messages: the stream
        # closes itself then.
        self.datagram_received(data, addr)
        if data and data[0] < 4:
            self._mark_learned_tcp(addr)

    def _mark_learned_tcp(self, addr: Addr) -> None:
        # aioice records every peer-reflexive candidate as UDP; ours arrived over TCP.
        for pair in self.receiver._check_list:
            remote = pair.remote_candidate
            if (
                pair.protocol is self
                and remote.type == "prflx"
                and (remote.host, remote.port) == addr
                and remote.transport != "tcp"
            ):
                remote.transport = "tcp"
                remote.tcptype = "active"

    def send_stun(self, message: stun.Message, addr: Addr) -> None:
        """Send a STUN message to the stream of `addr` (dropped if there is none)."""
        self._write(bytes(message), addr)

    async def send_data(self, data: bytes, addr: Addr) -> None:
        """Send a media/DTLS datagram to the stream of `addr` (dropped if there is none)."""
        self._write(data, addr)

    def _write(self, data: bytes, addr: Addr) -> None:
        stream = self.streams.get(addr)
        if stream is not None and not self.closed:
            stream.write_frame(data)

    async def close(self) -> None:
        """Close every stream of this protocol; aioice calls this from `Connection.close()`."""
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()
        if self._on_close is not None:
            self._on_close(self)

    def __repr__(self) -> str:
        return f"tcp-protocol({self.id})"


def gathering_started(connection: Connection) -> bool:
    """Whether `gather_candidates()` already ran (too late to change how it gathers)."""
    return bool(connection._local_candidates_start)


def host_policy(connection: Connection) -> tuple[bool, bool, bool]:
    """(gathers host candidates, use IPv4, use IPv6) for this connection."""
    return (
        connection._transport_policy == TransportPolicy.ALL,
        bool(connection._use_ipv4),
        bool(connection._use_ipv6),
    )


def override_gathering(connection: Connection, gather: GatherFn) -> None:
    """Make `connection.gather_candidates()` get each component's candidates from `gather`."""

    async def get_component_candidates(
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice's signature
    ) -> list[Candidate]:
        return await gather(component, addresses, timeout)

    # An instance attribute shadows the method for this connection only.
    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


async def default_component_candidates(
    connection: Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,  # noqa: ASYNC109 - aioice's signature
) -> list[Candidate]:
    """aioice's own gathering (used for TURN with no host addresses)."""
    return await Connection.get_component_candidates(
        connection, component=component, addresses=addresses, timeout=timeout
    )


def add_protocol(connection: Connection, protocol: StunProtocol) -> None:
    """Register a protocol (and so its local candidate) with the connection for pairing."""
    connection._protocols.append(protocol)


def selected_pair(connection: Connection, component: int = 1) -> CandidatePair | None:
    """The nominated candidate pair of a component, or None before ICE completes."""
    return connection._nominated.get(component)


def check_internals() -> None:
    """Raise RuntimeError if an aioice internal this module relies on is gone or changed."""
    problems: list[str] = []

    def params(fn: Any) -> list[str]:
        return list(inspect.signature(fn).parameters)

    if params(Connection.get_component_candidates)[:4] != [
        "self",
        "component",
        "addresses",
        "timeout",
    ]:
        problems.append("Connection.get_component_candidates(self, component, addresses, timeout)")
    gather_src = inspect.getsource(Connection.gather_candidates)
    if "self.get_component_candidates(" not in gather_src:
        problems.append("gather_candidates no longer calls self.get_component_candidates")
    if params(Connection.request_received)[:4] != ["self", "message", "addr", "protocol"]:
        problems.append("Connection.request_received(self, message, addr, protocol)")
    if params(Connection.data_received)[:3] != ["self", "data", "component"]:
        problems.append("Connection.data_received(self, data, component)")
    sendto_src = inspect.getsource(Connection.sendto)
    if "protocol.send_data(" not in sendto_src:
        problems.append("Connection.sendto no longer sends through pair.protocol.send_data")
    for name in ("request", "datagram_received", "send_stun", "send_data", "close"):
        if not callable(getattr(StunProtocol, name, None)):
            problems.append(f"StunProtocol.{name}")
    if params(StunProtocol.datagram_received)[:3] != ["self", "data", "addr"]:
        problems.append("StunProtocol.datagram_received(self, data, addr)")
    if params(server_reflexive_candidate)[:2] != ["protocol", "stun_server"]:
        problems.append("server_reflexive_candidate(protocol, stun_server)")
    if "pair.protocol.request(" not in inspect.getsource(Connection.check_start):
        problems.append("Connection.check_start no longer uses pair.protocol.request")
    if "(message, addr, protocol)" not in inspect.getsource(StunProtocol.datagram_received) and (
        "request_received(message, addr, self)"
        not in inspect.getsource(StunProtocol.datagram_received)
    ):
        problems.append("StunProtocol.datagram_received no longer hands requests to the receiver")

    # Attributes only exist on instances; build one without touching the network.
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        conn = Connection(ice_controlling=False)
        for attr in (
            "_local_candidates_start",
            "_transport_policy",
            "_use_ipv4",
            "_use_ipv6",
            "_protocols",
            "_check_list",
            "_nominated",
            "stun_server",
            "turn_server",
        ):
            if not hasattr(conn, attr):
                problems.append(f"Connection.{attr}")
        proto = StunProtocol(conn)
        if not isinstance(getattr(proto, "transactions", None), dict):
            problems.append("StunProtocol.transactions")
        if not hasattr(proto, "receiver"):
            problems.append("StunProtocol.receiver")
    pair_fields = {"protocol", "remote_candidate", "state", "nominated"}
    pair_src = inspect.getsource(CandidatePair.__init__)
    for name in pair_fields:
        if f"self.{name} =" not in pair_src:
            problems.append(f"CandidatePair.{name}")
    if problems:
        raise RuntimeError("aioice internals changed: " + "; ".join(problems))


def ip_version(address: str) -> int:
    """4 or 6 for an IP address string."""
    return ipaddress.ip_address(address).version
