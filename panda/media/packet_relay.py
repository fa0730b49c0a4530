"""The packet-level forwarding path (``PANDA_RELAY_PATH=packet``).

Publishers' RTP packets are taken off their DTLS transport right after SRTP
unprotect and, per subscriber, rewritten (SSRC, payload type, sequence number and
timestamp offsets, header extension ids) and protected with the subscriber's SRTP
context: nothing is reassembled or re-packetised. The frame path's bookkeeping is
reused as is: :class:`~panda.media.fanout.Fanout` keeps subscribers, keyframe gating
flags, throttled keyframe requests, REMB minimum and sinks. The recorder's sinks get
whole frames from a :class:`FrameAssembler`, which exists only while a sink does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import av
from aiortc import RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcdtlstransport import RTCDtlsTransport

from . import aiortc_packet_patches as patches
from . import aiortc_patches
from .fanout import Fanout, ForwardingTrack, FrameSink

if TYPE_CHECKING:
    from .room import Participant, Publication

logger = logging.getLogger(__name__)

HISTORY_SIZE = 512  # packets kept per video publication to answer NACKs (~3 s at 1.5 Mbit/s)
_HISTORY_MASK = HISTORY_SIZE - 1
SR_UPDATE_EVERY = 32  # packets between updates of a subscriber sender's report counters
# Header extensions never forwarded: the subscriber's m-line has its own mid.
DROPPED_EXTENSIONS = frozenset({
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
})
# With no aiortc bandwidth estimator on this path, the relay tells a publisher this much
# (capped by the subscribers' own estimates), every REMB_INTERVAL seconds.
UNCAPPED_BITRATE = 3_000_000
# A jump this far ahead in a video publication's sequence numbers is a loss NACK cannot repair
# in time (an outage: the publisher kept sending into the void); ask for a keyframe at once
# instead of letting every subscriber find out through its own NACK and PLI timeouts.
LOSS_JUMP = 64
REMB_INTERVAL = 1.0
FRAME_STEP = {"audio": 960, "video": 3000}  # timestamp step across a source change (20 ms, 1/30 s)

_SEQ_TS = struct.Struct("!HI")
_SSRC = struct.Struct("!I")
_ZEROS = [bytes(n) for n in range(258)]

ExtTable = bytes  # 256 entries: incoming extension id -> outgoing id (0 = drop)


# --------------------------------------------------------------------------- payload tests


def vp8_keyframe_start(payload: bytes) -> bool:
    """True if this VP8 RTP payload (RFC 7741) starts a key frame."""
    if len(payload) < 4:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:  # S bit and partition 0
        return False
    i = 1
    if b0 & 0x80:
        x = payload[1]
        i = 2
        if x & 0x80:  # PictureID, 7 or 15 bits
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # TL0PICIDX
            i += 1
        if x & 0x30:  # TID/KEYIDX
            i += 1
    if i + 6 > len(payload):
        return False
    return not payload[i] & 0x01 and payload[i + 3:i + 6] == b"\x9d\x01\x2a"


def h264_keyframe_start(payload: bytes) -> bool:
    """True if this H.264 RTP payload (RFC 6184) carries an SPS or starts an IDR slice."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A
        i = 1
        while i + 2 < len(payload):
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return False


def _always(payload: bytes) -> bool:
    return True


def keyframe_start_detector(mime_type: str) -> Callable[[bytes], bool]:
    """Keyframe-start test on RTP payloads of a codec (audio: every packet)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_keyframe_start
    if mime == "video/h264":
        return h264_keyframe_start
    return _always


def payload_bounds(data: bytes) -> tuple[int, int]:
    """(start, end) of an RTP packet's payload: after CSRCs and extensions, before padding."""
    b0 = data[0]
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = len(data) - (data[-1] if b0 & 0x20 else 0)
    if start > end:
        raise ValueError("truncated RTP packet")
    return start, end


def unwrap_rtx(data: bytes, apt: int, media_ssrc: bytes) -> bytes | None:
    """The original packet inside an RTX packet (RFC 4588), or None for padding only."""
    start, end = payload_bounds(data)
    if end - start < 2:
        return None  # padding only (bandwidth probing)
    return (bytes(((data[0] & 0xDF), (data[1] & 0x80) | apt)) + data[start:start + 2]
            + data[4:8] + media_ssrc + data[12:start] + data[start + 2:end])


