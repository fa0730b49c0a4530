"""aiortc test clients that talk to a Room like a browser would, without a web server.

A client publishes pre-encoded frames (``av.Packet``s, nothing encoded at run time)
and records the encoded frames it receives (receivers tapped, nothing decoded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCRtpTransceiver, RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from panda.media import aiortc_patches
from panda.media.errors import SignalError
from panda.media.ice import MediaConfig, create_peer_connection
from panda.media.room import Participant, Room
from tests.media.mediagen import EncodedMedia

LOOPBACK = MediaConfig(ice_loopback=True)


async def wait_for(predicate: Callable[[], bool], limit: float = 15.0, what: str = "") -> None:
    """Wait until ``predicate()`` holds (checked every 20 ms), or fail after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class PacketTrack(MediaStreamTrack):
    """Plays an encoded clip in a loop at real-time pace, recording what it sent."""

    def __init__(self, kind: str, media: EncodedMedia) -> None:
        super().__init__()
        self.kind = kind
        self.media = media
        self.sent: list[bytes] = []
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override]
        frames = self.media.frames
        loop_no, pos = divmod(self._index, len(frames))
        frame = frames[pos]
        pts = loop_no * self.media.duration + frame.pts
        if self._start is None:
            self._start = time.monotonic() - pts / self.media.clock_rate
        due = self._start + pts / self.media.clock_rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._index += 1
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = self.media.time_base
        self.sent.append(frame.data)
        return packet


@dataclass
class Received:
    """Encoded frames one client received on one mid."""

    mid: str
    codec: str = ""
    frames: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)


