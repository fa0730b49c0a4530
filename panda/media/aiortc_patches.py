"""Every reach into aiortc and aioice internals, in one place.

The relay forwards encoded media, which aiortc's public API does not offer: its
receivers always decode and its senders only hand congestion feedback to an
encoder. Each function here names the private attributes it relies on;
``tests/media/test_aiortc_patches.py`` fails loudly when an aiortc or aioice
release moves them. The package pins ``aiortc==1.16.*`` for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aioice import Candidate, Connection
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from aiortc.utils import uint16_add, uint16_gt

logger = logging.getLogger(__name__)

# Name-mangled attribute prefixes of the aiortc classes we reach into.
_PC = "_RTCPeerConnection__"
_RX = "_RTCRtpReceiver__"
_TX = "_RTCRtpSender__"
_DTLS = "_RTCDtlsTransport__"

FrameCallback = Callable[[RTCRtpCodecParameters, JitterFrame, float], None]


# --------------------------------------------------------------------------- peer connection


def on_transceiver_created(
    pc: RTCPeerConnection, callback: Callable[[RTCRtpTransceiver], None]
) -> None:
    """Call ``callback`` for every transceiver ``pc`` creates (local or from a remote offer).

    Runs before the transceiver's receiver or sender is started, so taps and hooks
    installed by the callback see every packet.
    """
    original = getattr(pc, _PC + "createTransceiver")

    def create_transceiver(*args: Any, **kwargs: Any) -> RTCRtpTransceiver:
        transceiver: RTCRtpTransceiver = original(*args, **kwargs)
        callback(transceiver)
        return transceiver

    setattr(pc, _PC + "createTransceiver", create_transceiver)


def on_dtls_transport_created(
    pc: RTCPeerConnection, callback: Callable[[RTCDtlsTransport], None]
) -> None:
    """Call ``callback`` with every DTLS transport ``pc`` creates, before it is used."""
    original = getattr(pc, _PC + "createDtlsTransport")

    def create_dtls_transport() -> RTCDtlsTransport:
        dtls: RTCDtlsTransport = original()
        callback(dtls)
        return dtls

    setattr(pc, _PC + "createDtlsTransport", create_dtls_transport)


def on_ice_connection_created(
    pc: RTCPeerConnection, callback: Callable[[Connection], None]
) -> None:
    """Call ``callback`` with every aioice ``Connection`` ``pc`` creates, before it gathers."""
    on_dtls_transport_created(pc, lambda dtls: callback(dtls_ice_connection(dtls)))


def dtls_ice_connection(dtls: RTCDtlsTransport) -> Connection:
    """The aioice agent under a DTLS transport."""
    return dtls.transport.iceGatherer._connection


class DtlsGuard:
    """Counts the packets a hardened transport dropped instead of dying on them."""

    def __init__(self) -> None:
        self.bad_rtp = 0
        self.bad_rtcp = 0


def harden_dtls_transport(dtls: RTCDtlsTransport) -> DtlsGuard:
    """Drop RTP/RTCP packets aiortc fails to parse instead of letting the exception end
    the transport's receive loop (which closes the whole connection).

    aiortc 1.16 raises ``struct.error`` from header-extension parsing on some packets a
    peer may legitimately send; one such packet would otherwise end the call.
    """
    existing = getattr(dtls, "_panda_guard", None)
    if isinstance(existing, DtlsGuard):
        return existing
    guard = DtlsGuard()
    handle_rtp = dtls._handle_rtp_data
    handle_rtcp = dtls._handle_rtcp_data

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        try:
            await handle_rtp(data, arrival_time_ms=arrival_time_ms)
        except (ValueError, IndexError, KeyError, struct.error):
            guard.bad_rtp += 1

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            await handle_rtcp(data)
        except (ValueError, IndexError, KeyError, struct.error):
            guard.bad_rtcp += 1

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]
    dtls._panda_guard = guard  # type: ignore[attr-defined]
    return guard


def route_fir_by_fci(dtls: RTCDtlsTransport) -> None:
    """Deliver a FIR to the sender its FCI names (idempotent).

    RFC 5104 sets a FIR's media SSRC field to 0 and names the target SSRC in the FCI;
    aiortc routes feedback by the media SSRC field only, so a FIR never reached a sender.
    """
    router = dtls._rtp_router
    if getattr(router, "_panda_fir", False):
        return
    route = router.route_rtcp

    def route_rtcp(packet: AnyRtcpPacket) -> set[Any]:
        recipients = route(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            # FCI entries: target SSRC (4 bytes), sequence number (1), reserved (3).
            for offset in range(0, len(packet.fci) - 7, 8):
                (ssrc,) = struct.unpack_from("!L", packet.fci, offset)
                sender = router.senders.get(ssrc)
                if sender is not None:
                    recipients.add(sender)
        return recipients

    router.route_rtcp = route_rtcp  # type: ignore[method-assign]
    router._panda_fir = True  # type: ignore[attr-defined]


def ice_connection_of(pc: RTCPeerConnection) -> Connection | None:
    """The (bundled) aioice agent of ``pc``, if it has one."""
    for transceiver in pc.getTransceivers():
        return transceiver.receiver.transport.transport.iceGatherer._connection
    return None


def selected_candidate_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """(local, remote) candidates of the nominated pair of ``pc``'s ICE agent, if any."""
    connection = ice_connection_of(pc)
    if connection is None:
        return None
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    return pair.local_candidate, pair.remote_candidate


