"""The aiortc/aioice internals the packet path reaches into are still where it expects.

These fail loudly when an aiortc release moves them (the package pins aiortc 1.16)."""

from __future__ import annotations

import struct
from typing import Any

import pylibsrtp
from aiortc import RTCCertificate, RTCIceGatherer, RTCIceTransport, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket

from panda.media import aiortc_packet_patches as patches


def _dtls() -> RTCDtlsTransport:
    return RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()),
                            [RTCCertificate.generateCertificate()])


async def test_internals_are_where_the_packet_path_expects() -> None:
    patches.check_internals()


async def test_intercept_sees_packets_first_and_declined_ones_reach_aiortc() -> None:
    dtls = _dtls()
    reached: list[bytes] = []

    async def original(data: bytes, arrival_time_ms: int) -> None:
        reached.append(data)

    dtls._handle_rtp_data = original  # type: ignore[method-assign]
    seen: list[bytes] = []

    def interceptor(data: bytes) -> bool:
        seen.append(data)
        if data == b"boom":
            raise struct.error("bad packet")
        return data.startswith(b"take")

    patches.intercept_rtp(dtls, interceptor)
    await dtls._handle_rtp_data(b"take me", arrival_time_ms=0)
    await dtls._handle_rtp_data(b"leave me", arrival_time_ms=0)
    await dtls._handle_rtp_data(b"boom", arrival_time_ms=0)  # dropped, transport lives on
    assert seen == [b"take me", b"leave me", b"boom"]
    assert reached == [b"leave me"]


async def test_receiver_lookup_follows_aiortcs_router() -> None:
    dtls = _dtls()
    receiver = RTCRtpReceiver("video", dtls)
    dtls._rtp_router.register_receiver(receiver, ssrcs=[1234], payload_types=[96, 97])
    assert patches.receiver_for_packet(dtls, 1234, 50) is receiver
    assert patches.receiver_for_packet(dtls, 999, 97) is receiver  # learned by payload type
    assert dtls._rtp_router.ssrc_table[999] is receiver
    assert patches.receiver_for_packet(dtls, 5, 111) is None


async def test_stream_stats_feed_the_receivers_reports() -> None:
    receiver = RTCRtpReceiver("video", _dtls())
    stats = patches.receiver_stream_stats(receiver, 42, 90000)
    assert patches.receiver_stream_stats(receiver, 42, 90000) is stats
    stats.add(RtpPacket(sequence_number=7, timestamp=0))
    assert stats.packets_received == 1 and stats.max_seq == 7


async def test_srtp_output_sends_nothing_before_dtls_connects() -> None:
    output = patches.SrtpOutput(_dtls())
    packet = RtpPacket(payload_type=96).serialize()
    assert output.send(packet) == 0
    assert output.write(packet, 100, 1, 2, 3, bytes(256), lambda buf, ext: None) == 0


async def test_sender_counters_and_ssrc() -> None:
    sender = RTCRtpSender("video", _dtls())
    assert patches.sender_ssrc(sender) == sender._ssrc
    assert patches.sender_enabled(sender)
    patches.add_sender_counters(sender, 3, 300, 12345)
    patches.add_sender_counters(sender, 2, 200, 12346)
    assert sender._RTCRtpSender__packet_count == 5  # type: ignore[attr-defined]
    assert sender._RTCRtpSender__octet_count == 500  # type: ignore[attr-defined]
    assert sender._RTCRtpSender__rtp_timestamp == 12346  # type: ignore[attr-defined]


def _srtp_pair() -> tuple[Any, Any]:
    key = bytes(range(30))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    return tx, rx


async def test_claimed_srtp_datagrams_are_unprotected_in_the_socket_callback() -> None:
    dtls = _dtls()
    tx, rx = _srtp_pair()
    connection = dtls.transport.iceGatherer._connection
    queued: list[bytes] = []
    connection.data_received = lambda data, component: queued.append(data)  # type: ignore[method-assign]
    handled: list[bytes] = []

    def claim(data: bytes) -> Any:
        return handled.append if data[8:12] == b"\0\0\0\1" else None

    patches.intercept_srtp_datagrams(dtls, claim)
    ours = RtpPacket(payload_type=96, sequence_number=1, ssrc=1, payload=b"ours").serialize()
    other = RtpPacket(payload_type=96, sequence_number=1, ssrc=2, payload=b"other").serialize()
    rtcp = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2))
    early = RtpPacket(payload_type=96, sequence_number=0, ssrc=1, payload=b"early").serialize()
    connection.data_received(tx.protect(early), 1)  # before DTLS set SRTP up: aiortc's way
    dtls._rx_srtp = rx
    connection.data_received(tx.protect(ours), 1)
    connection.data_received(tx.protect(other), 1)
    connection.data_received(tx.protect_rtcp(rtcp), 1)
    connection.data_received(b"\x16\xfe\xfd dtls record", 1)
    # claimed but undecryptable: dropped
    connection.data_received(b"\x80\x60" + bytes(6) + b"\0\0\0\1" + bytes(20), 1)
    assert handled == [ours]
    assert len(queued) == 4 and queued[-1].startswith(b"\x16")  # early, other, rtcp, dtls


class _Socket:
    """Stands in for one of aioice's StunProtocols: keeps what reached its own callback."""

    def __init__(self) -> None:
        self.own: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.own.append(data)


async def test_sockets_are_hooked_so_media_skips_aioice() -> None:
    dtls = _dtls()
    tx, rx = _srtp_pair()
    dtls._rx_srtp = rx
    connection = dtls.transport.iceGatherer._connection
    queued: list[bytes] = []
    connection.data_received = lambda data, component: queued.append(data)  # type: ignore[method-assign]
    socket = _Socket()
    connection._protocols.append(socket)  # type: ignore[arg-type]
    handled: list[bytes] = []
    patches.intercept_srtp_datagrams(dtls, lambda data: handled.append)
    packets = [RtpPacket(payload_type=96, sequence_number=n, ssrc=1, payload=b"media %d" % n)
               .serialize() for n in range(3)]
    # The first claimed packet comes the slow way (through aioice) and hooks the socket.
    connection.data_received(tx.protect(packets[0]), 1)
    socket.datagram_received(tx.protect(packets[1]), ("127.0.0.1", 5000))
    assert handled == packets[:2] and socket.own == []
    # What is not RTP, or too short to be, still reaches aioice's own callback, unharmed.
    stun = bytes.fromhex("0001000021120000") + bytes(12)
    for other in (stun, b"\x16\xfe\xfd dtls", b"", b"\x80", b"\x80\x60" + bytes(9)):
        socket.datagram_received(other, ("127.0.0.1", 5000))
    assert socket.own == [stun, b"\x16\xfe\xfd dtls", b"", b"\x80", b"\x80\x60" + bytes(9)]
    # A replayed or forged packet is dropped in the hook; the next one still goes through.
    protected = tx.protect(packets[2])
    socket.datagram_received(protected, ("127.0.0.1", 5000))
    socket.datagram_received(protected, ("127.0.0.1", 5000))
    socket.datagram_received(protected[:-4] + b"\0\0\0\0", ("127.0.0.1", 5000))
    assert handled == packets and queued == []
    assert dtls._RTCDtlsTransport__rx_bytes == 3 * len(protected)  # type: ignore[attr-defined]


def test_ntp_now_agrees_with_aiortcs_clock() -> None:
    from aiortc import clock

    before = clock.current_ntp_time()
    ours = patches.ntp_now()
    after = clock.current_ntp_time()
    assert before - (1 << 22) <= ours <= after + (1 << 22)  # within ~1 ms