def extension_table(incoming: dict[str, int], outgoing: dict[str, int]) -> ExtTable:
    """Map a publisher's header extension ids to a subscriber's (by URI); others drop."""
    table = bytearray(256)
    for uri, ext_id in incoming.items():
        if uri in DROPPED_EXTENSIONS or not 0 < ext_id < 256:
            continue
        out = outgoing.get(uri)
        if out is not None and 0 < out < 256:
            table[ext_id] = out
    return bytes(table)


def rewrite_extensions(buf: bytearray | memoryview, table: ExtTable) -> None:
    """Renumber header extensions in place; unmapped ones become padding (RFC 8285 id 0)."""
    off = 12 + 4 * (buf[0] & 0x0F)
    profile = (buf[off] << 8) | buf[off + 1]
    i = off + 4
    end = min(i + 4 * ((buf[off + 2] << 8) | buf[off + 3]), len(buf))
    if profile == 0xBEDE:
        while i < end:
            b = buf[i]
            if b == 0:
                i += 1
                continue
            ext_id = b >> 4
            if ext_id == 15:
                break
            size = (b & 0x0F) + 2
            new = table[ext_id]
            if new == 0 or new > 14:
                buf[i:i + size] = _ZEROS[min(size, end - i)]
            elif new != ext_id:
                buf[i] = (new << 4) | (b & 0x0F)
            i += size
    elif profile & 0xFFF0 == 0x1000:
        while i < end:
            ext_id = buf[i]
            if ext_id == 0:
                i += 1
                continue
            if i + 1 >= end:
                break
            size = buf[i + 1] + 2
            new = table[ext_id]
            if new == 0:
                buf[i:i + size] = _ZEROS[min(size, end - i)]
            else:
                buf[i] = new
            i += size


# --------------------------------------------------------------------------- subscribers


class SubscriberOutput:
    """One subscriber sender's outgoing stream: offsets that keep it gapless across
    keyframe gates and source changes, and the SRTP output it is written to."""

    def __init__(self, track: ForwardingTrack, transceiver: RTCRtpTransceiver,
                 participant: Participant, output: patches.SrtpOutput | None = None) -> None:
        self.track = track
        self.transceiver = transceiver
        self.sender = transceiver.sender
        self.participant = participant
        self.output = output or patches.SrtpOutput(transceiver.sender.transport)
        self.ssrc = patches.sender_ssrc(transceiver.sender)
        self.pt = 0
        self.ext: ExtTable = bytes(256)
        self.source: PacketForwarder | None = None
        self.first_seq = 0
        self.seq_off = 0
        self.ts_off = 0
        self.last_seq: int | None = None
        self.last_ts = 0
        self.packets_forwarded = 0
        self.retransmitted = 0
        self.nacks_forwarded = 0
        self._unreported = 0
        self._unreported_octets = 0

    def start(self, source: PacketForwarder, seq: int, ts: int) -> None:
        """Begin (or resume) forwarding ``source`` at the packet ``seq``/``ts``."""
        if self.last_seq is None:
            self.seq_off = random.getrandbits(15) - seq
            self.ts_off = random.getrandbits(32) - ts
        elif source is not self.source:
            self.seq_off = self.last_seq + 1 - seq
            self.ts_off = self.last_ts + FRAME_STEP[source.kind] - ts
        else:
            # Same source (gate re-opened): keep the timestamp relation, close the seq gap.
            self.seq_off = self.last_seq + 1 - seq
        self.first_seq = seq
        self.source = source
        pt = patches.transceiver_payload_type(self.transceiver)
        self.pt = pt if pt is not None else source.payload_type
        self.ext = extension_table(source.participant._extmap, self.participant._extmap)

    def forward(self, data: bytes, seq: int, ts: int, retransmission: bool = False) -> None:
        """Rewrite ``data`` for this subscriber, protect it and send it."""
        out_seq = (seq + self.seq_off) & 0xFFFF
        out_ts = (ts + self.ts_off) & 0xFFFFFFFF
        size = self.output.write(data, (data[1] & 0x80) | self.pt, out_seq, out_ts, self.ssrc,
                                 self.ext, rewrite_extensions)
        if not size:
            return
        self.packets_forwarded += 1
        if retransmission:
            self.retransmitted += 1
        elif self.last_seq is None or (out_seq - self.last_seq) & 0xFFFF < 0x8000:
            self.last_seq = out_seq
            self.last_ts = out_ts
        self._unreported += 1
        self._unreported_octets += size
        if self._unreported >= SR_UPDATE_EVERY:
            patches.add_sender_counters(self.sender, self._unreported, self._unreported_octets,
                                        self.last_ts)
            self._unreported = self._unreported_octets = 0

    def on_nack(self, lost: list[int]) -> None:
        """The subscriber misses packets: resend them from history, ask the publisher for
        the rest."""
        source = self.source
        if source is None or source.closed:
            return
        history = source.history
        missing: list[int] = []
        for out_seq in lost:
            seq = (out_seq - self.seq_off) & 0xFFFF
            if (seq - self.first_seq) & 0xFFFF >= 0x8000:
                continue  # from before this subscriber's stream began
            data = history[seq & _HISTORY_MASK] if history is not None else None
            if data is not None and ((data[2] << 8) | data[3]) == seq:
                self.forward(data, seq, _SEQ_TS.unpack_from(data, 2)[1], retransmission=True)
            else:
                missing.append(seq)
        if missing:
            self.nacks_forwarded += len(missing)
            source.request_retransmission(missing)