def transport_counters(pc: RTCPeerConnection) -> tuple[int, int]:
    """(bytes received, bytes sent) on ``pc``'s bundled DTLS transport."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        return getattr(dtls, _DTLS + "rx_bytes"), getattr(dtls, _DTLS + "tx_bytes")
    return 0, 0


# --------------------------------------------------------------------------- ICE (aioice)


def restrict_ice_to_addresses(connection: Connection, addresses: Iterable[str]) -> None:
    """Gather host candidates on ``addresses`` only and ignore remote candidates and
    connectivity checks from any other address.

    aioice leaves loopback out of its host candidates; loopback mode needs exactly it.
    """
    allowed = tuple(addresses)
    gather = connection.get_component_candidates
    add_remote = connection.add_remote_candidate
    request_received = connection.request_received

    async def get_component_candidates(
        component: int, addresses: list[str], **kwargs: Any
    ) -> list[Candidate]:
        return await gather(component=component, addresses=list(allowed), **kwargs)

    async def add_remote_candidate(remote_candidate: Candidate | None) -> None:
        if remote_candidate is not None and remote_candidate.host not in allowed:
            return
        await add_remote(remote_candidate)

    def on_request(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if addr[0] not in allowed:
            return
        request_received(message, addr, protocol)

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign,assignment]
    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign]
    connection.request_received = on_request  # type: ignore[method-assign]


# --------------------------------------------------------------------------- receiver tap


class _NoDecoderThread:
    """Stands in for the receiver's decoder thread: truthy, and joins at once."""

    def join(self, timeout: float | None = None) -> None:
        return None

    def is_alive(self) -> bool:
        return False


