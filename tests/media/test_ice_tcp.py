"""The ICE-TCP listener on the wire (raw RFC 4571 clients), its limits, and gathering options."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aioice
import pytest
from aioice import stun
from aioice.candidate import Candidate

from panda.media import aioice_patches as patches
from panda.media import ice_tcp
from tests.media.test_ice_tcp_client import Cfg, until

CLIENT_UFRAG = "clnt"
SHORT = ice_tcp.IceTcpLimits(handshake_timeout=0.3, idle_timeout=0.3)


@dataclass
class Session:
    """A server ICE connection with a passive TCP candidate on `listener`."""

    connection: aioice.Connection
    listener: ice_tcp.IceTcpListener

    @property
    def ufrag(self) -> str:
        return self.connection.local_username

    @property
    def password(self) -> bytes:
        return self.connection.local_password.encode()


def binding_request(
    username: str,
    key: bytes | None,
    *,
    method: stun.Method = stun.Method.BINDING,
    message_class: stun.Class = stun.Class.REQUEST,
) -> stun.Message:
    msg = stun.Message(message_method=method, message_class=message_class)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1845501695
    msg.attributes["ICE-CONTROLLING"] = 1234
    if key is not None:
        msg.add_message_integrity(key)
    msg.add_fingerprint()
    return msg


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
    return await asyncio.wait_for(reader.readexactly(length), 10)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Wait until the server closes the stream (EOF or reset); True once it did."""
    try:
        while await asyncio.wait_for(reader.read(65536), 10):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def open_stream(
    listener: ice_tcp.IceTcpListener,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.port)


async def handshake(
    session: Session,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, stun.Message]:
    """Open a stream and get the first binding request answered."""
    reader, writer = await open_stream(session.listener)
    request = binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password)
    writer.write(frame(bytes(request)))
    response = stun.parse_message(await read_frame(reader))
    return reader, writer, response


async def make_listener(limits: ice_tcp.IceTcpLimits | None = None) -> ice_tcp.IceTcpListener:
    listener = ice_tcp.IceTcpListener(0, host="127.0.0.1", limits=limits)
    await listener.start()
    return listener


async def make_session(listener: ice_tcp.IceTcpListener, cfg: Any = None) -> Session:
    connection = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(connection, cfg or Cfg(), listener)
    await connection.gather_candidates()
    return Session(connection, listener)


@pytest.fixture
async def session(request: pytest.FixtureRequest) -> AsyncIterator[Session]:
    limits = getattr(request, "param", None)
    listener = await make_listener(limits)
    sess = await make_session(listener)
    yield sess
    await sess.connection.close()
    await listener.close()


# The happy path on the wire


async def test_binding_request_answered_on_the_stream(session: Session) -> None:
    _reader, writer, response = await handshake(session)
    assert response.message_class == stun.Class.RESPONSE
    assert response.check_message_integrity(session.password)
    assert response.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")[:2]
    assert session.listener.pending == 0 and session.listener.connections == 1
    writer.close()


async def test_frames_split_and_coalesced(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    first = frame(bytes(binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password)))
    # One byte per segment, then two requests in one segment.
    for byte in first:
        writer.write(bytes([byte]))
        await writer.drain()
    assert stun.parse_message(await read_frame(reader)).message_class == stun.Class.RESPONSE
    two = [binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password) for _ in range(2)]
    writer.write(b"".join(frame(bytes(m)) for m in two))
    ids = {stun.parse_message(await read_frame(reader)).transaction_id for _ in range(2)}
    assert ids == {m.transaction_id for m in two}
    writer.close()


# Bad input: each bad stream is closed, the listener keeps serving


async def test_garbage_first_frame_closed_then_listener_still_serves(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    writer.write(frame(b"\x00\x01 looks like STUN for one byte, is not"))
    assert await closed_by_server(reader)
    await until(lambda: session.listener.stats.closed_garbage == 1)
    _, writer2, response = await handshake(session)
    assert response.message_class == stun.Class.RESPONSE
    writer.close()
    writer2.close()


async def test_media_before_first_check_dropped_then_check_accepted(session: Session) -> None:
    # A browser re-opening a broken stream may send DTLS/RTP before its next check.
    reader, writer = await open_stream(session.listener)
    writer.write(frame(b"\x17\xfe\xfd dtls record") + frame(b"\x80\x60 rtp packet"))
    request = binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password)
    writer.write(frame(bytes(request)))
    response = stun.parse_message(await read_frame(reader))
    assert response.transaction_id == request.transaction_id
    assert session.listener.stats.frames_dropped == 2
    writer.close()