# --------------------------------------------------------------------------- publishers


class FrameAssembler:
    """Rebuilds whole encoded frames from a publication's packets for its sinks (the
    recorder), with its own jitter buffer; lives only while the fanout has sinks."""

    def __init__(self, forwarder: PacketForwarder) -> None:
        self.forwarder = forwarder
        self.codec = forwarder.codec
        self.fanout = forwarder.fanout
        if forwarder.kind == "video":
            self.jitter: JitterBuffer = aiortc_patches.RelayJitterBuffer("video")
        else:
            self.jitter = JitterBuffer(capacity=16, prefetch=0)
        self.mapper = patches.TimestampMapper()
        # Ask the publisher for what it lost on the way in, as aiortc's receiver would: a
        # subscriber's NACK may come later or never (no subscriber, or it lost nothing).
        self.nack = patches.NackGenerator() if forwarder.kind == "video" else None
        self._is_keyframe = _fanout_keyframe_test(forwarder.fanout)
        # Video joins at a frame boundary, on the packet right after a marker: a frame's
        # tail is no frame, and a late packet from before it would stall the buffer.
        self._synced = forwarder.kind != "video"
        self._expect: int | None = None

    def add(self, data: bytes, arrival: float) -> None:
        """Feed one (unwrapped) media packet."""
        if not self._synced:
            seq = (data[2] << 8) | data[3]
            if seq != self._expect:
                if data[1] & 0x80:
                    self._expect = (seq + 1) & 0xFFFF
                return
            self._synced = True
        packet = patches.parse_rtp(data)
        nack = self.nack
        if nack is not None and nack.add(packet):
            self.forwarder.request_retransmission(sorted(nack.missing))
        try:
            packet._data = (  # type: ignore[attr-defined]
                patches.depayload(self.codec, packet.payload) if packet.payload else b"")
        except ValueError:
            return
        pli, frame = self.jitter.add(packet)
        if pli:
            self.fanout.request_keyframe()
        if frame is None:
            return
        timestamp = self.mapper.map(frame.timestamp)
        self._push(frame.data, timestamp, arrival)

    def _push(self, data: bytes, timestamp: int, arrival: float) -> None:
        fanout = self.fanout
        packet = av.Packet(data)
        packet.pts = packet.dts = timestamp
        packet.time_base = fanout.time_base
        keyframe = self._is_keyframe(data)
        for sink in list(fanout.sinks):
            try:
                sink.on_frame(packet, keyframe=keyframe, arrival=arrival)
            except Exception:
                logger.exception("frame sink %r failed; removed", sink)
                fanout.remove_sink(sink)


def _fanout_keyframe_test(fanout: Fanout) -> Callable[[bytes], bool]:
    from .fanout import keyframe_detector

    return keyframe_detector(fanout.mime_type)