class _TapQueue:
    """Stands in for the receiver's decoder queue: hands each encoded frame to a callback."""

    __slots__ = ("tap",)

    def __init__(self, tap: ReceiverTap) -> None:
        self.tap = tap

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            return
        codec, frame = item
        self._deliver(codec, frame)
        buffer = self.tap.jitter_buffer
        if isinstance(buffer, RelayJitterBuffer) and buffer.ready:
            # More frames became whole in the same step (a given-up gap released them):
            # they go now, timestamps mapped as aiortc mapped the first one.
            mapper = getattr(self.tap.receiver, _RX + "timestamp_mapper")
            while buffer.ready:
                frame = buffer.ready.popleft()
                frame.timestamp = mapper.map(frame.timestamp)
                self._deliver(codec, frame)

    def _deliver(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        callback = self.tap.on_frame
        if callback is not None:
            try:
                callback(codec, frame, time.monotonic())
            except Exception:
                # A consumer bug must not kill the receiver's packet loop.
                logger.exception("frame consumer failed")


class ReceiverTap:
    """Receives a track's reassembled encoded frames instead of aiortc's decoder.

    Install with :func:`tap_receiver` before the receiver starts. ``on_frame`` may be
    swapped at any time (``None`` drops frames). No decoder thread or decoder is ever
    created. REMB the receiver sends its remote peer is capped by ``bitrate_limit``.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.receiver = receiver
        self.on_frame: FrameCallback | None = None
        self.bitrate_limit: int | None = None
        self.own_estimate: int | None = None
        self.last_remb_sent: int | None = None
        self.codecs: list[RTCRtpCodecParameters] = []
        self.jitter_buffer: JitterBuffer | None = None
        # Called when received video was lost for good (a keyframe is needed to go on).
        self.on_loss: Callable[[], None] | None = None
        self._media_ssrc: int | None = None
        self._send_rtcp: Callable[[AnyRtcpPacket], Awaitable[None]] = receiver._send_rtcp
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def started(self) -> bool:
        return bool(getattr(self.receiver, _RX + "started"))

    @property
    def can_send_feedback(self) -> bool:
        """True once a PLI can reach the remote sender (receiver started, DTLS connected)."""
        return (self.started and self.media_ssrc is not None
                and self.receiver.transport.state == "connected")

    def _lost(self) -> None:
        callback = self.on_loss
        if callback is not None:
            callback()
        else:
            # Nobody consumes the frames yet: a plain PLI, as aiortc would send.
            ssrc = self.media_ssrc
            if ssrc is not None and self.started:
                task = asyncio.ensure_future(self.receiver._send_rtcp_pli(ssrc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @property
    def media_ssrc(self) -> int | None:
        """SSRC of the media stream (never the RTX one); learned from traffic if not signalled."""
        if self._media_ssrc is not None:
            return self._media_ssrc
        rtx: dict[int, int] = getattr(self.receiver, _RX + "rtx_ssrc")
        streams: dict[int, Any] = getattr(self.receiver, _RX + "remote_streams")
        for ssrc in streams:
            if ssrc not in rtx:
                return ssrc
        return None

    def stream_counts(self) -> tuple[int, int]:
        """(packets received, packets lost) over every SSRC of this receiver."""
        received = lost = 0
        for stream in getattr(self.receiver, _RX + "remote_streams").values():
            received += stream.packets_received
            lost += stream.packets_lost
        return received, lost

    async def request_keyframe(self) -> None:
        """Send the remote sender a PLI for the media SSRC."""
        ssrc = self.media_ssrc
        if ssrc is not None and self.started:
            await self.receiver._send_rtcp_pli(ssrc)

    def send_remb_now(self) -> None:
        """Send a REMB with the current limit at once (e.g. when a subscriber's estimate drops)."""
        bitrate = self._effective_bitrate()
        rtcp_ssrc = getattr(self.receiver, _RX + "rtcp_ssrc")
        ssrc = self.media_ssrc
        if bitrate is None or rtcp_ssrc is None or ssrc is None or not self.started:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, [ssrc])
        )
        self.last_remb_sent = bitrate
        task = asyncio.ensure_future(self._send_rtcp(packet))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _effective_bitrate(self) -> int | None:
        if self.bitrate_limit is None:
            return self.own_estimate
        if self.own_estimate is None:
            return self.bitrate_limit
        return min(self.bitrate_limit, self.own_estimate)

    async def _filter_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            self.own_estimate = bitrate
            effective = self._effective_bitrate()
            if effective is not None and effective != bitrate:
                packet = RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP,
                    ssrc=packet.ssrc,
                    media_ssrc=0,
                    fci=pack_remb_fci(effective, ssrcs),
                )
            self.last_remb_sent = effective
        await self._send_rtcp(packet)

    async def _receive(self, parameters: RTCRtpReceiveParameters) -> None:
        # Mirrors RTCRtpReceiver.receive() without starting the decoder thread.
        receiver = self.receiver
        if getattr(receiver, _RX + "started"):
            return
        codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, _RX + "codecs")
        rtx_ssrc: dict[int, int] = getattr(receiver, _RX + "rtx_ssrc")
        for codec in parameters.codecs:
            if codec.payloadType is not None:
                codecs[codec.payloadType] = codec
        self.codecs = [c for c in parameters.codecs if not is_rtx(c)]
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        if parameters.encodings:
            self._media_ssrc = parameters.encodings[0].ssrc
        setattr(receiver, _RX + "decoder_thread", _NoDecoderThread())
        transport = receiver.transport
        transport._register_rtp_receiver(receiver, parameters)
        # aiortc registers only media SSRCs: with two video receivers on one transport
        # (camera + screen) RTX packets would match two payload-type entries and be dropped.
        router = transport._rtp_router
        for rtx in rtx_ssrc:
            router.ssrc_table[rtx] = receiver
        setattr(receiver, _RX + "rtcp_task", asyncio.ensure_future(receiver._run_rtcp()))
        setattr(receiver, _RX + "started", True)


