"""Every reach into aiortc, aioice and pylibsrtp internals made by the packet-level relay.

The packet path takes RTP packets off a publisher's DTLS transport right after SRTP
unprotect (before aiortc parses them) and writes rewritten packets straight into a
subscriber's SRTP context and ICE socket, without aiortc's senders. Each function
names the private attributes it relies on; :func:`check_internals` verifies them and
``tests/media/test_aiortc_packet_patches.py`` fails loudly when a release moves them.
"""

from __future__ import annotations

import inspect
import struct
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import depayload, is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics, TimestampMapper
from aiortc.rtp import RTCP_RTPFB_NACK, AnyRtcpPacket, RtcpRtpfbPacket, RtpPacket
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

_SRTP_TRAILER = 148  # pylibsrtp's SRTP_MAX_TRAILER_LEN: room protect() may add
_CONNECTED = State.CONNECTED
_HEADER = struct.Struct("!BBHII")
_SEQ_TS_SSRC = struct.Struct("!HII")
_srtp_protect = _lib.srtp_protect
_RX = "_RTCRtpReceiver__"
_TX = "_RTCRtpSender__"
_DTLS = "_RTCDtlsTransport__"

# Returns True when it consumed the (unprotected) RTP packet.
RtpInterceptor = Callable[[bytes], bool]
# Given a still protected SRTP packet (its header is in the clear): handle it after
# unprotect (returns the handler) or leave it to aiortc (None).
RtpClaimer = Callable[[bytes], "Callable[[bytes], object] | None"]

__all__ = [
    "NackGenerator",
    "RtpInterceptor",
    "SrtpOutput",
    "StreamStatistics",
    "TimestampMapper",
    "add_sender_counters",
    "check_internals",
    "depayload",
    "hook_sender_nack",
    "intercept_rtp",
    "intercept_srtp_datagrams",
    "ntp_now",
    "parse_rtp",
    "receiver_codecs",
    "receiver_for_packet",
    "receiver_stream_stats",
    "send_nack",
    "sender_enabled",
    "sender_ssrc",
]


# --------------------------------------------------------------------------- ingress


def intercept_rtp(dtls: RTCDtlsTransport, interceptor: RtpInterceptor) -> None:
    """Offer every unprotected RTP packet on ``dtls`` to ``interceptor`` before aiortc
    parses it; packets it declines go on through aiortc (parse, route, receiver).

    An exception from ``interceptor`` drops the packet instead of ending the transport.
    """
    handle = dtls._handle_rtp_data

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        try:
            if interceptor(data):
                return
        except (ValueError, IndexError, KeyError, struct.error):
            return
        await handle(data, arrival_time_ms=arrival_time_ms)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]


def intercept_srtp_datagrams(dtls: RTCDtlsTransport, claim: RtpClaimer) -> None:
    """Handle claimed SRTP packets synchronously, in the socket callback itself.

    aioice parses every datagram as STUN (a raised ValueError for each media packet) and
    queues it for the DTLS transport's receive task: a queue put, a task wake-up and four
    coroutine frames per packet. Here each of the connection's sockets gets a
    ``datagram_received`` that tells RTP by its first bytes, unprotects what ``claim``
    takes with the transport's own libsrtp context (no wrapper, no per-packet allocation
    but the result) and hands it to its handler. DTLS, STUN, RTCP and unclaimed RTP take
    aioice's and aiortc's way. The transport's byte counters still move.
    """
    connection = dtls.transport.iceGatherer._connection
    queue = connection.data_received
    length = _ffi.new("int *")
    session: Any = None
    srtp: Any = None
    cdata: Any = None
    buffer: Any = None
    view: memoryview | None = None
    limit = 0

    def take(data: bytes) -> bool:
        """True when ``data`` (RTP, not RTCP) was ours: handled or dropped."""
        nonlocal session, srtp, cdata, buffer, view, limit
        rx = dtls._rx_srtp
        if rx is None:
            return False
        handler = claim(data)
        if handler is None:
            return False
        if rx is not session:
            session, srtp, cdata, buffer = rx, rx._srtp[0], rx._cdata, rx._buffer
            view = memoryview(buffer)
            limit = len(view)
        size = len(data)
        if size > limit:
            return True
        view[:size] = data  # type: ignore[index]
        length[0] = size
        if _lib.srtp_unprotect(srtp, cdata, length):
            return True  # undecryptable or replayed: dropped, as aiortc drops it
        dtls._RTCDtlsTransport__rx_bytes += size  # type: ignore[attr-defined]
        try:
            handler(buffer[0:length[0]])
        except (ValueError, IndexError, KeyError, struct.error):
            pass  # malformed: dropped
        return True

    def hook(protocol: Any) -> None:
        original = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any) -> None:
            # RTP, not RTCP (payload types 64-95 with the marker bit are RTCP, RFC 5761)
            if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224 and take(data):
                return
            original(data, addr)

        protocol.datagram_received = datagram_received
        protocol._panda_srtp_hook = True

    def data_received(data: bytes, component: int) -> None:
        # Reached only through a socket not hooked yet (new, or gathered late).
        if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224 and take(data):
            for protocol in connection._protocols:
                if not getattr(protocol, "_panda_srtp_hook", False):
                    hook(protocol)
            return
        queue(data, component)

    connection.data_received = data_received  # type: ignore[method-assign]