class Client:
    """A browser stand-in: one aiortc peer connection, driven through Participant.handle_signal."""

    def __init__(self, name: str, *, video: EncodedMedia | None, audio: EncodedMedia | None,
                 video_codecs: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.video_media = video
        self.audio_media = audio
        self.video_codecs = video_codecs
        self.pc = create_peer_connection(LOOPBACK)
        self.taps: dict[RTCRtpTransceiver, aiortc_patches.ReceiverTap] = {}
        self.received: dict[str, Received] = {}
        self.tracks: dict[str, dict[str, Any]] = {}  # mid -> what the server said it carries
        self.published: dict[str, PacketTrack] = {}  # mid -> track
        self.sources: dict[str, str] = {}
        self.participant: Participant | None = None
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[BaseException] = []
        self.messages: list[dict[str, Any]] = []
        self.states: list[str] = []
        self.answers = 0
        self.offers_handled = 0
        self.pli_received = 0
        self.remb_received: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[None]] = set()
        aiortc_patches.on_transceiver_created(self.pc, self._on_transceiver)

    # ------------------------------------------------------------------ plumbing

    def _on_transceiver(self, transceiver: RTCRtpTransceiver) -> None:
        tap = aiortc_patches.tap_receiver(transceiver.receiver)
        self.taps[transceiver] = tap

        def on_frame(codec: RTCRtpCodecParameters, frame: Any, arrival: float) -> None:
            mid = transceiver.mid or "?"
            rec = self.received.get(mid)
            if rec is None:
                rec = self.received[mid] = Received(mid, codec.mimeType)
            rec.frames.append(frame.data)
            rec.timestamps.append(frame.timestamp)

        tap.on_frame = on_frame
        aiortc_patches.hook_sender(
            transceiver.sender,
            on_keyframe_request=self._on_pli,
            on_remb=self.remb_received.append,
        )

    def _on_pli(self) -> None:
        self.pli_received += 1

    async def send(self, msg: dict[str, Any]) -> None:
        """The SendFn given to Room.join."""
        await self.inbox.put(msg)

    async def on_state(self, state: str) -> None:
        self.states.append(state)

    async def _process(self) -> None:
        while True:
            msg = await self.inbox.get()
            self.messages.append(msg)
            try:
                await self._handle(msg)
            except Exception as exc:
                self.errors.append(exc)

    async def _handle(self, msg: dict[str, Any]) -> None:
        assert self.participant is not None
        if msg["type"] == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
            self.answers += 1
        elif msg["type"] == "offer":
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            self.tracks = dict(msg.get("tracks", {}))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            await self.participant.handle_signal(
                {"type": "answer", "sdp": self.pc.localDescription.sdp}
            )
            self.offers_handled += 1

    # ------------------------------------------------------------------ actions

    async def join(self, room: Room, participant_id: str | None = None) -> Participant:
        if self._task is None:
            self._task = asyncio.ensure_future(self._process())
        self.participant = await room.join(
            participant_id or self.name, name=self.name, role="student", send=self.send,
            on_state=self.on_state,
        )
        return self.participant

    def add_track(self, kind: str, source: str, *, reuse: bool = False) -> PacketTrack:
        """Add a track on a new m-line, or (``reuse``) like a browser's addTrack, which
        puts it on an unused transceiver of the same kind, e.g. one the server added."""
        media = self.video_media if kind == "video" else self.audio_media
        assert media is not None
        track = PacketTrack(kind, media)
        if reuse:
            sender = self.pc.addTrack(track)
            transceiver = next(t for t in self.pc.getTransceivers() if t.sender is sender)
        else:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
        if kind == "video" and self.video_codecs is not None:
            prefs = [c for c in transceiver.sender.getCapabilities("video").codecs
                     if c.mimeType.lower() in self.video_codecs]
            transceiver.setCodecPreferences(prefs)
        self._pending_sources = getattr(self, "_pending_sources", [])
        self._pending_sources.append((transceiver, source, track))
        return track

    async def offer(self) -> None:
        """Send an offer with everything added so far and wait for the server's answer."""
        assert self.participant is not None
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        for transceiver, source, track in getattr(self, "_pending_sources", []):
            assert transceiver.mid is not None
            self.sources[transceiver.mid] = source
            self.published[transceiver.mid] = track
        self._pending_sources = []
        answers = self.answers
        await self.participant.handle_signal(
            {"type": "offer", "sdp": self.pc.localDescription.sdp, "sources": self.sources}
        )
        await wait_for(lambda: self.answers > answers or bool(self.errors), what="answer")
        if self.errors:
            raise self.errors[-1]

    async def publish(self, audio: bool = True, video: bool = True) -> None:
        if audio:
            self.add_track("audio", "microphone")
        if video:
            self.add_track("video", "camera")
        await self.offer()

    async def receive_only(self) -> None:
        """Offer recvonly m-lines, as a browser without camera and microphone would."""
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        await self.offer()

    async def stop_publishing(self, mid: str) -> None:
        """Like removeTrack in a browser: the m-line stays, direction becomes inactive."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid == mid:
                transceiver.direction = (
                    "recvonly" if transceiver.direction == "sendrecv" else "inactive")
        self.sources.pop(mid, None)
        await self.offer()

    def send_remb(self, bitrate: int) -> None:
        """Report a receive estimate for every video stream this client receives."""
        for transceiver, tap in self.taps.items():
            if transceiver.kind != "video" or not tap.started:
                continue
            ssrc = tap.media_ssrc
            if ssrc is None:
                continue
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=transceiver.sender._ssrc,
                                    media_ssrc=0, fci=pack_remb_fci(bitrate, [ssrc]))
            task = asyncio.ensure_future(tap._send_rtcp(packet))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    def mids_from(self, participant_id: str, kind: str, active_only: bool = True) -> list[str]:
        return [mid for mid, info in self.tracks.items()
                if info["participant_id"] == participant_id and info["kind"] == kind]

    def frames_from(self, participant_id: str, kind: str, source: str | None = None) -> list[bytes]:
        for mid, info in self.tracks.items():
            if info["participant_id"] == participant_id and info["kind"] == kind and (
                    source is None or info["source"] == source):
                rec = self.received.get(mid)
                return rec.frames if rec else []
        return []

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.pc.close()


def contiguous_in(received: list[bytes], sent: list[bytes]) -> bool:
    """True if ``received`` equals some contiguous run of ``sent`` (frames in order, none lost)."""
    if not received:
        return False
    first = received[0]
    n = len(received)
    for i, data in enumerate(sent):
        if data == first and sent[i:i + n] == received:
            return True
    return False


def video_codec_capabilities(mime: str) -> list[RTCRtpCodecParameters]:
    return [c for c in CODECS["video"] if c.mimeType.lower() == mime]


__all__ = ["Client", "PacketTrack", "SignalError", "contiguous_in", "wait_for"]