MAX_GAP_WAIT = 0.5  # seconds a lost video packet may hold later frames back


class RelayJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, changed for a relay (which has no playout to smooth:
    the browser's own jitter buffer does that).

    - A frame leaves as soon as its last packet (RTP marker bit) is in and nothing before
      it is missing, not when the next frame's first packet arrives (a frame later).
    - A packet still missing after ``max_gap_wait`` seconds while later packets wait
      (NACK/RTX did not bring it) is given up, wherever it is: the frame it belonged to is
      dropped and every complete frame held back behind it leaves at once (``ready``).
      aiortc waits until 512 later packets have arrived: seconds of video, and far longer
      at the low bitrate a sender restarts with after a network outage.
    - Lost data is reported to ``on_loss`` when set (the relay then makes its subscribers
      wait for a keyframe and asks for one, throttled); ``add`` then returns no PLI flag.
    """

    def __init__(self, kind: str = "video", *, max_gap_wait: float = MAX_GAP_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if kind != "video":
            raise ValueError("RelayJitterBuffer is for video")
        super().__init__(capacity=512, is_video=True)
        self.max_gap_wait = max_gap_wait
        self._clock = clock
        self._gap_since: float | None = None
        self._gap_seq: int | None = None  # the missing packet _gap_since is about
        self._max_seq: int | None = None
        self.ready: deque[JitterFrame] = deque()
        self.on_loss: Callable[[], None] | None = None
        self.gaps_skipped = 0
        self.losses = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._max_seq is None or self._origin is None or uint16_gt(seq, self._max_seq):
            self._max_seq = seq
        pli_flag, frame = super().add(packet)
        if self._origin is not None and uint16_add(self._max_seq, -self._origin) >= self._capacity:
            self._max_seq = seq  # aiortc started over (a jump back or a flush)
        if frame is not None:
            self.ready.append(frame)
        self._drain()
        if self._origin is not None and self._skip_stale_gap():
            pli_flag = True
            self._drain()
        if pli_flag:
            self.losses += 1
            if self.on_loss is not None:
                self.on_loss()
                pli_flag = False
        return pli_flag, (self.ready.popleft() if self.ready else None)

    def _drain(self) -> None:
        while self._origin is not None:
            frame = self._frame_ending_with_marker()
            if frame is None:
                return
            self.ready.append(frame)

    def _hole(self) -> tuple[int, int] | None:
        """(offset of the first missing packet, offset of the first packet after it) when
        a missing packet holds received ones back; offsets count from the origin."""
        assert self._origin is not None and self._max_seq is not None
        span = uint16_add(self._max_seq, -self._origin)
        if span >= self._capacity:
            return None
        packets, origin, capacity = self._packets, self._origin, self._capacity
        for missing in range(span + 1):
            if packets[(origin + missing) % capacity] is None:
                for present in range(missing + 1, span + 1):
                    if packets[(origin + present) % capacity] is not None:
                        return missing, present
                return None
        return None

    def _skip_stale_gap(self) -> bool:
        hole = self._hole()
        if hole is None:
            self._gap_since = None
            return False
        assert self._origin is not None
        now = self._clock()
        hole_seq = uint16_add(self._origin, hole[0])
        if self._gap_since is None or hole_seq != self._gap_seq:
            # A new hole (or the previous one was filled): its retransmission gets its time.
            self._gap_since, self._gap_seq = now, hole_seq
            return False
        if now - self._gap_since < self.max_gap_wait:
            return False
        missing, present = hole
        packets, origin, capacity = self._packets, self._origin, self._capacity
        assert origin is not None
        # The frame the hole broke: the one at the origin, or (hole at the origin, frame
        # start unknown) the one after the hole. Its packets after the hole go too.
        broken = packets[(origin + (missing - 1 if missing else present)) % capacity]
        assert broken is not None
        drop = present
        while drop < capacity:
            later = packets[(origin + drop) % capacity]
            if later is None or later.timestamp != broken.timestamp:
                break
            drop += 1
        self.remove(drop)
        self._gap_since = None
        self.gaps_skipped += 1
        return True

    def _frame_ending_with_marker(self) -> JitterFrame | None:
        assert self._origin is not None
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(
                    data=b"".join(p._data for p in packets),  # type: ignore[attr-defined]
                    timestamp=timestamp,
                )
        return None


def tap_receiver(receiver: RTCRtpReceiver) -> ReceiverTap:
    """Replace ``receiver``'s decoding path by a :class:`ReceiverTap` (idempotent)."""
    existing = getattr(receiver, "_panda_tap", None)
    if isinstance(existing, ReceiverTap):
        return existing
    if getattr(receiver, _RX + "started"):
        raise RuntimeError("tap_receiver() must run before the receiver starts")
    tap = ReceiverTap(receiver)
    # aiortc's buffers are made for its decoder; a relay has no playout to smooth (the
    # browser's jitter buffer does that), so frames go out as soon as they are whole.
    if getattr(receiver, _RX + "kind") == "audio":
        # Only the 80 ms prefetch goes: merging same-timestamp packets and waiting out a
        # gap stay aiortc's (forwarding every packet on arrival let Chromium's receiver
        # hear faint noise from a muted sender).
        tap.jitter_buffer = JitterBuffer(capacity=16, prefetch=0)
    else:
        video_buffer = RelayJitterBuffer("video")
        video_buffer.on_loss = tap._lost
        tap.jitter_buffer = video_buffer
    setattr(receiver, _RX + "jitter_buffer", tap.jitter_buffer)
    setattr(receiver, _RX + "decoder_queue", _TapQueue(tap))
    # Stopping the "decoder" (BYE, DTLS close, stop()) must not end the tap: the room
    # decides when a publication ends.
    setattr(receiver, _RX + "stop_decoder", lambda: None)
    receiver.receive = tap._receive  # type: ignore[method-assign]
    receiver._send_rtcp = tap._filter_rtcp  # type: ignore[method-assign]
    receiver._panda_tap = tap  # type: ignore[attr-defined]
    return tap


# --------------------------------------------------------------------------- sender hooks


class SenderHook:
    """Routes a sender's PLI/FIR and REMB feedback to the relay instead of an encoder.

    A NACK for a packet the sender no longer holds (aiortc keeps the last 128: after a
    network outage the receiver asks for far older ones) counts as a keyframe request too:
    the receiver cannot repair its picture otherwise, and would only ask for a keyframe
    itself after giving up on the retransmissions.
    """

    def __init__(
        self,
        sender: RTCRtpSender,
        on_keyframe_request: Callable[[], None] | None,
        on_remb: Callable[[int], None] | None,
    ) -> None:
        self.sender = sender
        self.on_keyframe_request = on_keyframe_request
        self.on_remb = on_remb
        self._handle = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                if self.on_keyframe_request is not None:
                    self.on_keyframe_request()
                return
            if packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                if self.sender._ssrc in ssrcs and self.on_remb is not None:
                    self.on_remb(bitrate)
                return
        elif (isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK
              and self.on_keyframe_request is not None and self._unrecoverable(packet.lost)):
            self.on_keyframe_request()
        await self._handle(packet)

    def _unrecoverable(self, lost: list[int]) -> bool:
        history: dict[int, RtpPacket] = getattr(self.sender, _TX + "rtp_history")
        for seq in lost:
            kept = history.get(seq % RTP_HISTORY_SIZE)
            if kept is None or kept.sequence_number != seq:
                return True
        return False


def hook_sender(
    sender: RTCRtpSender,
    on_keyframe_request: Callable[[], None] | None = None,
    on_remb: Callable[[int], None] | None = None,
) -> SenderHook:
    """Install (or update) the feedback hook on ``sender``."""
    existing = getattr(sender, "_panda_hook", None)
    if isinstance(existing, SenderHook):
        existing.on_keyframe_request = on_keyframe_request
        existing.on_remb = on_remb
        return existing
    hook = SenderHook(sender, on_keyframe_request, on_remb)
    sender._handle_rtcp_packet = hook._handle_rtcp_packet  # type: ignore[method-assign]
    sender._panda_hook = hook  # type: ignore[attr-defined]
    return hook


def sender_counters(sender: RTCRtpSender) -> tuple[int, int, float | None]:
    """(packets sent, payload bytes sent, smoothed round-trip time in seconds or None)."""
    return (
        getattr(sender, _TX + "packet_count"),
        getattr(sender, _TX + "octet_count"),
        getattr(sender, _TX + "rtt"),
    )


# --------------------------------------------------------------------------- codecs


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs negotiated (or about to be answered) for ``transceiver``."""
    return list(transceiver._codecs)


def restrict_transceiver_codecs(
    transceiver: RTCRtpTransceiver, mime_type: str
) -> RTCRtpCodecParameters | None:
    """Keep only the first codec of ``mime_type`` (and its RTX) for the coming answer.

    ``setCodecPreferences`` does not apply to answers in aiortc, which answer every
    common codec; the relay needs exactly one codec per kind. Returns the kept codec.
    """
    mime = mime_type.lower()
    kept: RTCRtpCodecParameters | None = None
    for codec in transceiver._codecs:
        if codec.mimeType.lower() == mime:
            kept = codec
            break
    if kept is None:
        return None
    result = [kept]
    for codec in transceiver._codecs:
        if is_rtx(codec) and codec.parameters.get("apt") == kept.payloadType:
            result.append(codec)
            break
    transceiver._codecs = result
    return kept


def transceiver_offer_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """Direction the remote offer asked of us (already reversed to our point of view)."""
    return transceiver._offerDirection


def common_codec_mimes(kind: str, remote_codecs: list[RTCRtpCodecParameters]) -> list[str]:
    """Lower-case MIME types aiortc can negotiate with ``remote_codecs``, in remote order."""
    from aiortc.codecs import CODECS
    from aiortc.rtcpeerconnection import find_common_codecs

    common = find_common_codecs(CODECS[kind], remote_codecs)
    mimes: list[str] = []
    for codec in common:
        mime = codec.mimeType.lower()
        if not is_rtx(codec) and mime not in mimes:
            mimes.append(mime)
    return mimes


def set_transceiver_codecs(
    transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]
) -> None:
    """Set the codecs ``transceiver`` negotiates (and its sender/receiver start with)."""
    transceiver._codecs = list(codecs)


def mline_index(transceiver: RTCRtpTransceiver) -> int | None:
    """Index of the transceiver's m-line in the description being built or applied."""
    return transceiver._get_mline_index()