def receiver_for_packet(dtls: RTCDtlsTransport, ssrc: int, payload_type: int) -> Any:
    """The receiver aiortc's router would give a packet (SSRC first, else a unique PT)."""
    router: RtpRouter = dtls._rtp_router
    receiver = router.ssrc_table.get(ssrc)
    if receiver is not None:
        return receiver
    candidates = router.payload_type_table.get(payload_type) or ()
    if len(candidates) == 1:
        receiver = next(iter(candidates))
        router.ssrc_table[ssrc] = receiver
        return receiver
    return None


def receiver_codecs(receiver: RTCRtpReceiver) -> dict[int, RTCRtpCodecParameters]:
    """Payload type -> codec the receiver was started with (RTX entries included)."""
    return dict(getattr(receiver, _RX + "codecs"))


def receiver_stream_stats(receiver: RTCRtpReceiver, ssrc: int, clock_rate: int) -> StreamStatistics:
    """The receiver's RTCP statistics for ``ssrc`` (created if new): the relay updates
    them itself and the receiver's own loop turns them into receiver reports."""
    streams: dict[int, StreamStatistics] = getattr(receiver, _RX + "remote_streams")
    stats = streams.get(ssrc)
    if stats is None:
        stats = streams[ssrc] = StreamStatistics(clock_rate)
    return stats


async def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
    """Ask the remote sender to retransmit ``lost`` sequence numbers of ``media_ssrc``."""
    rtcp_ssrc = getattr(receiver, _RX + "rtcp_ssrc")
    if rtcp_ssrc is None or not getattr(receiver, _RX + "started"):
        return
    packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=media_ssrc)
    packet.lost = lost
    await receiver._send_rtcp(packet)


def parse_rtp(data: bytes) -> RtpPacket:
    """aiortc's packet object for ``data`` (header extensions left unparsed)."""
    return RtpPacket.parse(data)


# --------------------------------------------------------------------------- egress


def _no_rewrite(buffer: memoryview, ext: bytes) -> None:
    """Header extensions stay as they are."""