class PacketForwarder:
    """One publication on the packet path: its packets -> every reading subscriber."""

    def __init__(self, pub: Publication, relay: PacketRelay) -> None:
        self.pub = pub
        self.relay = relay
        self.participant = pub.participant
        self.fanout = pub.fanout
        self.kind = pub.kind
        self.codec = pub.codec
        self.payload_type = pub.codec.payloadType or 96
        self.receiver = pub.transceiver.receiver
        self.tap = pub.tap
        self.is_video = pub.kind == "video"
        self.history: list[bytes | None] | None = [None] * HISTORY_SIZE if self.is_video else None
        self._keyframe_start = keyframe_start_detector(pub.codec.mimeType)
        self._outputs = relay._outputs
        self._stats: dict[int, Any] = {}
        self._frame_start = True
        self.assembler: FrameAssembler | None = None
        self.packets_in = 0
        self.retransmissions_in = 0
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._remb_timer: asyncio.TimerHandle | None = None
        if self.is_video:
            self.tap.own_estimate = UNCAPPED_BITRATE
            self._remb_timer = asyncio.get_running_loop().call_later(REMB_INTERVAL, self._remb)

    def _remb(self) -> None:
        # Browsers keep the last REMB as a cap; repeating it covers a lost RTCP packet.
        if self.closed or self.fanout.ended:
            self._remb_timer = None
            return
        self.tap.send_remb_now()
        self._remb_timer = asyncio.get_running_loop().call_later(REMB_INTERVAL, self._remb)

    def stream_stats(self, ssrc: int) -> Any:
        stats = self._stats.get(ssrc)
        if stats is None:
            stats = self._stats[ssrc] = patches.receiver_stream_stats(
                self.receiver, ssrc, self.codec.clockRate)
        return stats

    def on_packet(self, ssrc: int, rtx: tuple[int, bytes] | None, data: bytes) -> None:
        """One unprotected RTP packet of this publication (``rtx``: (apt, media SSRC))."""
        fanout = self.fanout
        if fanout.ended:
            self.close()
            return
        stats = self._stats.get(ssrc) or self.stream_stats(ssrc)
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        # Receiver-report statistics, as aiortc's receiver keeps them (jitter left out).
        stats.packets_received += 1
        top = stats.max_seq
        if top is None:
            stats.base_seq = stats.max_seq = seq
        elif 0 < (seq - top) & 0xFFFF < 0x8000:
            if seq < top:
                stats.cycles += 0x10000
            stats.max_seq = seq
            if (seq - top) & 0xFFFF > LOSS_JUMP and self.is_video and rtx is None:
                # Subscribers restart at the next keyframe (gapless from their view).
                fanout.lost()
        if rtx is not None:
            data = unwrap_rtx(data, *rtx)
            if data is None:
                return
            seq = (data[2] << 8) | data[3]
            self.retransmissions_in += 1
        self.packets_in += 1
        history = self.history
        if history is not None:
            history[seq & _HISTORY_MASK] = data
        marker = data[1] & 0x80
        keyframe = -1
        if self.is_video:
            if self._frame_start and rtx is None:
                start, end = payload_bounds(data)
                keyframe = self._keyframe_start(data[start:end])
                if keyframe:
                    fanout.keyframes_in += 1
            if rtx is None:
                self._frame_start = bool(marker)
            if marker and rtx is None:
                fanout.frames_in += 1
        else:
            fanout.frames_in += 1
        if fanout._sinks:
            assembler = self.assembler
            if assembler is None:
                assembler = self.assembler = FrameAssembler(self)
            assembler.add(data, time.monotonic())
        elif self.assembler is not None:
            self.assembler = None
        outputs = self._outputs
        counts_frame = bool(marker) or not self.is_video
        for track in fanout._tracks:
            if not track.reading:
                continue
            out = outputs.get(track)
            if out is None:
                continue
            if track.needs_keyframe:
                if keyframe < 0:
                    start, end = payload_bounds(data)
                    keyframe = self._keyframe_start(data[start:end])
                if not keyframe:
                    continue
                track.needs_keyframe = False
                out.start(self, seq, ts)
            elif out.source is not self:
                out.start(self, seq, ts)
            elif (seq - out.first_seq) & 0xFFFF >= 0x8000:
                continue  # older than where this subscriber's stream began
            out.forward(data, seq, ts, rtx is not None)
            if counts_frame:
                track.frames_forwarded += 1

    def request_retransmission(self, seqs: list[int]) -> None:
        """Forward a subscriber's NACK (already in our sequence numbers) to the publisher."""
        ssrc = self.tap.media_ssrc
        if ssrc is None or self.closed:
            return
        task = asyncio.ensure_future(patches.send_nack(self.receiver, ssrc, seqs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop forwarding (the publication ended or was replaced)."""
        self.closed = True
        if self._remb_timer is not None:
            self._remb_timer.cancel()
            self._remb_timer = None
        self.assembler = None
        self.history = None


# --------------------------------------------------------------------------- ingress


class _Route:
    """Where one SSRC's packets go: its forwarder, and how to unwrap them if RTX."""

    __slots__ = ("deliver", "forwarder")

    def __init__(self, forwarder: PacketForwarder, ssrc: int, rtx: tuple[int, bytes] | None):
        self.forwarder = forwarder
        # A partial, not a method: one Python frame less per packet.
        self.deliver: Callable[[bytes], None] = functools.partial(forwarder.on_packet, ssrc, rtx)


class _Ingress:
    """Per DTLS transport: SSRC -> route, resolved once through aiortc's router."""

    def __init__(self, relay: PacketRelay, dtls: RTCDtlsTransport) -> None:
        self.relay = relay
        self.dtls = dtls
        self.table: dict[int, _Route] = {}

    def claim(self, data: bytes) -> Callable[[bytes], None] | None:
        """Where a packet (still protected: its header is in the clear) goes, if ours."""
        ssrc = _SSRC.unpack_from(data, 8)[0]
        route = self.table.get(ssrc)
        if route is None or route.forwarder.closed:
            route = self._resolve(ssrc, data[1] & 0x7F)
            if route is None:
                return None
        return route.deliver

    def __call__(self, data: bytes) -> bool:
        """A packet aiortc unprotected: forward it if it belongs to a publication."""
        deliver = self.claim(data)
        if deliver is None:
            return False
        deliver(data)
        return True

    def _resolve(self, ssrc: int, pt: int) -> _Route | None:
        self.table.pop(ssrc, None)
        receiver = patches.receiver_for_packet(self.dtls, ssrc, pt)
        forwarder = self.relay._forwarders.get(receiver) if receiver is not None else None
        if forwarder is None or forwarder.closed:
            return None
        codec = patches.receiver_codecs(receiver).get(pt)
        rtx: tuple[int, bytes] | None = None
        if codec is not None and is_rtx(codec):
            apt = codec.parameters.get("apt")
            media_ssrc = forwarder.tap.media_ssrc
            if not isinstance(apt, int) or media_ssrc is None:
                return None
            rtx = (apt, _SSRC.pack(media_ssrc))
        route = self.table[ssrc] = _Route(forwarder, ssrc, rtx)
        return route


class PacketRelay:
    """The packet path of a room registry: forwarders by receiver, outputs by track."""

    def __init__(self) -> None:
        self._forwarders: dict[Any, PacketForwarder] = {}
        self._outputs: dict[ForwardingTrack, SubscriberOutput] = {}

    def attach(self, participant: Participant) -> None:
        """Take RTP off every DTLS transport of ``participant``'s peer connection."""

        def on_dtls(dtls: RTCDtlsTransport) -> None:
            ingress = _Ingress(self, dtls)
            patches.intercept_srtp_datagrams(dtls, ingress.claim)
            patches.intercept_rtp(dtls, ingress)

        aiortc_patches.on_dtls_transport_created(participant.pc, on_dtls)

    def publish(self, pub: Publication) -> PacketForwarder:
        """Forward ``pub``'s packets from now on (its tap hands out no frames)."""
        receiver = pub.transceiver.receiver
        old = self._forwarders.get(receiver)
        if old is not None:
            old.close()
        forwarder = self._forwarders[receiver] = PacketForwarder(pub, self)
        pub.tap.on_frame = None
        return forwarder

    def forwarder(self, pub: Publication) -> PacketForwarder | None:
        """The live forwarder of ``pub``, if any."""
        forwarder = self._forwarders.get(pub.transceiver.receiver)
        return forwarder if forwarder is not None and forwarder.pub is pub else None

    def bind(self, track: ForwardingTrack, transceiver: RTCRtpTransceiver,
             participant: Participant) -> SubscriberOutput:
        """Send what ``track`` subscribes to on ``transceiver``'s sender, as packets."""
        output = SubscriberOutput(track, transceiver, participant)
        self._outputs[track] = output
        patches.hook_sender_nack(transceiver.sender, output.on_nack)
        return output

    def output(self, track: ForwardingTrack) -> SubscriberOutput | None:
        return self._outputs.get(track)

    def forget(self, participant: Participant) -> None:
        """Drop everything of a participant that left."""
        for track, output in list(self._outputs.items()):
            if output.participant is participant:
                del self._outputs[track]
        for receiver, forwarder in list(self._forwarders.items()):
            if forwarder.participant is participant:
                forwarder.close()
                del self._forwarders[receiver]


__all__ = [
    "FrameAssembler",
    "FrameSink",
    "PacketForwarder",
    "PacketRelay",
    "SubscriberOutput",
    "extension_table",
    "h264_keyframe_start",
    "keyframe_start_detector",
    "payload_bounds",
    "rewrite_extensions",
    "unwrap_rtx",
    "vp8_keyframe_start",
]
