"""The packet path's per-packet pieces: keyframe starts in RTP payloads, header extension
renumbering, RTX unwrapping, and a subscriber's gapless rewriting and NACK answers."""

from __future__ import annotations

import fractions
import itertools
import struct
from types import SimpleNamespace
from typing import Any

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from panda.media import packet_relay
from panda.media.packet_relay import (
    SubscriberOutput,
    extension_table,
    h264_keyframe_start,
    keyframe_start_detector,
    payload_bounds,
    rewrite_extensions,
    unwrap_rtx,
    vp8_keyframe_start,
)
from tests.media.mediagen import EncodedMedia

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def _payloads(encoder: Any, data: bytes) -> list[bytes]:
    packet = av.Packet(data)
    packet.pts = 0
    packet.time_base = fractions.Fraction(1, 90000)
    payloads, _ = encoder.pack(packet)
    return list(payloads)


def test_vp8_keyframe_start_only_on_a_keyframes_first_packet(vp8: EncodedMedia) -> None:
    key = next(f for f in vp8.frames if f.keyframe)
    delta = next(f for f in vp8.frames if not f.keyframe)
    encoder = Vp8Encoder()
    key_payloads = _payloads(encoder, key.data)
    assert len(key_payloads) > 1
    assert vp8_keyframe_start(key_payloads[0])
    assert not any(vp8_keyframe_start(p) for p in key_payloads[1:])
    assert not any(vp8_keyframe_start(p) for p in _payloads(encoder, delta.data))
    # garbage and truncated payloads are no keyframes (and do not raise)
    for bad in (b"", b"\x10", b"\x90\x80", b"\x10\x00\x00\x00\x9d\x01", bytes(3)):
        assert not vp8_keyframe_start(bad)


def test_h264_keyframe_start(h264: EncodedMedia) -> None:
    key = next(f for f in h264.frames if f.keyframe)
    delta = next(f for f in h264.frames if not f.keyframe)
    encoder = H264Encoder()
    assert h264_keyframe_start(_payloads(encoder, key.data)[0])
    assert not any(h264_keyframe_start(p) for p in _payloads(encoder, delta.data))
    assert h264_keyframe_start(bytes([0x65, 0x88]))  # single IDR NAL
    assert h264_keyframe_start(bytes([0x7C, 0x85, 0x00]))  # FU-A start of an IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05, 0x00]))  # FU-A middle
    assert not h264_keyframe_start(b"")
    assert not h264_keyframe_start(bytes([0x18, 0x00]))  # truncated STAP-A


def test_keyframe_start_detector_per_codec() -> None:
    assert keyframe_start_detector("video/VP8") is vp8_keyframe_start
    assert keyframe_start_detector("video/H264") is h264_keyframe_start
    assert keyframe_start_detector("audio/opus")(b"")


def _extmap(ids: dict[str, int]) -> HeaderExtensionsMap:
    extmap = HeaderExtensionsMap()
    extmap.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    return extmap


def _packet(seq: int = 100, ts: int = 5000, payload: bytes = b"payload", marker: int = 0,
            ids: dict[str, int] | None = None, mid: str | None = "3") -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=0x11111111,
                       marker=marker, payload=payload)
    if ids is not None:
        packet.extensions.mid = mid
        packet.extensions.abs_send_time = 0x123456
    return packet.serialize(_extmap(ids or {}))


def test_extensions_renumbered_and_mid_dropped() -> None:
    publisher = {MID: 1, ABS: 2, LEVEL: 3}
    subscriber = {MID: 4, ABS: 5}
    table = extension_table(publisher, subscriber)
    assert table[1] == 0 and table[2] == 5 and table[3] == 0
    buf = bytearray(_packet(ids=publisher))
    rewrite_extensions(buf, table)
    parsed = RtpPacket.parse(bytes(buf), _extmap(subscriber))
    assert parsed.extensions.mid is None
    assert parsed.extensions.abs_send_time == 0x123456
    assert parsed.payload == b"payload"


def test_payload_bounds_and_bad_packets() -> None:
    data = _packet(ids={MID: 1, ABS: 2})
    start, end = payload_bounds(data)
    assert data[start:end] == b"payload"
    with pytest.raises((ValueError, IndexError)):
        payload_bounds(data[:14])