class SrtpOutput:
    """Protects RTP packets with a DTLS transport's SRTP context and sends them at once,
    synchronously, on its nominated ICE pair (UDP or our ICE-TCP streams).

    A packet is copied into libsrtp's own buffer, rewritten there, protected and sent
    (:meth:`write`): one copy in, one out, nothing else allocated.
    The buffer is the session's, shared with aiortc's own calls, which is safe because
    every use of it runs to completion on the event loop thread.
    """

    __slots__ = ("_addr", "_buffer", "_cdata", "_dtls", "_length", "_nominated", "_pair",
                 "_send", "_session", "_srtp", "_view")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._nominated: dict[int, Any] = dtls.transport.iceGatherer._connection._nominated
        self._pair: Any = None
        self._addr: Any = None
        self._send: Callable[[bytes, Any], None] | None = None
        self._session: pylibsrtp.Session | None = None
        self._srtp: Any = None
        self._cdata: Any = None
        self._view: memoryview | None = None
        self._buffer: Any = None
        self._length: Any = _ffi.new("int *")

    def _resolve(self) -> Callable[[bytes, Any], None] | None:
        pair = self._nominated.get(1)
        if pair is None:
            return None
        protocol = pair.protocol
        # panda's stream (ICE-TCP) protocol writes frames; a UDP one has its socket.
        send = getattr(protocol, "_write", None) or protocol.transport.sendto
        self._pair = pair
        self._addr = pair.remote_addr
        self._send = send
        return send  # type: ignore[no-any-return]

    def _bind(self) -> memoryview | None:
        """The buffer of the transport's current SRTP session (None: not connected yet);
        a new session (a DTLS restart) is picked up here."""
        dtls = self._dtls
        session = dtls._tx_srtp
        if session is None or dtls._state is not _CONNECTED:
            return None
        if session is not self._session:
            self._session = session
            self._srtp = session._srtp[0]
            self._cdata = session._cdata
            self._buffer = session._buffer
            self._view = memoryview(session._buffer)
        return self._view

    def send(self, packet: bytes) -> int:
        """Protect and send one RTP packet as it is; returns the bytes sent."""
        seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        return self.write(packet, packet[1], seq, timestamp, ssrc, b"", _no_rewrite)

    def write(self, packet: bytes, b1: int, seq: int, timestamp: int, ssrc: int, ext: bytes,
              rewrite: Callable[[memoryview, bytes], None]) -> int:
        """Copy ``packet`` in with a new header (second byte, sequence number, timestamp,
        SSRC), let ``rewrite(buffer, ext)`` renumber its header extensions if it has any,
        protect and send it, in one call: the per-packet path of every subscriber. Returns
        the bytes sent (0: not connected yet, too long, or not protected)."""
        dtls = self._dtls
        view = self._view
        size = len(packet)
        if view is None or dtls._tx_srtp is not self._session or dtls._state is not _CONNECTED:
            view = self._bind()
            if view is None:
                return 0
        if size > len(view) - _SRTP_TRAILER:
            return 0
        view[:size] = packet
        b0 = packet[0]
        _HEADER.pack_into(view, 0, b0, b1, seq, timestamp, ssrc)
        if b0 & 0x10:
            rewrite(view, ext)
        send = self._send
        if send is None or self._nominated.get(1) is not self._pair:
            send = self._resolve()
            if send is None:
                return 0
        length = self._length
        length[0] = size
        if _srtp_protect(self._srtp, self._cdata, length):
            return 0
        size = length[0]
        send(self._buffer[0:size], self._addr)
        dtls._RTCDtlsTransport__tx_bytes += size  # type: ignore[attr-defined]
        return size


def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC ``sender`` announced for its media."""
    return sender._ssrc


def sender_enabled(sender: RTCRtpSender) -> bool:
    """False while the negotiated direction does not include sending."""
    return bool(sender._enabled)


def transceiver_payload_type(transceiver: RTCRtpTransceiver) -> int | None:
    """Payload type of the (first, non-RTX) negotiated codec of ``transceiver``."""
    for codec in transceiver._codecs:
        if not is_rtx(codec):
            return codec.payloadType
    return None


_PACKET_COUNT = _TX + "packet_count"
_OCTET_COUNT = _TX + "octet_count"
_RTP_TIMESTAMP = _TX + "rtp_timestamp"
_NTP_TIMESTAMP = _TX + "ntp_timestamp"


def add_sender_counters(
    sender: RTCRtpSender, packets: int, octets: int, rtp_timestamp: int
) -> None:
    """Account packets the relay sent in the sender's name, for its sender reports.

    The NTP time of ``rtp_timestamp`` is taken as now (the relay adds no delay worth
    reporting), which keeps the receiver's audio/video synchronisation working.
    """
    setattr(sender, _PACKET_COUNT, getattr(sender, _PACKET_COUNT) + packets)
    setattr(sender, _OCTET_COUNT, getattr(sender, _OCTET_COUNT) + octets)
    setattr(sender, _RTP_TIMESTAMP, rtp_timestamp)
    setattr(sender, _NTP_TIMESTAMP, ntp_now())


_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900 (NTP's epoch) to 1970


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp, as aiortc's clock gives it (without its datetimes,
    which cost more than the packets between two sender-report updates)."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + _NTP_UNIX_OFFSET) << 32) | ((nanoseconds << 32) // 1_000_000_000)


def hook_sender_nack(sender: RTCRtpSender, on_nack: Callable[[list[int]], None]) -> None:
    """Hand NACKs for ``sender``'s SSRC to ``on_nack`` instead of its own (empty) history."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            on_nack(list(packet.lost))
            return
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


