"""Every aiortc/aioice internal the relay relies on, checked against the installed release.

If one of these fails after an upgrade, panda/media/aiortc_patches.py needs a look
before anything else: the relay would otherwise decode, drop frames or lose feedback
silently.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
from typing import Any

import aioice
import aiortc
import pytest
from aioice import Candidate
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)

from panda.media import aiortc_patches
from panda.media.ice import MediaConfig, create_peer_connection
from tests.media.clients import PacketTrack, wait_for
from tests.media.mediagen import EncodedMedia

LOOPBACK = MediaConfig(ice_loopback=True)

# RTCRtpReceiver.receive() is mirrored (minus the decoder thread) in ReceiverTap._receive.
RECEIVE_SOURCE_SHA256 = "d6d8d8d7a0bf4e95"  # first 16 hex digits of aiortc 1.16.0


def _sha(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_aiortc_and_aioice_versions_are_the_ones_checked() -> None:
    assert aiortc.__version__.startswith("1.16."), aiortc.__version__
    assert aioice.__version__.startswith("0.13."), aioice.__version__


def test_receiver_receive_is_unchanged_since_mirrored() -> None:
    # If this fails, compare RTCRtpReceiver.receive() with ReceiverTap._receive().
    assert _sha(RTCRtpReceiver.receive) == RECEIVE_SOURCE_SHA256


def test_receiver_hands_frames_to_decoder_queue_as_the_tap_expects() -> None:
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "if encoded_frame is not None and self.__decoder_thread:" in source
    assert "self.__decoder_queue.put((codec, encoded_frame))" in source
    assert "encoded_frame.timestamp = self.__timestamp_mapper.map(" in source
    assert "await self._send_rtcp(rtcp_packet)" in source  # REMB goes through _send_rtcp
    assert "await self._send_rtcp_pli(packet.ssrc)" in source
    stop = inspect.getsource(RTCRtpReceiver.stop)
    assert "self.__stop_decoder()" in stop and "self.__rtcp_started.wait()" in stop


def test_sender_feedback_paths_as_the_hook_expects() -> None:
    source = inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    assert "RTCP_PSFB_PLI" in source and "self._send_keyframe()" in source
    assert "unpack_remb_fci(packet.fci)" in source
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.pack(data)" in next_frame  # av.Packet is re-packetised only
    run = inspect.getsource(RTCRtpSender._run_rtp)
    assert "MediaStreamError" in run


def test_peer_connection_private_members_exist() -> None:
    for name in ("createTransceiver", "createDtlsTransport"):
        assert callable(getattr(RTCPeerConnection, f"_RTCPeerConnection__{name}"))
    for name in ("stop_decoder",):
        assert callable(getattr(RTCRtpReceiver, f"_RTCRtpReceiver__{name}"))
    for name in ("find_common_codecs",):
        assert hasattr(aiortc.rtcpeerconnection, name)
    create = inspect.getsource(RTCPeerConnection._RTCPeerConnection__createTransceiver)
    assert "RTCRtpReceiver(kind, dtlsTransport)" in create
    dtls = inspect.getsource(RTCPeerConnection._RTCPeerConnection__createDtlsTransport)
    assert "RTCIceGatherer(" in dtls


def test_aioice_members_exist() -> None:
    connection = aioice.Connection(ice_controlling=False)
    for name in ("get_component_candidates", "add_remote_candidate", "request_received"):
        assert callable(getattr(connection, name))
    assert isinstance(connection._nominated, dict)
    gather = inspect.getsource(aioice.Connection.gather_candidates)
    assert "self.get_component_candidates(" in gather


async def test_private_attributes_exist_on_live_objects() -> None:
    pc = create_peer_connection(LOOPBACK)
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        receiver, sender = transceiver.receiver, transceiver.sender
        for name in ("started", "codecs", "rtx_ssrc", "decoder_queue", "decoder_thread",
                     "remote_streams", "rtcp_ssrc", "rtcp_task", "transport", "kind",
                     "jitter_buffer"):
            assert hasattr(receiver, f"_RTCRtpReceiver__{name}"), name
        for name in ("_run_rtcp", "_send_rtcp", "_send_rtcp_pli", "_handle_rtp_packet"):
            assert callable(getattr(receiver, name)), name
        for name in ("packet_count", "octet_count", "rtt"):
            assert hasattr(sender, f"_RTCRtpSender__{name}"), name
        assert isinstance(sender._ssrc, int)
        dtls = receiver.transport
        assert isinstance(dtls._RTCDtlsTransport__rx_bytes, int)
        assert isinstance(dtls._RTCDtlsTransport__tx_bytes, int)
        assert isinstance(dtls._rtp_router.ssrc_table, dict)
        assert callable(dtls._register_rtp_receiver)
        assert isinstance(dtls.transport.iceGatherer._connection, aioice.Connection)
        assert isinstance(transceiver._codecs, list)
        assert hasattr(transceiver, "_offerDirection")
    finally:
        await pc.close()


# ----------------------------------------------------------------------------- behaviour


async def _connect(sender_pc: RTCPeerConnection, receiver_pc: RTCPeerConnection) -> None:
    offer = await sender_pc.createOffer()
    await sender_pc.setLocalDescription(offer)
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    answer = await receiver_pc.createAnswer()
    await receiver_pc.setLocalDescription(answer)
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)


async def test_tap_receives_encoded_frames_without_decoding(
    no_decoding: list[str], vp8: EncodedMedia
) -> None:
    send_pc = create_peer_connection(LOOPBACK)
    recv_pc = create_peer_connection(LOOPBACK)
    taps: list[aiortc_patches.ReceiverTap] = []
    aiortc_patches.on_transceiver_created(
        recv_pc, lambda t: taps.append(aiortc_patches.tap_receiver(t.receiver)))
    frames: list[tuple[str, bytes, int]] = []
    plis: list[int] = []
    try:
        track = PacketTrack("video", vp8)
        transceiver = send_pc.addTransceiver(track, direction="sendonly")
        remb_seen: list[int] = []
        hook = aiortc_patches.hook_sender(
            transceiver.sender, on_keyframe_request=lambda: plis.append(1),
            on_remb=remb_seen.append)
        await _connect(send_pc, recv_pc)
        assert len(taps) == 1
        tap = taps[0]

        def on_frame(codec: RTCRtpCodecParameters, frame: Any, arrival: float) -> None:
            frames.append((codec.mimeType, frame.data, frame.timestamp))

        tap.on_frame = on_frame
        await wait_for(lambda: len(frames) >= 10, what="tapped frames")
        assert frames[0][0] == "video/VP8"
        data = [f[1] for f in frames]
        assert data == track.sent[: len(data)]  # byte-identical, in order
        assert frames[1][2] - frames[0][2] == 3000  # RTP clock, mapped to start at 0
        assert tap.media_ssrc == transceiver.sender._ssrc  # never the RTX SSRC
        # a PLI from the tap reaches the remote sender's hook
        await tap.request_keyframe()
        await wait_for(lambda: plis, what="PLI at the sender")
        # a FIR names its target in the FCI (media SSRC 0): it reaches the hook too
        rtcp_ssrc = tap.receiver._RTCRtpReceiver__rtcp_ssrc
        fci = struct.pack("!LB3x", transceiver.sender._ssrc, 1)
        await tap.receiver._send_rtcp(
            RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci))
        await wait_for(lambda: len(plis) == 2, what="FIR at the sender")
        # a NACK the sender can serve is no keyframe request; one it cannot serve is
        sent = transceiver.sender._RTCRtpSender__rtp_history
        recent = max(p.sequence_number for p in sent.values())
        for lost, requests in (([recent], 2), ([recent, (recent - 1000) % 65536], 3)):
            nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=rtcp_ssrc,
                                   media_ssrc=transceiver.sender._ssrc)
            nack.lost = lost
            await hook._handle_rtcp_packet(nack)
            assert len(plis) == requests, lost
        # REMB the receiver sends is capped by bitrate_limit
        tap.bitrate_limit = 123_000
        tap.send_remb_now()
        await wait_for(lambda: 123_000 in remb_seen, what="capped REMB")
        rtx = tap.receiver._RTCRtpReceiver__rtx_ssrc
        router = tap.receiver.transport._rtp_router
        assert rtx and all(router.ssrc_table.get(s) is tap.receiver for s in rtx)
        assert recv_pc.getTransceivers()[0].receiver._RTCRtpReceiver__decoder_thread.join() is None
    finally:
        await send_pc.close()
        await recv_pc.close()


async def test_taps_replace_aiortc_jitter_buffers() -> None:
    pc = create_peer_connection(LOOPBACK)
    try:
        audio = pc.addTransceiver("audio").receiver
        video = pc.addTransceiver("video").receiver
        source = inspect.getsource(RTCRtpReceiver.__init__)
        assert "self.__jitter_buffer = JitterBuffer(capacity=16, prefetch=4)" in source
        assert "self.__jitter_buffer = JitterBuffer(capacity=512, is_video=True)" in source
        assert "pli_flag, encoded_frame = self.__jitter_buffer.add(packet)" in inspect.getsource(
            RTCRtpReceiver._handle_rtp_packet)
        aiortc_patches.tap_receiver(audio)
        aiortc_patches.tap_receiver(video)
        audio_buffer = audio._RTCRtpReceiver__jitter_buffer
        assert audio_buffer.capacity == 16 and not audio_buffer._is_video
        assert audio_buffer._prefetch == 0
        buffer = video._RTCRtpReceiver__jitter_buffer
        assert isinstance(buffer, aiortc_patches.RelayJitterBuffer)
        assert buffer.capacity == 512 and buffer._is_video
    finally:
        await pc.close()


def _rtp(seq: int, timestamp: int, data: bytes, marker: int = 0) -> RtpPacket:
    packet = RtpPacket(payload_type=96, marker=marker, sequence_number=seq,
                       timestamp=timestamp, ssrc=1234, payload=data)
    packet._data = data  # type: ignore[attr-defined]
    return packet


def test_audio_buffer_has_no_prefetch() -> None:
    buffer = JitterBuffer(capacity=16, prefetch=0)  # what tap_receiver installs for audio
    assert buffer.add(_rtp(65535, 0, b"a"))[1] is None
    frame = buffer.add(_rtp(0, 960, b"b"))[1]  # one packet later, not four
    assert frame is not None and frame.data == b"a"


def test_early_video_buffer_emits_a_frame_at_its_marker() -> None:
    buffer = aiortc_patches.RelayJitterBuffer("video")
    assert buffer.add(_rtp(10, 3000, b"a"))[1] is None
    assert buffer.add(_rtp(11, 3000, b"b"))[1] is None
    frame = buffer.add(_rtp(12, 3000, b"c", marker=1))[1]
    assert frame is not None and frame.data == b"abc" and frame.timestamp == 3000
    # out of order: the frame leaves when its missing middle packet arrives
    assert buffer.add(_rtp(13, 6000, b"d"))[1] is None
    assert buffer.add(_rtp(15, 6000, b"f", marker=1))[1] is None
    frame = buffer.add(_rtp(14, 6000, b"e"))[1]
    assert frame is not None and frame.data == b"def"
    # without marker bits it still works the aiortc way (next frame completes it)
    assert buffer.add(_rtp(16, 9000, b"g"))[1] is None
    frame = buffer.add(_rtp(17, 12000, b"h"))[1]
    assert frame is not None and frame.data == b"g"


async def test_tap_must_be_installed_before_start() -> None:
    pc = create_peer_connection(LOOPBACK)
    try:
        receiver = pc.addTransceiver("audio").receiver
        receiver._RTCRtpReceiver__started = True
        with pytest.raises(RuntimeError):
            aiortc_patches.tap_receiver(receiver)
    finally:
        receiver._RTCRtpReceiver__started = False
        await pc.close()


async def test_loopback_restriction() -> None:
    connection = aioice.Connection(ice_controlling=False)
    calls: list[Any] = []
    original = connection.request_received
    connection.request_received = lambda *a: calls.append(a)  # type: ignore[method-assign]
    aiortc_patches.restrict_ice_to_addresses(connection, ("127.0.0.1",))
    try:
        await connection.gather_candidates()
        assert connection.local_candidates
        assert {c.host for c in connection.local_candidates} == {"127.0.0.1"}
        lan = Candidate(foundation="1", component=1, transport="udp", priority=1,
                        host="192.0.2.7", port=5000, type="host")
        loop = Candidate(foundation="2", component=1, transport="udp", priority=1,
                         host="127.0.0.1", port=5001, type="host")
        await connection.add_remote_candidate(lan)
        await connection.add_remote_candidate(loop)
        assert [c.host for c in connection.remote_candidates] == ["127.0.0.1"]
        connection.request_received("msg", ("192.0.2.7", 5000), None)
        connection.request_received("msg", ("127.0.0.1", 5001), None)
        assert calls == [("msg", ("127.0.0.1", 5001), None)]
    finally:
        connection.request_received = original  # type: ignore[method-assign]
        await connection.close()


async def test_codec_helpers() -> None:
    pc = create_peer_connection(LOOPBACK)
    try:
        transceiver = pc.addTransceiver("video")
        from aiortc.codecs import CODECS

        transceiver._codecs = list(CODECS["video"])
        kept = aiortc_patches.restrict_transceiver_codecs(transceiver, "video/H264")
        assert kept is not None and kept.mimeType == "video/H264"
        names = [c.mimeType for c in transceiver._codecs]
        assert names == ["video/H264", "video/rtx"]
        assert transceiver._codecs[1].parameters["apt"] == kept.payloadType
        assert aiortc_patches.restrict_transceiver_codecs(transceiver, "video/VP8") is None
        mimes = aiortc_patches.common_codec_mimes("video", list(CODECS["video"]))
        assert mimes == ["video/vp8", "video/h264"]
    finally:
        await pc.close()


def test_video_buffer_gives_up_a_packet_lost_mid_frame_and_releases_what_waited() -> None:
    """The outage case: a frame's first packet came, its middle was lost, then the sender
    went on (after a pause) with later frames, a keyframe among them."""
    now = [0.0]
    buffer = aiortc_patches.RelayJitterBuffer("video", max_gap_wait=0.5, clock=lambda: now[0])
    losses: list[int] = []
    buffer.on_loss = lambda: losses.append(1)
    assert buffer.add(_rtp(100, 3000, b"a", marker=1))[1] is not None
    assert buffer.add(_rtp(101, 6000, b"b1")) == (False, None)  # 102 (b2) and 103 lost
    now[0] = 4.0  # the network comes back
    assert buffer.add(_rtp(104, 6000, b"b4", marker=1)) == (False, None)  # rest of broken b
    assert buffer.add(_rtp(105, 9000, b"c", marker=1)) == (False, None)
    assert buffer.add(_rtp(106, 12000, b"K1")) == (False, None)
    now[0] = 4.3
    assert buffer.add(_rtp(107, 12000, b"K2", marker=1)) == (False, None)  # still waiting
    assert not losses
    now[0] = 4.6
    pli, frame = buffer.add(_rtp(108, 15000, b"d", marker=1))
    # frame b is dropped whole; c, K and d leave at once; the loss is reported, not flagged
    assert not pli and losses == [1] and buffer.gaps_skipped == 1
    assert frame is not None and frame.data == b"c"
    assert [f.data for f in buffer.ready] == [b"K1K2", b"d"]
    buffer.ready.clear()
    frame = buffer.add(_rtp(109, 18000, b"e", marker=1))[1]
    assert frame is not None and frame.data == b"e" and losses == [1]


def test_video_buffer_gives_each_hole_its_own_wait() -> None:
    now = [0.0]
    buffer = aiortc_patches.RelayJitterBuffer("video", max_gap_wait=0.5, clock=lambda: now[0])
    assert buffer.add(_rtp(1, 3000, b"a", marker=1))[1] is not None
    assert buffer.add(_rtp(3, 6000, b"c", marker=1)) == (False, None)  # 2 missing
    now[0] = 0.4
    assert buffer.add(_rtp(5, 9000, b"e", marker=1)) == (False, None)  # 4 missing too
    frame = buffer.add(_rtp(2, 6000, b"b"))[1]  # 2 retransmitted: frame 6000 is whole
    assert frame is not None and frame.data == b"bc"
    now[0] = 0.6  # 0.6 s after the first hole, 0.2 s after the second one was seen
    assert buffer.add(_rtp(6, 12000, b"f", marker=1)) == (False, None)
    assert buffer.gaps_skipped == 0
    now[0] = 1.2
    frame = buffer.add(_rtp(7, 15000, b"g", marker=1))[1]
    assert buffer.gaps_skipped == 1 and frame is not None


def test_video_buffer_without_a_hole_never_waits() -> None:
    buffer = aiortc_patches.RelayJitterBuffer("video", max_gap_wait=0.0)
    buffer.on_loss = lambda: pytest.fail("nothing was lost")
    for n in range(1000):  # two packets a frame, across the 16-bit sequence wrap
        seq = (65000 + 2 * n) % 65536
        assert buffer.add(_rtp(seq, n * 3000, b"x"))[1] is None
        frame = buffer.add(_rtp((seq + 1) % 65536, n * 3000, b"y", marker=1))[1]
        assert frame is not None and frame.data == b"xy" and not buffer.ready


def test_early_video_buffer_gives_up_a_lost_packet_after_a_while() -> None:
    now = [0.0]
    buffer = aiortc_patches.RelayJitterBuffer("video", max_gap_wait=0.5, clock=lambda: now[0])
    assert buffer.add(_rtp(1, 3000, b"a", marker=1))[1] is not None
    # packet 2 (first half of frame 6000) is lost for good; 3 completes that frame
    assert buffer.add(_rtp(3, 6000, b"c", marker=1)) == (False, None)
    now[0] = 0.2
    assert buffer.add(_rtp(4, 9000, b"d", marker=1)) == (False, None)  # still waiting
    now[0] = 0.6
    pli, frame = buffer.add(_rtp(5, 12000, b"e", marker=1))
    # the broken frame 6000 is dropped, frame 9000 goes out, a keyframe is asked for
    assert pli and frame is not None and frame.data == b"d" and buffer.gaps_skipped == 1
    assert buffer.add(_rtp(6, 15000, b"f", marker=1))[1] is not None
    # frame 12000 came in whole meanwhile: it is next, nothing else is lost
    assert buffer.add(_rtp(7, 18000, b"g", marker=1))[1] is not None