async def test_endless_non_stun_frames_closed(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    limit = session.listener.limits.max_unauthenticated_frames
    writer.write(frame(b"\x80\x60 rtp packet") * (limit + 1))
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_garbage == 1
    writer.close()


async def test_http_request_on_the_port_is_closed(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GE" reads as a 18245-byte frame
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_oversized == 1
    writer.close()


async def test_malformed_stun_after_handshake_closes_only_that_stream(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    # A PRIORITY attribute of 2 bytes: aioice's parser fails with struct.error on it.
    bad = (
        struct.pack("!HHI12s", 0x0001, 8, stun.COOKIE, b"x" * 12)
        + struct.pack("!HH", 0x0024, 2)
        + b"\x00\x00\x00\x00"
    )
    writer.write(frame(bad))
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_garbage == 1
    # The session is still registered: a new stream gets in.
    _, writer2, response = await handshake(session)
    assert response.message_class == stun.Class.RESPONSE
    writer.close()
    writer2.close()


async def test_oversized_first_frame_closed(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    writer.write(struct.pack("!H", session.listener.limits.max_first_frame + 1))
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_oversized == 1
    writer.close()


async def test_oversized_frame_after_handshake_closed(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    writer.write(struct.pack("!H", session.listener.limits.max_frame + 1) + b"\x80" * 100)
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_oversized == 1
    writer.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: binding_request(f"nope:{CLIENT_UFRAG}", s.password), id="ufrag"),
        pytest.param(
            lambda s: binding_request(f"{s.ufrag}:{CLIENT_UFRAG}", b"wrong-password-000000000"),
            id="password",
        ),
        pytest.param(lambda s: binding_request(f"{s.ufrag}:{CLIENT_UFRAG}", None), id="unsigned"),
        pytest.param(
            lambda s: binding_request(
                f"{s.ufrag}:{CLIENT_UFRAG}", s.password, method=stun.Method.ALLOCATE
            ),
            id="method",
        ),
        pytest.param(
            lambda s: binding_request(
                f"{s.ufrag}:{CLIENT_UFRAG}", s.password, message_class=stun.Class.RESPONSE
            ),
            id="response",
        ),
    ],
)
async def test_unauthenticated_first_request_closed(
    session: Session, make: Callable[[Session], stun.Message]
) -> None:
    reader, writer = await open_stream(session.listener)
    writer.write(frame(bytes(make(session))))
    assert await closed_by_server(reader)
    assert session.listener.stats.authenticated == 0
    await until(lambda: session.listener.connections == 0)
    writer.close()


@pytest.mark.parametrize("session", [SHORT], indirect=True)
async def test_silent_connection_closed_after_handshake_timeout(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_timeout == 1
    writer.close()


@pytest.mark.parametrize("session", [SHORT], indirect=True)
async def test_stalled_partial_frame_closed(session: Session) -> None:
    reader, writer = await open_stream(session.listener)
    writer.write(struct.pack("!H", 100) + b"\x00\x01" * 5)
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_timeout == 1
    writer.close()


@pytest.mark.parametrize("session", [SHORT], indirect=True)
async def test_idle_authenticated_stream_closed(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_timeout == 1
    writer.close()


async def test_half_closed_stream_closed(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    writer.write_eof()
    assert await closed_by_server(reader)
    assert session.listener.stats.reasons.get("eof") == 1
    await until(lambda: session.listener.connections == 0)
    writer.close()


@pytest.mark.parametrize(
    "session", [ice_tcp.IceTcpLimits(max_pending=4, handshake_timeout=60)], indirect=True
)
async def test_many_idle_connections_evict_oldest(session: Session) -> None:
    streams = [await open_stream(session.listener) for _ in range(10)]
    await until(lambda: session.listener.stats.accepted == 10)
    assert session.listener.pending == 4
    assert session.listener.stats.evicted_pending == 6
    for reader, _ in streams[:6]:
        assert await closed_by_server(reader)
    # A real client still gets in (evicting one more idle connection).
    _, writer, response = await handshake(session)
    assert response.message_class == stun.Class.RESPONSE
    assert session.listener.stats.evicted_pending == 7
    for _, w in [*streams, (None, writer)]:
        w.close()


@pytest.mark.parametrize("session", [ice_tcp.IceTcpLimits(max_connections=3)], indirect=True)
async def test_connection_cap(session: Session) -> None:
    kept = [await handshake(session) for _ in range(3)]
    reader, writer = await open_stream(session.listener)
    assert await closed_by_server(reader)
    assert session.listener.stats.rejected_full == 1
    # Those already in keep working.
    r, w, _ = kept[0]
    w.write(frame(bytes(binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password))))
    assert stun.parse_message(await read_frame(r)).message_class == stun.Class.RESPONSE
    for _, w, _ in kept:
        w.close()
    writer.close()


@pytest.mark.parametrize(
    "session", [ice_tcp.IceTcpLimits(max_streams_per_session=2)], indirect=True
)
async def test_streams_per_session_cap(session: Session) -> None:
    kept = [await handshake(session) for _ in range(2)]
    reader, writer = await open_stream(session.listener)
    writer.write(frame(bytes(binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password))))
    assert await closed_by_server(reader)
    assert session.listener.stats.closed_too_many_streams == 1
    for _, w, _ in kept:
        w.close()
    writer.close()


@pytest.mark.parametrize("session", [ice_tcp.IceTcpLimits(write_buffer_limit=8192)], indirect=True)
async def test_slow_reader_gets_frames_dropped_not_buffered(session: Session) -> None:
    _reader, writer, _ = await handshake(session)
    addr = writer.get_extra_info("sockname")[:2]
    protocol = next(
        p for p in session.connection._protocols if isinstance(p, patches.StreamStunProtocol)
    )
    stream: Any = protocol.streams[addr]
    sock = stream.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.transport.pause_reading()
    for _ in range(2000):
        await protocol.send_data(b"\x80" * 1000, addr)
    assert session.listener.stats.frames_dropped > 0
    assert stream.transport.get_write_buffer_size() <= 8192 + 1002
    writer.close()


async def test_closing_the_session_closes_its_streams(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    await session.connection.close()
    assert await closed_by_server(reader)
    assert session.listener._sessions == {}
    reader2, writer2 = await open_stream(session.listener)
    writer2.write(
        frame(bytes(binding_request(f"{session.ufrag}:{CLIENT_UFRAG}", session.password)))
    )
    assert await closed_by_server(reader2)
    assert session.listener.stats.closed_unknown_user == 1
    writer.close()
    writer2.close()


async def test_listener_close_closes_streams(session: Session) -> None:
    reader, writer, _ = await handshake(session)
    await session.listener.close()
    assert await closed_by_server(reader)
    with pytest.raises(OSError):
        await open_stream(session.listener)
    writer.close()


# Candidates and gathering options


def test_tcp_priority_follows_rfc6544() -> None:
    local_pref = (4 << 13) + 8191
    assert ice_tcp.tcp_candidate_priority(1) == (90 << 24) + (local_pref << 8) + 255
    udp_host = aioice.candidate.candidate_priority(1, "host")
    udp_srflx = aioice.candidate.candidate_priority(1, "srflx")
    assert ice_tcp.tcp_candidate_priority(1) < udp_srflx < udp_host
    # Active outranks passive (direction preference 6 > 4).
    assert ice_tcp.tcp_candidate_priority(
        1, direction_preference=6
    ) > ice_tcp.tcp_candidate_priority(1)


def test_passive_candidate_pairs_only_with_active_tcp() -> None:
    local = patches.PassiveTcpCandidate(
        "f", 1, "tcp", 1, "127.0.0.1", 3478, "host", tcptype="passive"
    )

    def remote(transport: str, tcptype: str | None, host: str = "127.0.0.1") -> Candidate:
        return Candidate("g", 1, transport, 1, host, 9, "host", tcptype=tcptype)

    assert local.can_pair_with(remote("tcp", "active"))
    assert local.can_pair_with(remote("TCP", "active"))
    assert not local.can_pair_with(remote("tcp", "passive"))
    assert not local.can_pair_with(remote("tcp", "so"))
    assert not local.can_pair_with(remote("udp", None))
    assert not local.can_pair_with(remote("tcp", "active", host="::1"))


async def test_public_ip_is_advertised() -> None:
    listener = await make_listener()
    # A documentation address (RFC 5737): only written into candidates, never contacted.
    cfg = Cfg(ice_loopback=False, ice_public_ip="203.0.113.7")
    connection = aioice.Connection(ice_controlling=False, use_ipv6=False)
    ice_tcp.configure(connection, cfg, listener)
    try:
        await connection.gather_candidates()
        hosts = {(c.transport, c.host) for c in connection.local_candidates}
        if not patches.get_host_addresses(use_ipv4=True, use_ipv6=False):
            pytest.skip("no IPv4 address besides loopback on this machine")
        assert hosts == {("udp", "203.0.113.7"), ("tcp", "203.0.113.7")}
        tcp = [c for c in connection.local_candidates if c.transport == "tcp"]
        assert len(tcp) == 1 and tcp[0].port == listener.port
    finally:
        await connection.close()
        await listener.close()


def _free_udp_ports(count: int) -> tuple[int, int]:
    """A run of `count` consecutive UDP ports that were free a moment ago."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count - 1 > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base, base + count - 1
    raise RuntimeError("no free UDP port run")


async def test_udp_ports_come_from_the_range() -> None:
    lo, hi = _free_udp_ports(3)
    cfg = Cfg(ice_tcp_port=None, ice_udp_ports=(lo, hi))
    connections = [aioice.Connection(ice_controlling=False) for _ in range(3)]
    for c in connections:
        ice_tcp.configure(c, cfg, None)
    try:
        for c in connections:
            await c.gather_candidates()
        ports = [cand.port for c in connections for cand in c.local_candidates]
        assert sorted(ports) == [lo, lo + 1, hi]
        assert all(cand.transport == "udp" for c in connections for cand in c.local_candidates)

        # Range exhausted: no candidate rather than a port outside the range.
        extra = aioice.Connection(ice_controlling=False)
        ice_tcp.configure(extra, cfg, None)
        await extra.gather_candidates()
        assert extra.local_candidates == []
        await extra.close()
    finally:
        for c in connections:
            await c.close()


async def test_configure_after_gathering_is_refused() -> None:
    connection = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(connection, Cfg(ice_tcp_port=None), None)
    await connection.gather_candidates()
    try:
        with pytest.raises(RuntimeError):
            ice_tcp.configure(connection, Cfg(ice_tcp_port=None), None)
    finally:
        await connection.close()


@pytest.mark.parametrize("value", ["example.org", "0.0.0.0", "224.0.0.1", "1.2.3"])
def test_bad_public_ip_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="PANDA_ICE_PUBLIC_IP"):
        ice_tcp.parse_public_ip(value)


def test_public_ip_parsing() -> None:
    assert ice_tcp.parse_public_ip(None) is None
    assert ice_tcp.parse_public_ip(" ") is None
    assert ice_tcp.parse_public_ip(" 198.51.100.4 ") == "198.51.100.4"
    assert ice_tcp.parse_public_ip("2001:db8::1") == str(ipaddress.ip_address("2001:db8::1"))
    with pytest.raises(ValueError, match="PANDA_ICE_UDP_PORTS"):
        ice_tcp.check_port_range((50010, 50000))


def test_listener_from_settings() -> None:
    assert ice_tcp.IceTcpListener.from_settings(Cfg(ice_tcp_port=None)) is None

    @dataclass(frozen=True)
    class Workers(Cfg):
        worker_index: int = 2

    lst = ice_tcp.IceTcpListener.from_settings(Workers(ice_loopback=False, ice_tcp_port=3478))
    assert lst is not None and lst.requested_port == 3480 and lst.host is None
    lst = ice_tcp.IceTcpListener.from_settings(Cfg(ice_tcp_port=3478), advertised_port=443)
    assert lst is not None and lst.host == "127.0.0.1" and lst._advertised_port == 443


# aioice internals


async def test_aioice_internals_are_as_expected() -> None:
    patches.check_internals()


async def test_internals_check_notices_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sendto(self: Any, data: bytes, component: int) -> None:
        raise NotImplementedError

    monkeypatch.setattr(aioice.Connection, "sendto", sendto)
    assert "send_data" not in inspect.getsource(aioice.Connection.sendto)
    with pytest.raises(RuntimeError, match="sendto"):
        patches.check_internals()


@pytest.mark.parametrize("session", [ice_tcp.IceTcpLimits(rto_max_ms=1500)], indirect=True)
async def test_accepted_streams_cap_the_retransmission_timeout(session: Session) -> None:
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, ice_tcp.TCP_RTO_MAX_MS, 1000)
        except OSError:
            pytest.skip("kernel without TCP_RTO_MAX_MS (Linux < 6.15)")
    _reader, writer, _ = await handshake(session)
    (stream,) = session.listener._streams
    assert stream.transport is not None
    sock = stream.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, ice_tcp.TCP_RTO_MAX_MS) == 1500
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    writer.close()


@pytest.mark.parametrize("session", [SHORT], indirect=True)
async def test_random_bytes_never_break_the_listener(session: Session) -> None:
    """Fuzz: random streams (fixed seed) are all closed without an unhandled error."""
    import random

    rng = random.Random(6544)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    blobs = []
    for i in range(60):
        size = rng.randint(1, 3000)
        blob = bytes(rng.getrandbits(8) for _ in range(size))
        if i % 3 == 0:  # STUN-looking frames: a plausible length and a 0x00/0x01 first byte
            body = bytes([rng.choice([0, 1])]) + blob[: rng.randint(19, 200)]
            blob = frame(body) + blob[:50]
        blobs.append(blob)
    streams = [await open_stream(session.listener) for _ in blobs]
    for (_, writer), blob in zip(streams, blobs, strict=True):
        writer.write(blob)
    for reader, _ in streams:
        assert await closed_by_server(reader)
    await until(lambda: session.listener.connections == 0)
    stats = session.listener.stats
    assert stats.authenticated == 0
    # Several of the closing paths were taken, not only one.
    assert len({"garbage", "oversized", "timeout"} & set(stats.reasons)) >= 2, stats.reasons
    _, writer, response = await handshake(session)
    assert response.message_class == stun.Class.RESPONSE
    assert errors == []
    for _, w in streams:
        w.close()
    writer.close()
