"""Rooms: who is in a call, their peer connections, and what each one receives.

One ``RTCPeerConnection`` per participant carries both what the participant
publishes (browser-offered m-lines, answered ``recvonly``) and what it receives
(server-added ``sendonly`` m-lines, offered by the server). Every published track
gets a :class:`~panda.media.fanout.Fanout`; every other participant subscribes to
it through a :class:`~panda.media.fanout.ForwardingTrack`. Nothing is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import candidate_from_sdp

from . import aiortc_patches
from .errors import SignalError
from .fanout import Fanout, ForwardingTrack, FrameSink
from .ice import MediaConfig, create_peer_connection
from .packet_relay import PacketRelay

logger = logging.getLogger(__name__)

SendFn = Callable[[dict[str, Any]], Awaitable[None]]
StateFn = Callable[[str], Awaitable[None]]
SinkFactory = Callable[[str, str, str, str], FrameSink | None]

AUDIO_MIME = "audio/opus"
VIDEO_MIMES = ("video/vp8", "video/h264")  # in order of preference
SOURCES = ("camera", "microphone", "screen")
MAX_MEDIA_SECTIONS = 32
MAX_PENDING_CANDIDATES = 64
# A joining browser normally offers first (its tracks); the server offers on its own only
# after this delay (a receive-only browser that never offers), which avoids glare.
INITIAL_OFFER_DELAY = 1.0
CLOSE_TIMEOUT = 10.0
MEDIA_TIMEOUT = 15.0  # no packet at all from a connected participant this long = vanished

_STATE_MAP = {
    "new": "connecting",
    "connecting": "connecting",
    "connected": "connected",
    "failed": "failed",
    "closed": "closed",
}


@dataclass(eq=False)
class Publication:
    """A track one participant publishes, and its fanout."""

    participant: Participant
    mid: str
    kind: str
    source: str
    codec: RTCRtpCodecParameters
    transceiver: RTCRtpTransceiver
    tap: aiortc_patches.ReceiverTap
    fanout: Fanout

    def on_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame, arrival: float) -> None:
        self.fanout.push(frame.data, frame.timestamp, arrival)


@dataclass(eq=False)
class Subscription:
    """What one participant receives of another's publication."""

    publication: Publication
    transceiver: RTCRtpTransceiver
    track: ForwardingTrack


@dataclass
class _Sample:
    at: float = 0.0
    rx: int = 0
    tx: int = 0
    rates: tuple[int, int] = field(default=(0, 0))


def _codec_key(codec: RTCRtpCodecParameters) -> tuple[Any, ...]:
    """What makes two codec entries the same configuration (payload type aside)."""
    key: tuple[Any, ...] = (codec.mimeType.lower(), codec.clockRate, codec.channels or 1)
    if codec.mimeType.lower() == "video/h264":
        key += (str(codec.parameters.get("packetization-mode", "0")),
                str(codec.parameters.get("profile-level-id", "42e01f")).lower())
    return key


def _free_pt(taken: set[int]) -> int:
    return next(pt for pt in range(96, 128) if pt not in taken)


def _sdp_error(message: str) -> SignalError:
    return SignalError("bad-sdp", message)


def parse_sdp(text: Any, kind: str) -> aiortc_sdp.SessionDescription:
    """Parse and sanity-check an SDP offer/answer; raise SignalError('bad-sdp') if unusable."""
    if not isinstance(text, str) or not text.strip():
        raise _sdp_error("sdp must be a non-empty string")
    if len(text) > 200_000:
        raise _sdp_error("sdp too large")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:
        raise _sdp_error(f"unparsable sdp: {exc.__class__.__name__}") from exc
    description.type = kind
    if not description.media:
        raise _sdp_error("sdp has no media sections")
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise _sdp_error("too many media sections")
    mids: set[str] = set()
    for media in description.media:
        if media.kind not in ("audio", "video", "application"):
            raise _sdp_error(f"unsupported media kind {media.kind!r}")
        mid = media.rtp.muxId
        if not mid:
            raise _sdp_error("every media section needs a mid")
        if mid in mids:
            raise _sdp_error(f"duplicate mid {mid!r}")
        mids.add(mid)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise _sdp_error("ICE username fragment or password missing")
        if media.dtls is None or not media.dtls.fingerprints:
            raise _sdp_error("DTLS fingerprint missing")
        if media.kind != "application":
            if not media.rtcp_mux:
                raise _sdp_error("rtcp-mux is required")
            if not media.rtp.codecs:
                raise _sdp_error(f"media section {mid} has no codecs")
    return description


