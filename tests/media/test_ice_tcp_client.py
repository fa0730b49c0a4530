"""An active ICE-TCP client for the tests, and aioice-level tests of a TCP-only ICE session.

aioice has no ICE-TCP at all; the browser side of the tests needs `tcptype active`
candidates, so this module gives a client-side aioice connection exactly that: its only
candidate is an active TCP one, and its checks, DTLS and media go over RFC 4571 frames on a
TCP connection it opens to the server's passive candidate.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice
import pytest
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation
from aioice.ice import StunProtocol

from panda.media import aioice_patches as patches
from panda.media import ice_tcp

Addr = tuple[str, int]


@dataclass(frozen=True)
class Cfg:
    """The ICE fields of the media config, as the relay will pass them."""

    ice_loopback: bool = True
    ice_tcp_port: int | None = 0
    ice_public_ip: str | None = None
    ice_udp_ports: tuple[int, int] | None = None


class _ClientStream(asyncio.Protocol):
    def __init__(self, owner: ActiveTcpStunProtocol, addr: Addr) -> None:
        self.owner = owner
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.queue: list[bytes] = []
        self.buffer = bytearray()
        self.task = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, self.addr[0], self.addr[1])
        except OSError:
            self.owner.streams.pop(self.addr, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.queue:
            self.write(data)
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + length:
                break
            frame = bytes(self.buffer[2 : 2 + length])
            del self.buffer[: 2 + length]
            self.owner.datagram_received(frame, self.addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.streams.get(self.addr) is self:
            del self.owner.streams[self.addr]

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.queue.append(data)
        elif not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(data)) + data)

    def close(self) -> None:
        self.task.cancel()
        if self.transport is not None:
            self.transport.close()


class ActiveTcpStunProtocol(StunProtocol):
    """A client `tcptype active` candidate: opens a TCP connection per remote address."""

    def __init__(self, receiver: aioice.Connection, host: str = "127.0.0.1") -> None:
        super().__init__(receiver)
        self.local_candidate = Candidate(
            foundation=candidate_foundation("host", "tcp", host),
            component=1,
            transport="tcp",
            priority=ice_tcp.tcp_candidate_priority(1, direction_preference=6),
            host=host,
            port=9,  # RFC 6544: active candidates carry the discard port
            type="host",
            tcptype="active",
        )
        self.streams: dict[Addr, _ClientStream] = {}

    def send_stun(self, message: stun.Message, addr: Addr) -> None:
        self._write(bytes(message), addr)

    async def send_data(self, data: bytes, addr: Addr) -> None:
        self._write(data, addr)

    def _write(self, data: bytes, addr: Addr) -> None:
        stream = self.streams.get(addr)
        if stream is None:
            stream = self.streams[addr] = _ClientStream(self, addr)
        stream.write(data)

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()


def make_tcp_only_client(connection: aioice.Connection) -> ActiveTcpStunProtocol:
    """Make `connection` gather a single active TCP candidate (no UDP at all)."""
    protocol = ActiveTcpStunProtocol(connection)

    async def gather(component: int, addresses: list[str], wait: int) -> list[Candidate]:
        patches.add_protocol(connection, protocol)
        return [protocol.local_candidate]

    patches.override_gathering(connection, gather)
    return protocol


async def connect_pair(
    server: aioice.Connection, client: aioice.Connection, *, server_candidates: Any = None
) -> None:
    """Exchange credentials and candidates (all at once, then end-of-candidates) and connect."""
    await asyncio.gather(server.gather_candidates(), client.gather_candidates())
    server.remote_username, server.remote_password = client.local_username, client.local_password
    client.remote_username, client.remote_password = server.local_username, server.local_password
    for c in client.local_candidates:
        await server.add_remote_candidate(c)
    await server.add_remote_candidate(None)
    for c in server_candidates if server_candidates is not None else server.local_candidates:
        await client.add_remote_candidate(c)
    await client.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(server.connect(), client.connect()), 30)


async def until(condition: Callable[[], bool], limit: float = 10) -> None:
    """Wait for a condition the server reaches asynchronously (accepts, closes)."""
    async with asyncio.timeout(limit):
        # Server-side counters have no event to await; poll them briefly.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def listener() -> Any:
    lst = ice_tcp.IceTcpListener(0, host="127.0.0.1")
    await lst.start()
    yield lst
    await lst.close()


async def test_aioice_session_over_tcp_only(listener: ice_tcp.IceTcpListener) -> None:
    server = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(server, Cfg(), listener)
    client = aioice.Connection(ice_controlling=True)
    make_tcp_only_client(client)
    try:
        await connect_pair(server, client)
        assert ice_tcp.selected_transport(server) == "tcp"
        assert ice_tcp.selected_transport(client) == "tcp"
        assert listener.connections == 1 and listener.stats.authenticated == 1

        # Datagrams both ways, as DTLS and SRTP would use them.
        await client.send(b"\x16hello-from-client")
        assert await asyncio.wait_for(server.recv(), 5) == b"\x16hello-from-client"
        big = bytes(range(256)) * 5
        await server.send(big)
        assert await asyncio.wait_for(client.recv(), 5) == big

        # Code written for UDP protocols finds a transport-like object (closing it drops
        # the streams, like closing a UDP socket).
        tcp_protocol = next(
            p for p in server._protocols if isinstance(p, patches.StreamStunProtocol)
        )
        assert tcp_protocol.transport.get_extra_info("sockname") == ("127.0.0.1", listener.port)

        # The peer learned over TCP is recorded as a TCP candidate.
        pair = patches.selected_pair(server)
        assert pair is not None
        assert pair.remote_candidate.transport == "tcp"
    finally:
        await client.close()
        await server.close()
    # Closing the ICE connection closes its streams and forgets its username fragment.
    assert listener._sessions == {}


async def test_connection_hook_configures_each_agent(listener: ice_tcp.IceTcpListener) -> None:
    hook = ice_tcp.connection_hook(listener)
    server = aioice.Connection(ice_controlling=False)
    hook(server, Cfg())
    try:
        await server.gather_candidates()
        transports = sorted(c.transport for c in server.local_candidates)
        assert transports == ["tcp", "udp"]
        assert all(c.host == "127.0.0.1" for c in server.local_candidates)
    finally:
        await server.close()


async def test_udp_candidates_outrank_tcp(listener: ice_tcp.IceTcpListener) -> None:
    server = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(server, Cfg(), listener)
    try:
        await server.gather_candidates()
        udp = [c for c in server.local_candidates if c.transport == "udp"]
        tcp = [c for c in server.local_candidates if c.transport == "tcp"]
        assert udp and tcp
        assert min(c.priority for c in udp) > max(c.priority for c in tcp)
        assert all(c.tcptype == "passive" and c.port == listener.port for c in tcp)
        assert all(c.host == "127.0.0.1" for c in server.local_candidates)
    finally:
        await server.close()


async def test_two_sessions_share_one_port(listener: ice_tcp.IceTcpListener) -> None:
    servers = [aioice.Connection(ice_controlling=False) for _ in range(2)]
    clients = [aioice.Connection(ice_controlling=True) for _ in range(2)]
    for s in servers:
        ice_tcp.configure(s, Cfg(), listener)
    for c in clients:
        make_tcp_only_client(c)
    try:
        await asyncio.gather(*(connect_pair(s, c) for s, c in zip(servers, clients, strict=True)))
        for i, c in enumerate(clients):
            await c.send(b"\x17to-server-%d" % i)
        for i, s in enumerate(servers):
            assert await asyncio.wait_for(s.recv(), 5) == b"\x17to-server-%d" % i
        assert listener.connections == 2
    finally:
        for conn in [*clients, *servers]:
            await conn.close()


async def test_reconnected_stream_is_renominated(listener: ice_tcp.IceTcpListener) -> None:
    """A broken stream re-opened by the browser carries the session again after its next check."""
    server = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(server, Cfg(), listener)
    client = aioice.Connection(ice_controlling=True)
    active = make_tcp_only_client(client)
    try:
        await connect_pair(server, client)
        pair = patches.selected_pair(client)
        assert pair is not None
        old = active.streams[pair.remote_addr]
        assert old.transport is not None
        old_addr = old.transport.get_extra_info("sockname")[:2]
        old.transport.abort()
        await until(lambda: listener.connections == 0)

        # The client re-opens the stream by sending; media first, then a nominating check.
        await client.send(b"\x17lost: arrives before the check")
        request = client.build_request(pair, nominate=True)
        assert client.remote_password is not None
        await pair.protocol.request(
            request, pair.remote_addr, integrity_key=client.remote_password.encode()
        )
        new = active.streams[pair.remote_addr]
        assert new.transport is not None
        new_addr = new.transport.get_extra_info("sockname")[:2]
        assert new_addr != old_addr

        def renominated() -> bool:
            selected = patches.selected_pair(server)
            return selected is not None and selected.remote_addr == new_addr

        await until(renominated)
        await server.send(b"\x17over the new stream")
        assert await asyncio.wait_for(client.recv(), 5) == b"\x17over the new stream"
        await client.send(b"\x17and back")
        assert await asyncio.wait_for(server.recv(), 5) == b"\x17and back"
    finally:
        await client.close()
        await server.close()


async def test_lost_selected_stream_closes_the_ice_connection() -> None:
    limits = ice_tcp.IceTcpLimits(selected_stream_grace=0.1)
    listener = ice_tcp.IceTcpListener(0, host="127.0.0.1", limits=limits)
    await listener.start()
    server = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(server, Cfg(), listener)
    client = aioice.Connection(ice_controlling=True)
    active = make_tcp_only_client(client)
    try:
        await connect_pair(server, client)
        events = asyncio.ensure_future(server.get_event())
        for stream in list(active.streams.values()):
            assert stream.transport is not None
            stream.transport.abort()
        # aiortc's ICE transport turns this event into the "failed" state.
        assert isinstance(await asyncio.wait_for(events, 10), aioice.ice.ConnectionClosed)
        assert listener._sessions == {}
    finally:
        await client.close()
        await server.close()
        await listener.close()