# --------------------------------------------------------------------------- self-check


def check_internals() -> None:
    """Raise AssertionError if an aiortc/aioice/pylibsrtp internal used here has moved."""
    from aioice import Connection
    from aiortc import RTCCertificate, RTCIceGatherer, RTCIceTransport

    certificate = RTCCertificate.generateCertificate()
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [certificate])
    for name in ("_handle_rtp_data", "_rtp_router", "_tx_srtp", "_state", _DTLS + "tx_bytes"):
        assert hasattr(dtls, name), f"RTCDtlsTransport.{name} is gone"
    params = list(inspect.signature(dtls._handle_rtp_data).parameters)
    assert params == ["data", "arrival_time_ms"], f"_handle_rtp_data({params})"
    router = dtls._rtp_router
    assert isinstance(router.ssrc_table, dict) and isinstance(router.payload_type_table, dict)
    connection = dtls.transport.iceGatherer._connection
    assert isinstance(connection, Connection) and isinstance(connection._nominated, dict)
    assert isinstance(connection._protocols, list), "Connection._protocols changed"
    params = list(inspect.signature(connection.data_received).parameters)
    assert params == ["data", "component"], f"Connection.data_received({params})"
    assert hasattr(dtls, _DTLS + "rx_bytes"), "RTCDtlsTransport.__rx_bytes is gone"
    assert hasattr(dtls, "_rx_srtp"), "RTCDtlsTransport._rx_srtp is gone"
    from aioice.ice import CandidatePair

    pair = CandidatePair(object(), object())  # type: ignore[arg-type]
    assert hasattr(pair, "protocol"), "CandidatePair.protocol is gone"
    assert isinstance(getattr(CandidatePair, "remote_addr", None), property), (
        "CandidatePair.remote_addr is gone")
    receiver = RTCRtpReceiver("video", dtls)
    for name in ("codecs", "remote_streams", "rtcp_ssrc", "started"):
        assert hasattr(receiver, _RX + name), f"RTCRtpReceiver.__{name} is gone"
    assert inspect.iscoroutinefunction(receiver._send_rtcp)
    sender = RTCRtpSender("video", dtls)
    for name in ("packet_count", "octet_count", "rtp_timestamp", "ntp_timestamp"):
        assert hasattr(sender, _TX + name), f"RTCRtpSender.__{name} is gone"
    for name in ("_ssrc", "_enabled", "_handle_rtcp_packet"):
        assert hasattr(sender, name), f"RTCRtpSender.{name} is gone"
    assert inspect.iscoroutinefunction(sender._handle_rtcp_packet)
    nack = NackGenerator()
    assert nack.add(RtpPacket(sequence_number=1)) is False and hasattr(nack, "missing")
    stats = StreamStatistics(90000)
    for name in ("base_seq", "max_seq", "cycles", "packets_received"):
        assert hasattr(stats, name), f"StreamStatistics.{name} is gone"
    assert State.CONNECTED is not None
    session = pylibsrtp.Session(pylibsrtp.Policy(
        key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    assert _ffi.typeof(session._srtp[0]) is _ffi.typeof("srtp_t"), "pylibsrtp Session._srtp changed"
    assert _ffi.typeof(session._cdata).cname == "char[]", "pylibsrtp Session._cdata changed"
    assert len(memoryview(session._buffer)) == len(session._cdata)
    assert getattr(pylibsrtp, "SRTP_MAX_TRAILER_LEN", _SRTP_TRAILER) <= _SRTP_TRAILER
    assert callable(_lib.srtp_protect)