class Participant:
    """One participant's peer connection: what it publishes and what it receives."""

    def __init__(
        self,
        room: Room,
        participant_id: str,
        *,
        name: str,
        role: str,
        send: SendFn,
        on_state: StateFn | None,
    ) -> None:
        self.room = room
        self.id = participant_id
        self.name = name
        self.role = role
        self._send = send
        self._on_state = on_state
        self.pc = create_peer_connection(room.config)
        self._relay = room.registry.packet_relay
        if self._relay is not None:
            self._relay.attach(self)
        self._taps: dict[RTCRtpTransceiver, aiortc_patches.ReceiverTap] = {}
        aiortc_patches.on_transceiver_created(self.pc, self._on_transceiver_created)
        self.pc.on("connectionstatechange", self._on_connection_state_change)
        self._lock = asyncio.Lock()
        self._publications: dict[str, Publication] = {}
        self._subscriptions: dict[Publication, Subscription] = {}
        self._retired: list[Subscription] = []
        self._sub_transceivers: set[RTCRtpTransceiver] = set()  # added by the server
        self._sending: set[RTCRtpTransceiver] = set()  # carrying an active subscription
        self._attach_after_answer: list[tuple[ForwardingTrack, Fanout]] = []
        self._offer_outstanding = False
        self._renegotiate_wanted = False
        self._renegotiation_task: asyncio.Task[None] | None = None
        self._initial_timer: asyncio.TimerHandle | None = None
        self._pending_candidates: list[dict[str, Any] | None] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._notifications: set[asyncio.Task[None]] = set()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._extmap: dict[str, int] = {}  # RTP header extension uri -> id on this BUNDLE
        self._payload_types: dict[tuple[Any, ...], int] = {}  # codec key -> payload type
        self._sample = _Sample(at=time.monotonic())
        self.joined_at = time.time()
        self.state = "connecting"
        self.closed = False
        self.offers_sent = 0
        self.answers_sent = 0
        self.video_mimes: tuple[str, ...] | None = None  # what its offers support, if known

    # ------------------------------------------------------------------ public

    @property
    def publications(self) -> Mapping[str, Publication]:
        return MappingProxyType(self._publications)

    @property
    def subscriptions(self) -> Mapping[Publication, Subscription]:
        return MappingProxyType(self._subscriptions)

    async def handle_signal(self, msg: dict[str, Any]) -> None:
        """Apply one signalling message from the browser (offer, answer or ice-candidate)."""
        if not isinstance(msg, dict):
            raise SignalError("bad-message", "message must be an object")
        kind = msg.get("type")
        if self.closed:
            raise SignalError("closed", "this connection is closed; join again")
        if kind == "offer":
            await self._handle_offer(msg)
        elif kind == "answer":
            await self._handle_answer(msg)
        elif kind == "ice-candidate":
            await self._handle_candidate(msg.get("candidate"))
        else:
            raise SignalError("bad-message", f"unsupported message type {kind!r}")

    async def leave(self) -> None:
        """Leave the room; a no-op for the room if a reconnect already replaced us."""
        await self.room.leave(self.id, only=self)

    def stats(self) -> dict[str, Any]:
        """Live figures for the admin stats API."""
        now = time.monotonic()
        rx, tx = aiortc_patches.transport_counters(self.pc)
        sample = self._sample
        if now - sample.at >= 0.2:
            # Rates over the time since the previous call (or since joining).
            elapsed = now - sample.at
            rates = (int((rx - sample.rx) * 8 / elapsed), int((tx - sample.tx) * 8 / elapsed))
            self._sample = _Sample(now, rx, tx, rates)
        bitrate_in, bitrate_out = self._sample.rates
        packets_lost = 0
        packets_received = 0
        for pub in self._publications.values():
            received, lost = pub.tap.stream_counts()
            packets_received += received
            packets_lost += lost
        rtts = []
        for sub in self._subscriptions.values():
            rtt = aiortc_patches.sender_counters(sub.transceiver.sender)[2]
            if rtt is not None:
                rtts.append(rtt)
        pair = aiortc_patches.selected_candidate_pair(self.pc)
        return {
            "name": self.name,
            "role": self.role,
            "bitrate_in": bitrate_in,
            "bitrate_out": bitrate_out,
            "packets_received": packets_received,
            "packets_lost": packets_lost,
            "rtt_ms": round(sum(rtts) / len(rtts) * 1000, 1) if rtts else None,
            "frames_received": sum(p.fanout.frames_in for p in self._publications.values()),
            "frames_forwarded": sum(s.track.frames_forwarded for s in self._subscriptions.values()),
            "keyframes_requested": sum(
                p.fanout.keyframes_requested for p in self._publications.values()
            ),
            "transport": pair[0].transport if pair else None,
            "candidate_pair": (
                f"{pair[0].host}:{pair[0].port} <-> {pair[1].host}:{pair[1].port}" if pair else None
            ),
            "ice_state": self.pc.iceConnectionState,
            "connection_state": self.pc.connectionState,
            "publications": [
                {"mid": p.mid, "kind": p.kind, "source": p.source, "codec": p.codec.mimeType,
                 "subscribers": len(p.fanout.tracks),
                 "bitrate_limit": p.fanout.bitrate_limit, "remb_sent": p.tap.last_remb_sent}
                for p in self._publications.values()
            ],
            "subscriptions": len(self._subscriptions),
        }

    # ------------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._initial_timer = loop.call_later(
            self.room.registry.initial_offer_delay, self._initial_offer)
        self._spawn(self._watch_liveness(self.room.registry.media_timeout))
        self._spawn(self._pump())

    async def _watch_liveness(self, silence: float) -> None:
        # aioice needs ~30 s of failed consent checks to notice a peer that vanished
        # without closing DTLS; browsers send RTCP at least every second or two
        # while media flows, so silence this long means the peer is gone.
        last_rx = -1
        last_change = time.monotonic()
        while not self.closed:
            await asyncio.sleep(silence / 4)
            rx = aiortc_patches.transport_counters(self.pc)[0]
            now = time.monotonic()
            active = self.pc.connectionState == "connected" and bool(
                self._publications or self._subscriptions
            )
            if rx != last_rx or not active:
                last_rx, last_change = rx, now
            elif now - last_change > silence:
                logger.info("participant %s silent for %.0f s: gone", self.id, now - last_change)
                self._vanish("failed")
                return

    def _vanish(self, state: str) -> None:
        if self.state != state:
            self.state = state
            if self._on_state is not None:
                self._notify(state)
        self.room._participant_vanished(self)

    def _initial_offer(self) -> None:
        self._initial_timer = None
        self.schedule_renegotiation()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close(self) -> list[Publication]:
        """Stop everything this participant does; returns its ended publications."""
        if self.closed:
            return []
        self.closed = True
        if self._initial_timer is not None:
            self._initial_timer.cancel()
            self._initial_timer = None
        if self._renegotiation_task is not None:
            self._renegotiation_task.cancel()
        ended = list(self._publications.values())
        for pub in ended:
            pub.tap.on_frame = None
            pub.tap.on_loss = None
            pub.fanout.end()
        self._publications.clear()
        for sub in [*self._subscriptions.values(), *self._retired]:
            sub.track.stop()
        self._subscriptions.clear()
        self._retired.clear()
        if self._relay is not None:
            self._relay.forget(self)
        return ended

    def _on_transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        self._taps[transceiver] = aiortc_patches.tap_receiver(transceiver.receiver)

    def _on_connection_state_change(self) -> None:
        raw = self.pc.connectionState
        state = _STATE_MAP.get(raw, raw)
        if state == self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._notify(state)
        if state in ("failed", "closed") and not self.closed:
            self.room._participant_vanished(self)

    def _notify(self, state: str) -> None:
        # Kept apart from _tasks: closing the pc cancels those, never a state report.
        task = asyncio.ensure_future(self._notify_state(state))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    async def _notify_state(self, state: str) -> None:
        assert self._on_state is not None
        try:
            await self._on_state(state)
        except Exception:
            logger.exception("on_state callback failed for %s", self.id)

    async def _deliver(self, msg: dict[str, Any]) -> None:
        # Queued, not sent here: a slow websocket must not hold the signalling lock,
        # and one pump keeps answers and offers in the order they were made.
        self._outbox.put_nowait(msg)

    async def _pump(self) -> None:
        while True:
            msg = await self._outbox.get()
            try:
                await self._send(msg)
            except Exception:
                # A dead websocket is the web layer's business; the pc lives on until leave().
                logger.warning("could not deliver %s to participant %s", msg.get("type"), self.id)

    # ------------------------------------------------------------------ browser offer

    def _check_offer(
        self, description: aiortc_sdp.SessionDescription
    ) -> tuple[str | None, tuple[str, ...] | None]:
        """Validate an offer against the current session; returns the room's video codec it
        implies and the relay video codecs the offer supports (None: it offers no video)."""
        local = self.pc.localDescription
        if local is not None:
            current = aiortc_sdp.SessionDescription.parse(local.sdp)
            old = [(m.kind, m.rtp.muxId) for m in current.media]
            new = [(m.kind, m.rtp.muxId) for m in description.media]
            if new[: len(old)] != old:
                raise _sdp_error("an offer must keep the existing media sections in order")
        # The server's own m-lines were offered with the room's codecs already.
        sub_mids = {t.mid for t in self._sub_transceivers if t.mid is not None}
        offered: tuple[str, ...] | None = None
        # Port 0 marks a rejected section, except for sections still in the BUNDLE group:
        # Firefox offers every section after the first as port 0 + a=bundle-only (RFC 8843).
        bundled = {
            mid for group in description.group if group.semantic == "BUNDLE" for mid in group.items
        }
        for media in description.media:
            if media.kind == "application" or media.rtp.muxId in sub_mids:
                continue
            if media.port == 0 and media.rtp.muxId not in bundled:
                raise _sdp_error(
                    "rejected or stopped media sections are not supported; "
                    "use removeTrack instead of stopping a transceiver"
                )
            mimes = aiortc_patches.common_codec_mimes(media.kind, media.rtp.codecs)
            if media.kind == "audio":
                if AUDIO_MIME not in mimes:
                    raise SignalError("no-common-codec", "audio must support Opus")
                continue
            supported = tuple(m for m in VIDEO_MIMES if m in mimes)
            if not supported:
                raise SignalError("no-common-codec", "video must support VP8 or H.264")
            offered = supported if offered is None else tuple(m for m in offered if m in supported)
        if offered is None:
            return self.room.video_mime, None
        video_mime = self.room.choose_video_mime(self, offered)
        if video_mime not in offered:
            raise SignalError(
                "no-common-codec",
                f"this call uses {video_mime.split('/')[1].upper()} video, "
                "which this browser does not offer",
            )
        return video_mime, offered

    async def _handle_offer(self, msg: dict[str, Any]) -> None:
        sources = msg.get("sources") or {}
        if not isinstance(sources, dict) or not all(
            isinstance(k, str) and v in SOURCES for k, v in sources.items()
        ):
            raise SignalError("bad-message", "sources must map mids to camera|microphone|screen")
        description = parse_sdp(msg.get("sdp"), "offer")
        if self._initial_timer is not None:
            self._initial_timer.cancel()
            self._initial_timer = None
        async with self._lock:
            if self.closed:
                raise SignalError("closed", "this connection is closed; join again")
            if self.pc.signalingState != "stable":
                raise SignalError("glare", "the server's offer is outstanding: answer it first")
            video_mime, offered = self._check_offer(description)
            if offered is not None:
                # Decided before any await: a concurrent offer sees this choice.
                self.video_mimes = offered
                self.room.video_mime = video_mime
            self._learn_remote(description)
            try:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=msg["sdp"], type="offer")
                )
            except Exception as exc:
                await self._fail_after_bad_description(exc)
            changed = self._apply_publications(sources)
            try:
                answer = await self.pc.createAnswer()
                await self.pc.setLocalDescription(answer)
            except Exception as exc:
                await self._fail_after_bad_description(exc)
            await self._apply_pending_candidates()
            self.answers_sent += 1
            await self._deliver({"type": "answer", "sdp": self.pc.localDescription.sdp})
        if changed:
            self.room._publications_changed(self)
        self.schedule_renegotiation()

    async def _fail_after_bad_description(self, exc: Exception) -> None:
        # aiortc cannot roll back: a description it rejected half-way leaves the pc unusable.
        logger.warning("participant %s: description rejected: %r", self.id, exc)
        if isinstance(exc, SignalError):
            raise exc
        if self.pc.signalingState in ("stable", "closed") and not self.closed:
            # Rejected before any change (aiortc validates first): the pc is intact.
            raise SignalError("bad-sdp", f"description rejected: {exc}") from exc
        self.room._participant_vanished(self)
        raise SignalError("bad-sdp", f"description rejected, connection reset: {exc}") from exc

    def _apply_publications(self, sources: Mapping[str, str]) -> bool:
        # Any m-line may carry a publication, including one the server added to send a
        # subscription: browsers attach a new track (addTrack, e.g. screen share) to an
        # unused transceiver of the same kind, and after a glare rollback their first
        # tracks land on the server's m-lines.
        changed = False
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid is None:
                continue
            mid = transceiver.mid
            mime = AUDIO_MIME if transceiver.kind == "audio" else self.room.video_mime
            codec = aiortc_patches.restrict_transceiver_codecs(transceiver, mime) if mime else None
            offered = aiortc_patches.transceiver_offer_direction(transceiver)
            sending = offered in ("recvonly", "sendrecv") and codec is not None
            pub = self._publications.get(mid)
            source = sources.get(mid) or self._default_source(transceiver.kind, mid)
            if sending and pub is not None and pub.source != source:
                self._unpublish(pub)
                pub = None
            if sending and pub is None:
                assert codec is not None
                self._publish(transceiver, codec, source)
                changed = True
            elif not sending and pub is not None:
                self._unpublish(pub)
                changed = True
            self._set_direction(transceiver)
        return changed

    def _set_direction(self, transceiver: RTCRtpTransceiver) -> None:
        send = transceiver in self._sending
        recv = transceiver not in self._sub_transceivers or (
            transceiver.mid is not None and transceiver.mid in self._publications)
        transceiver.direction = ("sendrecv" if recv else "sendonly") if send else (
            "recvonly" if recv else "inactive")

    def _default_source(self, kind: str, mid: str) -> str:
        if kind == "audio":
            return "microphone"
        cameras = [p for p in self._publications.values() if p.source == "camera" and p.mid != mid]
        return "screen" if cameras else "camera"

    def _publish(
        self, transceiver: RTCRtpTransceiver, codec: RTCRtpCodecParameters, source: str
    ) -> Publication:
        tap = self._taps.get(transceiver) or aiortc_patches.tap_receiver(transceiver.receiver)
        self._taps[transceiver] = tap

        def request_keyframe() -> bool:
            # A PLI before the connection is up would be dropped unseen: report it unsent.
            if self.closed or not tap.can_send_feedback:
                return False
            self._spawn(tap.request_keyframe())
            return True

        def on_bitrate_limit(limit: int | None) -> None:
            tap.bitrate_limit = limit
            if limit is not None:
                tap.send_remb_now()

        fanout = Fanout(
            transceiver.kind,
            codec.mimeType,
            codec.clockRate,
            request_keyframe=request_keyframe,
            on_bitrate_limit=on_bitrate_limit,
        )
        assert transceiver.mid is not None
        pub = Publication(
            self, transceiver.mid, transceiver.kind, source, codec, transceiver, tap, fanout
        )
        tap.on_frame = pub.on_frame
        tap.on_loss = fanout.lost
        if self._relay is not None:
            self._relay.publish(pub)
        self._publications[pub.mid] = pub
        self.room._attach_sinks(pub)
        return pub

    def _unpublish(self, pub: Publication) -> None:
        if self._publications.get(pub.mid) is pub:
            del self._publications[pub.mid]
        pub.tap.on_frame = None
        pub.tap.on_loss = None
        pub.tap.bitrate_limit = None
        pub.fanout.end()
        self.room._forget_sinks(pub)

    # ------------------------------------------------------------------ browser answer

    async def _handle_answer(self, msg: dict[str, Any]) -> None:
        description = parse_sdp(msg.get("sdp"), "answer")
        async with self._lock:
            if self.closed:
                raise SignalError("closed", "this connection is closed; join again")
            if self.pc.signalingState != "have-local-offer":
                raise SignalError("wrong-state", "there is no server offer to answer")
            try:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=msg["sdp"], type="answer")
                )
            except Exception as exc:
                if self.pc.signalingState == "have-local-offer":
                    # Rejected before any change: the offer stays outstanding.
                    raise SignalError("bad-sdp", f"answer rejected: {exc}") from exc
                self.room._participant_vanished(self)
                raise SignalError("bad-sdp", f"answer rejected, connection reset: {exc}") from exc
            self._offer_outstanding = False
            self._learn_remote(description)
            attach, self._attach_after_answer = self._attach_after_answer, []
            for track, fanout in attach:
                if track.readyState == "live":
                    track.attach(fanout)
            await self._apply_pending_candidates()
            again = self._renegotiate_wanted
            self._renegotiate_wanted = False
        if again:
            self.schedule_renegotiation()

    # ------------------------------------------------------------------ candidates

    async def _handle_candidate(self, candidate: Any) -> None:
        if candidate is not None and not isinstance(candidate, (dict, str)):
            raise SignalError("bad-candidate", "candidate must be an object or null")
        if isinstance(candidate, dict) and not isinstance(candidate.get("candidate", ""), str):
            raise SignalError("bad-candidate", "candidate.candidate must be a string")
        if self.pc.remoteDescription is None:
            if len(self._pending_candidates) >= MAX_PENDING_CANDIDATES:
                raise SignalError("bad-candidate", "too many candidates before an offer")
            self._pending_candidates.append(candidate if isinstance(candidate, dict) else None)
            return
        await self._add_candidate(candidate if isinstance(candidate, dict) else None)

    async def _add_candidate(self, candidate: dict[str, Any] | None) -> None:
        line = (candidate or {}).get("candidate") or ""
        if not line:
            with contextlib.suppress(Exception):
                await self.pc.addIceCandidate(None)
            return
        try:
            parsed = candidate_from_sdp(line.removeprefix("candidate:"))
        except Exception as exc:
            raise SignalError("bad-candidate", "unparsable ICE candidate") from exc
        assert candidate is not None
        mid = candidate.get("sdpMid")
        index = candidate.get("sdpMLineIndex")
        parsed.sdpMid = mid if isinstance(mid, str) else None
        parsed.sdpMLineIndex = index if isinstance(index, int) else None
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise SignalError("bad-candidate", f"candidate rejected: {exc}") from exc

    async def _apply_pending_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            with contextlib.suppress(SignalError):
                await self._add_candidate(candidate)

    # ------------------------------------------------------------------ server offers

    def _learn_remote(self, description: aiortc_sdp.SessionDescription) -> None:
        """Remember the browser's RTP header extension ids and payload types."""
        for media in description.media:
            for ext in media.rtp.headerExtensions:
                if ext.uri not in self._extmap and ext.id not in self._extmap.values():
                    self._extmap[ext.uri] = ext.id
            base: dict[int, tuple[Any, ...]] = {}
            for codec in media.rtp.codecs:
                if not is_rtx(codec) and codec.payloadType is not None:
                    key = _codec_key(codec)
                    base[codec.payloadType] = key
                    self._payload_types.setdefault(key, codec.payloadType)
            for codec in media.rtp.codecs:
                apt = codec.parameters.get("apt")
                if is_rtx(codec) and isinstance(apt, int) and apt in base and (
                        codec.payloadType is not None):
                    self._payload_types.setdefault(("rtx", *base[apt]), codec.payloadType)

    async def _create_offer(self) -> str:
        """createOffer(), fixed for renegotiation with a browser on one BUNDLE transport.

        aiortc's createOffer() resets every transceiver to its own codec list and payload
        type numbers and to its own header extension ids. Re-offered m-lines keep what was
        negotiated (a browser would otherwise switch payload types under a running
        receiver); new m-lines use the browser's numbers, so each payload type and
        extension id means one thing on the transport.
        """
        negotiated = {
            t: aiortc_patches.transceiver_codecs(t)
            for t in self.pc.getTransceivers()
            if t.mid is not None and t.currentDirection is not None
        }
        offer = await self.pc.createOffer()
        description = aiortc_sdp.SessionDescription.parse(offer.sdp)
        for transceiver in self.pc.getTransceivers():
            index = aiortc_patches.mline_index(transceiver)
            if index is None or index >= len(description.media):
                continue
            media = description.media[index]
            codecs = negotiated.get(transceiver) or self._browser_payload_types(
                media.rtp.codecs)
            media.rtp.codecs = codecs
            media.fmt = [c.payloadType for c in codecs]
            aiortc_patches.set_transceiver_codecs(transceiver, codecs)
        for media in description.media:
            kept = []
            for ext in media.rtp.headerExtensions:
                known = self._extmap.get(ext.uri)
                if known is None:
                    taken = set(self._extmap.values())
                    known = next((i for i in range(1, 15) if i not in taken), None)
                    if known is None:
                        continue  # no one-byte id left: offer without this extension
                    self._extmap[ext.uri] = known
                ext.id = known
                kept.append(ext)
            media.rtp.headerExtensions = kept
        return str(description)

    def _browser_payload_types(
        self, codecs: list[RTCRtpCodecParameters]
    ) -> list[RTCRtpCodecParameters]:
        taken = set(self._payload_types.values())
        renumbered: dict[int, int] = {}
        result = []
        for codec in codecs:
            original = codec.payloadType
            if is_rtx(codec) or original is None:
                continue
            codec = copy.deepcopy(codec)
            key = _codec_key(codec)
            pt = self._payload_types.get(key)
            if pt is None:
                pt = original if original not in taken else _free_pt(taken)
                self._payload_types[key] = pt
                taken.add(pt)
            renumbered[original] = pt
            codec.payloadType = pt
            result.append(codec)
        for codec in codecs:
            apt = codec.parameters.get("apt")
            if not is_rtx(codec) or not isinstance(apt, int) or apt not in renumbered:
                continue
            codec = copy.deepcopy(codec)
            base_key = next(k for k, v in self._payload_types.items() if v == renumbered[apt])
            key = ("rtx", *base_key)
            pt = self._payload_types.get(key)
            if pt is None:
                pt = codec.payloadType
                if pt is None or pt in taken:
                    pt = _free_pt(taken)
                self._payload_types[key] = pt
                taken.add(pt)
            codec.payloadType = pt
            codec.parameters = {**codec.parameters, "apt": renumbered[apt]}
            # keep each RTX right after its codec, as aiortc's own lists do
            index = next(i for i, c in enumerate(result) if c.payloadType == renumbered[apt])
            result.insert(index + 1, codec)
        return result

    def schedule_renegotiation(self) -> None:
        """Re-offer this participant's subscriptions if they changed (serialised)."""
        if self.closed or self._initial_timer is not None:
            return
        if self._renegotiation_task is not None and not self._renegotiation_task.done():
            self._renegotiate_wanted = True
            return
        self._renegotiation_task = self._spawn(self._renegotiate())

    def _update_subscriptions(self) -> bool:
        desired = [pub for pub in self.room._all_publications() if pub.participant is not self]
        changed = False
        for pub, sub in list(self._subscriptions.items()):
            if pub not in desired or pub.fanout.ended:
                # The track idles (its sender stays alive) so a later subscription of
                # the same kind can reuse this m-line instead of adding one.
                sub.track.detach()
                del self._subscriptions[pub]
                self._sending.discard(sub.transceiver)
                self._set_direction(sub.transceiver)
                self._retired.append(sub)
                changed = True
        for pub in desired:
            if pub in self._subscriptions or pub.fanout.ended:
                continue
            reusable = self._reusable_subscription(pub)
            if reusable is not None:
                self._retired.remove(reusable)
                # Attached once the answer re-enables the sender: a keyframe read while
                # it is still disabled would be dropped.
                self._attach_after_answer.append((reusable.track, pub.fanout))
                self._sending.add(reusable.transceiver)
                self._set_direction(reusable.transceiver)
                self._subscriptions[pub] = Subscription(pub, reusable.transceiver, reusable.track)
                changed = True
                continue
            track = pub.fanout.subscribe()
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(self.room.codec_preferences(pub.kind, pub.codec))
            aiortc_patches.hook_sender(
                transceiver.sender,
                on_keyframe_request=track.request_keyframe,
                on_remb=track.set_remb,
            )
            if self._relay is not None:
                self._relay.bind(track, transceiver, self)
            self._sub_transceivers.add(transceiver)
            self._sending.add(transceiver)
            self._subscriptions[pub] = Subscription(pub, transceiver, track)
            changed = True
        return changed

    def _reusable_subscription(self, pub: Publication) -> Subscription | None:
        mime = pub.codec.mimeType.lower()
        for sub in self._retired:
            codecs = aiortc_patches.transceiver_codecs(sub.transceiver)
            if (sub.transceiver.kind == pub.kind and sub.track.readyState == "live"
                    and codecs and codecs[0].mimeType.lower() == mime):
                return sub
        return None

    async def _renegotiate(self) -> None:
        async with self._lock:
            if self.closed:
                return
            if self._offer_outstanding or self.pc.signalingState != "stable":
                self._renegotiate_wanted = True
                return
            if not self._update_subscriptions():
                return
            try:
                offer_sdp = await self._create_offer()
                await self.pc.setLocalDescription(
                    RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception:
                # aiortc cannot roll back a half-applied local offer: start this
                # participant over (the page rejoins with a new connection).
                logger.exception("participant %s: re-offer failed", self.id)
                self._vanish("failed")
                return
            self._offer_outstanding = True
            tracks = {
                sub.transceiver.mid: {
                    "participant_id": sub.publication.participant.id,
                    "kind": sub.publication.kind,
                    "source": sub.publication.source,
                }
                for sub in self._subscriptions.values()
                if sub.transceiver.mid is not None
            }
            self.offers_sent += 1
            await self._deliver(
                {"type": "offer", "sdp": self.pc.localDescription.sdp, "tracks": tracks}
            )


class Room:
    """A call: its participants and the tracks they publish to each other."""

    def __init__(self, key: str, registry: RoomRegistry) -> None:
        self.key = key
        self.registry = registry
        self.config: MediaConfig = registry.config
        self._participants: dict[str, Participant] = {}
        self.video_mime: str | None = None
        self._sink_factories: list[SinkFactory] = []
        self._sinks: dict[SinkFactory, list[tuple[Publication, FrameSink]]] = {}
        self.closed = False
        self.created_at = time.time()

    @property
    def participants(self) -> Mapping[str, Participant]:
        return MappingProxyType(self._participants)

    async def join(
        self,
        participant_id: str,
        *,
        name: str,
        role: str,
        send: SendFn,
        on_state: StateFn | None = None,
    ) -> Participant:
        """Add a participant (replacing one with the same id: reload or reconnect)."""
        if self.closed:
            raise SignalError("closed", "this call has ended")
        old = self._participants.pop(participant_id, None)
        participant = Participant(
            self, participant_id, name=name, role=role, send=send, on_state=on_state
        )
        participant._start()
        self._participants[participant_id] = participant
        if old is not None:
            await self._remove(old)
        return participant

    async def leave(self, participant_id: str, *, only: Participant | None = None) -> None:
        """Remove a participant: its pc closes, its tracks end, the others are re-offered.

        With ``only``, nothing happens unless that exact Participant is the current one
        (a websocket closing after its page reconnected must not remove the new one).
        """
        current = self._participants.get(participant_id)
        if current is None or (only is not None and current is not only):
            if only is not None and not only.closed:
                await self._remove(only)
            return
        del self._participants[participant_id]
        await self._remove(current)

    async def _remove(self, participant: Participant) -> None:
        ended = participant._close()
        for pub in ended:
            self._forget_sinks(pub)
        self._publications_changed(participant)
        await self.registry._close_pc(participant)

    def _participant_vanished(self, participant: Participant) -> None:
        if self._participants.get(participant.id) is participant:
            del self._participants[participant.id]
        if not participant.closed:
            self.registry._spawn(self._remove(participant))

    async def close(self) -> None:
        """End the call for everyone."""
        self.closed = True
        for participant_id in list(self._participants):
            await self.leave(participant_id)
        for factory in list(self._sink_factories):
            self.remove_sink_factory(factory)
        self.registry._forget(self)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per participant live figures (see :meth:`Participant.stats`)."""
        return {pid: p.stats() for pid, p in self._participants.items()}

    # ------------------------------------------------------------------ tracks

    def _all_publications(self) -> list[Publication]:
        return [pub for p in self._participants.values() for pub in p._publications.values()]

    def _publications_changed(self, source: Participant) -> None:
        for participant in list(self._participants.values()):
            participant.schedule_renegotiation()

    def choose_video_mime(self, offerer: Participant, offered: tuple[str, ...]) -> str:
        """The room's video codec for an offer supporting ``offered``.

        Fixed while anyone publishes video (subscribers were negotiated with it). Otherwise
        VP8 when every participant whose codecs are known (from their offers) supports it,
        else H.264 when they all do, else the offerer's preference (someone will get
        ``no-common-codec`` when publishing).
        """
        if self.video_mime is not None and any(
            pub.kind == "video" for pub in self._all_publications()
        ):
            return self.video_mime
        known = [p.video_mimes for p in self._participants.values()
                 if p is not offerer and p.video_mimes is not None]
        known.append(offered)
        for mime in VIDEO_MIMES:
            if all(mime in mimes for mimes in known):
                return mime
        return offered[0]

    def codec_preferences(
        self, kind: str, codec: RTCRtpCodecParameters
    ) -> list[RTCRtpCodecCapability]:
        """Codec preferences for a subscriber transceiver: the publication's codec (+ RTX)."""
        capabilities = RTCRtpSender.getCapabilities(kind).codecs
        mime = codec.mimeType.lower()
        chosen = [c for c in capabilities if c.mimeType.lower() == mime]
        chosen += [c for c in capabilities if c.mimeType.lower() == f"{kind}/rtx"]
        return chosen

    # ------------------------------------------------------------------ sinks

    def add_sink_factory(self, factory: SinkFactory) -> None:
        """Call ``factory(participant_id, kind, source, codec_mime)`` for every published
        track (now and later); a returned sink gets every forwarded frame."""
        if factory in self._sink_factories:
            return
        self._sink_factories.append(factory)
        for pub in self._all_publications():
            self._attach_sink(factory, pub)

    def remove_sink_factory(self, factory: SinkFactory) -> None:
        """Stop feeding the sinks ``factory`` made (their ``on_end`` is called)."""
        if factory in self._sink_factories:
            self._sink_factories.remove(factory)
        for pub, sink in self._sinks.pop(factory, []):
            pub.fanout.remove_sink(sink)

    def _attach_sinks(self, pub: Publication) -> None:
        for factory in list(self._sink_factories):
            self._attach_sink(factory, pub)

    def _attach_sink(self, factory: SinkFactory, pub: Publication) -> None:
        try:
            sink = factory(pub.participant.id, pub.kind, pub.source, pub.codec.mimeType)
        except Exception:
            logger.exception("sink factory failed for %s/%s", pub.participant.id, pub.mid)
            return
        if sink is not None:
            if hasattr(sink, "request_keyframe"):
                # A sink that can wait for a keyframe mid-track (the recorder) may ask for one.
                sink.request_keyframe = pub.fanout.request_keyframe
            pub.fanout.add_sink(sink)
            self._sinks.setdefault(factory, []).append((pub, sink))

    def _forget_sinks(self, pub: Publication) -> None:
        for factory, entries in self._sinks.items():
            self._sinks[factory] = [(p, s) for p, s in entries if p is not pub]