def test_unwrap_rtx() -> None:
    original = _packet(seq=4321, payload=b"abc", marker=1)
    rtx = RtpPacket(payload_type=97, sequence_number=7, timestamp=5000, ssrc=0x22222222,
                    marker=1, payload=struct.pack("!H", 4321) + b"abc")
    unwrapped = unwrap_rtx(rtx.serialize(), 96, struct.pack("!I", 0x11111111))
    assert unwrapped == original
    padding_only = RtpPacket(payload_type=97, sequence_number=8, ssrc=0x22222222)
    padding_only.padding_size = 200
    assert unwrap_rtx(padding_only.serialize(), 96, b"\0\0\0\0") is None


class _Output:
    """Stands in for an SrtpOutput: keeps what would have been protected and sent."""

    def __init__(self) -> None:
        self.sent: list[RtpPacket] = []

    def write(self, packet: bytes, b1: int, seq: int, timestamp: int, ssrc: int, ext: bytes,
              rewrite: Any) -> int:
        buf = bytearray(packet)
        struct.pack_into("!BBHII", buf, 0, packet[0], b1, seq, timestamp, ssrc)
        if packet[0] & 0x10:
            rewrite(buf, ext)
        self.sent.append(RtpPacket.parse(bytes(buf)))
        return len(buf)


def _subscriber() -> tuple[SubscriberOutput, _Output]:
    sender = SimpleNamespace(_ssrc=0xABCDEF01, transport=None)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100)
    transceiver = SimpleNamespace(sender=sender, _codecs=[codec])
    participant = SimpleNamespace(_extmap={})
    out = _Output()
    sub = SubscriberOutput(SimpleNamespace(), transceiver, participant, out)  # type: ignore[arg-type]
    return sub, out


class _Source:
    def __init__(self, kind: str = "video") -> None:
        self.kind = kind
        self.payload_type = 96
        self.participant = SimpleNamespace(_extmap={})
        self.history: list[bytes | None] = [None] * packet_relay.HISTORY_SIZE
        self.closed = False
        self.asked: list[list[int]] = []

    def request_retransmission(self, seqs: list[int]) -> None:
        self.asked.append(seqs)


def test_subscriber_stream_is_gapless_across_a_source_change() -> None:
    sub, out = _subscriber()
    first, second = _Source(), _Source()
    sub.start(first, 65530, 1000)  # type: ignore[arg-type]
    for seq in range(65530, 65536):
        sub.forward(_packet(seq=seq, ts=1000), seq, 1000)
    for seq in range(0, 4):  # the publisher's sequence wraps
        sub.forward(_packet(seq=seq, ts=4000), seq, 4000)
    sub.start(second, 20000, 777)  # type: ignore[arg-type]
    for seq in range(20000, 20003):
        sub.forward(_packet(seq=seq, ts=777), seq, 777)
    seqs = [p.sequence_number for p in out.sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert {p.ssrc for p in out.sent} == {0xABCDEF01}
    assert {p.payload_type for p in out.sent} == {100}
    stamps = [p.timestamp for p in out.sent]
    assert stamps[6] - stamps[0] == 3000  # the source's own spacing kept
    assert (stamps[10] - stamps[9]) & 0xFFFFFFFF == packet_relay.FRAME_STEP["video"]
    assert sub.packets_forwarded == 13


def test_nack_answered_from_history_and_the_rest_asked_upstream() -> None:
    sub, out = _subscriber()
    source = _Source()
    sub.start(source, 500, 0)  # type: ignore[arg-type]
    for seq in range(500, 510):
        data = _packet(seq=seq, ts=90)
        if seq != 505:  # 505 never reached the relay
            source.history[seq & (packet_relay.HISTORY_SIZE - 1)] = data
            sub.forward(data, seq, 90)
    out.sent.clear()
    lost_out = [(s + sub.seq_off) & 0xFFFF for s in (503, 505)]
    before = [(400 + sub.seq_off) & 0xFFFF]  # older than this subscriber's stream
    sub.on_nack(lost_out + before)
    assert [p.sequence_number for p in out.sent] == [lost_out[0]]
    assert sub.retransmitted == 1
    assert source.asked == [[505]]