class RoomRegistry:
    """Every live room of this process (the web app keeps one, closed at shutdown)."""

    def __init__(self, config: MediaConfig, *, media_timeout: float = MEDIA_TIMEOUT,
                 initial_offer_delay: float = INITIAL_OFFER_DELAY) -> None:
        self.config = config
        self.media_timeout = media_timeout
        self.initial_offer_delay = initial_offer_delay
        # The packet path forwards RTP packets; the frame path reassembled frames.
        self.packet_relay = PacketRelay() if config.relay_path == "packet" else None
        self._rooms: dict[str, Room] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    @property
    def rooms(self) -> Mapping[str, Room]:
        return MappingProxyType(self._rooms)

    def get(self, key: str) -> Room | None:
        return self._rooms.get(key)

    def get_or_create(self, key: str) -> Room:
        room = self._rooms.get(key)
        if room is None:
            if self.closed:
                raise SignalError("closed", "the server is shutting down")
            room = self._rooms[key] = Room(key, self)
        return room

    async def close_room(self, key: str) -> None:
        room = self._rooms.get(key)
        if room is not None:
            await room.close()

    async def close(self) -> None:
        """Close every room and wait for every peer connection to finish closing."""
        self.closed = True
        for room in list(self._rooms.values()):
            await room.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=CLOSE_TIMEOUT)

    def _forget(self, room: Room) -> None:
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _close_pc(self, participant: Participant) -> None:
        # aiortc's close() must never be cancelled half-way: run it as its own task,
        # shield it from our caller's cancellation, and keep it for shutdown.
        task: asyncio.Task[None] = asyncio.ensure_future(participant.pc.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        for t in list(participant._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        await asyncio.shield(task)
