"""Load generator for the relay benchmark: N concurrent 1:1 calls of aiortc clients.

Each participant publishes pre-encoded VP8 + Opus (``av.Packet``s, nothing encoded at run
time) and receives its peer without decoding (receivers are tapped, encoded frames counted).
Video latency through the relay is measured on one clock: the sender logs when each
payload left (keyed by the publisher and the payload's hash), the receiver looks the
same payload up on arrival.

Protocol with the orchestrator (``bench/relay.py``): lines on stdout, ``START`` when the
measured window opens, ``END`` when it closes, then one JSON line with the result.
Run: python bench/relay_load.py --url ws://127.0.0.1:PORT/ws --calls N --seconds S
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from panda.media import aiortc_patches
from panda.media.ice import MediaConfig, create_peer_connection
from tests.media.mediagen import VIDEO_CLOCK, EncodedFrame, EncodedMedia, cached, encode_opus

CACHE = Path(__file__).resolve().parent / ".cache"

# name -> (width, height, fps, seconds, bit_rate, gop)
PROFILES: dict[str, tuple[int, int, int, float, int, int]] = {
    "quick": (320, 180, 30, 3.0, 300_000, 30),
    "full": (1280, 720, 30, 6.0, 1_500_000, 90),
}


def encode_vp8(width: int, height: int, fps: int, seconds: float, bit_rate: int,
               gop: int) -> EncodedMedia:
    """Encode a moving, noisy test pattern as VP8 (noise keeps the bitrate realistic).

    The first group of pictures is encoded and thrown away: libvpx's very first keyframe,
    made before rate control settles, is tens of times larger than the later ones (a
    267 KB burst every loop at 720p), which no browser sends at a steady 1.5 Mbit/s.
    """
    count = int(fps * seconds)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = bit_rate
    ctx.gop_size = gop
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:height, 0:width]
    step = VIDEO_CLOCK // fps
    out: list[EncodedFrame] = []

    def keep(packets: list[av.Packet]) -> None:
        for packet in packets:
            index = int(packet.pts) - gop
            if 0 <= index < count:
                out.append(EncodedFrame(bytes(packet), index * step, packet.is_keyframe))

    for i in range(gop + count):
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[..., 0] = (xs * 255 // width + i * 4) % 256
        rgb[..., 1] = (ys * 255 // height + i * 2) % 256
        rgb[..., 2] = ((xs + ys + i * 8) // 4) % 256
        rgb = np.clip(rgb.astype(np.int16) + rng.integers(-24, 24, rgb.shape), 0, 255)
        frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        keep(ctx.encode(frame))
    keep(ctx.encode(None))
    if not out or not out[0].keyframe:
        raise RuntimeError("the kept clip does not start on a keyframe")
    return EncodedMedia("video/VP8", VIDEO_CLOCK, tuple(out), count * step)


def load_media(profile: str) -> tuple[EncodedMedia, EncodedMedia]:
    """The cached (video, audio) clips of ``profile``, made once under bench/.cache/."""
    CACHE.mkdir(parents=True, exist_ok=True)
    width, height, fps, seconds, bit_rate, gop = PROFILES[profile]
    video = cached(CACHE, f"vp8-{profile}-{width}x{height}-{bit_rate}-v2",
                   lambda: encode_vp8(width, height, fps, seconds, bit_rate, gop))
    audio = cached(CACHE, "opus-6s", lambda: encode_opus(seconds=6.0))
    return video, audio


def media_bitrate(media: EncodedMedia) -> float:
    """Average bitrate of a clip in bit/s."""
    return sum(len(f.data) for f in media.frames) * 8 * media.clock_rate / media.duration


class SendLog:
    """When each payload of one publisher last left, keyed by the payload's hash.

    The clip loops, so a payload recurs once per loop; a clip much longer than the
    relay latency makes the latest send the one a receiver sees.
    """

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.count = 0

    def record(self, data: bytes, at: float) -> None:
        self.sent[hash(data)] = at
        self.count += 1

    def latency(self, data: bytes, arrival: float) -> float | None:
        """Seconds from send to ``arrival``, or None for a payload never sent (re-encoded)."""
        at = self.sent.get(hash(data))
        if at is None or at > arrival:
            return None
        return arrival - at


class PacketTrack(MediaStreamTrack):
    """Plays an encoded clip in a loop at real-time pace, logging each send.

    A keyframe request makes it jump to the clip's next keyframe, as a browser's encoder
    answers PLI with a keyframe (otherwise time to first frame would only measure the
    clip's keyframe interval).
    """

    def __init__(self, kind: str, media: EncodedMedia, log: SendLog | None,
                 counter: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self.media = media
        self.log = log
        self.counter = counter
        self._index = 0
        self._start: float | None = None
        self._keyframe_wanted = False

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def _skip_to_keyframe(self) -> None:
        frames = self.media.frames
        for step in range(len(frames)):
            if frames[(self._index + step) % len(frames)].keyframe:
                break
        else:
            return
        if step:
            loop_no, pos = divmod(self._index + step, len(frames))
            pts = loop_no * self.media.duration + frames[pos].pts
            self._index += step
            # the clip's clock moves on with the jump: the keyframe goes out now
            self._start = time.monotonic() - pts / self.media.clock_rate

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self._keyframe_wanted and self.kind == "video":
            self._keyframe_wanted = False
            self._skip_to_keyframe()
        frames = self.media.frames
        loop_no, pos = divmod(self._index, len(frames))
        frame = frames[pos]
        pts = loop_no * self.media.duration + frame.pts
        if self._start is None:
            self._start = time.monotonic() - pts / self.media.clock_rate
        delay = self._start + pts / self.media.clock_rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._index += 1
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = self.media.time_base
        if self.log is not None:
            self.log.record(frame.data, time.monotonic())
        self.counter()
        return packet


@dataclass
class Counters:
    """Frames one participant sent and received, by kind."""

    sent: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    received: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})


class Participant:
    """One side of a 1:1 call: an aiortc peer connection signalled over a WebSocket."""

    def __init__(self, load: Load, call: int, name: str) -> None:
        self.load = load
        self.call = call
        self.name = name
        self.key = f"{call}:{name}"
        self.peer_key = f"{call}:{'b' if name == 'a' else 'a'}"
        self.counters = Counters()
        self.pc = self.new_peer_connection()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.offer_at: float | None = None
        self.first_video_at: float | None = None
        self.answered = asyncio.Event()
        self.errors: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        aiortc_patches.on_transceiver_created(self.pc, self._on_transceiver)

    def new_peer_connection(self) -> RTCPeerConnection:
        """A peer connection of this client (loopback-only ICE against our servers)."""
        return create_peer_connection(MediaConfig(ice_loopback=True))

    def _on_transceiver(self, transceiver: RTCRtpTransceiver) -> None:
        tap = aiortc_patches.tap_receiver(transceiver.receiver)

        def on_frame(codec: RTCRtpCodecParameters, frame: Any, arrival: float) -> None:
            kind = "video" if codec.mimeType.lower().startswith("video") else "audio"
            self.counters.received[kind] += 1
            if kind == "video":
                if self.first_video_at is None:
                    self.first_video_at = arrival
                self.load.on_video(self.peer_key, frame.data, arrival)

        tap.on_frame = on_frame

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        self.ws = await session.ws_connect(f"{url}?room=call-{self.call}&pid={self.name}")
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                break
            msg = json.loads(raw.data)
            try:
                if msg.get("type") == "answer":
                    await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                    self.answered.set()
                elif msg.get("type") == "offer":
                    await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.ws.send_json({"type": "answer", "sdp": self.pc.localDescription.sdp})
                elif msg.get("type") == "error":
                    self.errors.append(str(msg))
            except Exception as exc:  # reported in the result, not fatal here
                self.errors.append(repr(exc))

    async def publish(self, video: EncodedMedia, audio: EncodedMedia) -> None:
        """Offer sendonly audio + video and wait for the server's answer."""
        assert self.ws is not None
        a, v = self.add_tracks(video, audio)
        self.offer_at = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sources = {a.mid: "microphone", v.mid: "camera"}
        await self.ws.send_json({"type": "offer", "sdp": self.pc.localDescription.sdp,
                                 "sources": sources})
        await asyncio.wait_for(self.answered.wait(), 30)

    def add_tracks(self, video: EncodedMedia, audio: EncodedMedia
                   ) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver]:
        """Add the sendonly (audio, video) transceivers playing the clips, sends logged."""
        log = self.load.logs.setdefault(self.key, SendLog())

        def count(kind: str) -> Callable[[], None]:
            def bump() -> None:
                self.counters.sent[kind] += 1
            return bump

        a = self.pc.addTransceiver(PacketTrack("audio", audio, None, count("audio")),
                                   direction="sendonly")
        video_track = PacketTrack("video", video, log, count("video"))
        v = self.pc.addTransceiver(video_track, direction="sendonly")
        aiortc_patches.hook_sender(v.sender, on_keyframe_request=video_track.request_keyframe)
        return a, v

    def describe(self) -> str:
        """Where this participant stands, for an error message."""
        return f"{self.counters.received} pc={self.pc.connectionState} errors={self.errors}"

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        await asyncio.shield(self.pc.close())


class Load:
    """All calls of one measurement point and the latencies measured in its window."""

    def __init__(self) -> None:
        self.logs: dict[str, SendLog] = {}
        self.latencies: list[float] = []
        self.keyframe_latencies: list[float] = []  # also in latencies: tells tails apart
        self.unmatched = 0
        self.measuring = False
        self.participants: list[Participant] = []

    def on_video(self, publisher: str, data: bytes, arrival: float) -> None:
        if not self.measuring:
            return
        log = self.logs.get(publisher)
        latency = log.latency(data, arrival) if log is not None else None
        if latency is None:
            self.unmatched += 1
        else:
            self.latencies.append(latency)
            if data and not data[0] & 1:  # VP8 keyframe: bit 0 of the first byte is 0
                self.keyframe_latencies.append(latency)

    def totals(self) -> tuple[int, int, int, int]:
        """(video sent, video received, audio sent, audio received) over all participants."""
        ps = self.participants
        return (sum(p.counters.sent["video"] for p in ps),
                sum(p.counters.received["video"] for p in ps),
                sum(p.counters.sent["audio"] for p in ps),
                sum(p.counters.received["audio"] for p in ps))


def delivery(sent_0: int, sent_1: int, recv_0: int, recv_1: int) -> float | None:
    """Frames received / frames sent over a window (received counts sampled a bit later)."""
    sent = sent_1 - sent_0
    if sent <= 0:
        return None
    return (recv_1 - recv_0) / sent


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emit(line: str) -> None:
    print(line, flush=True)


async def run(url: str, calls: int, seconds: float, profile: str, drain: float = 0.3,
              participant: type[Participant] = Participant) -> None:
    video, audio = load_media(profile)
    load = Load()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for call in range(calls):
            for name in ("a", "b"):
                p = participant(load, call, name)
                load.participants.append(p)
        try:
            await asyncio.gather(*(p.connect(session, url) for p in load.participants))

            async def call_up(call: int) -> None:
                a, b = load.participants[2 * call], load.participants[2 * call + 1]
                await a.publish(video, audio)
                await b.publish(video, audio)

            await asyncio.gather(*(call_up(i) for i in range(calls)))
            deadline = time.monotonic() + 30 + 2 * calls
            while any(p.first_video_at is None for p in load.participants):
                if time.monotonic() > deadline:
                    state = {p.key: p.describe() for p in load.participants}
                    raise RuntimeError(f"not every participant received video in time: {state}")
                await asyncio.sleep(0.05)
            setup_s = time.monotonic() - started
            await asyncio.sleep(1.0)  # let bursts of the first keyframe settle
            cpu_0 = proc_cpu_seconds()
            t_0 = time.monotonic()
            vs_0, _, as_0, _ = load.totals()
            load.measuring = True
            emit("START")
            await asyncio.sleep(drain)
            _, vr_0, _, ar_0 = load.totals()
            await asyncio.sleep(seconds - drain)
            vs_1, _, as_1, _ = load.totals()
            emit("END")
            t_1 = time.monotonic()
            cpu_1 = proc_cpu_seconds()
            await asyncio.sleep(drain)
            _, vr_1, _, ar_1 = load.totals()
            load.measuring = False
            first = []
            for p in load.participants:
                peer = next(q for q in load.participants if q.key == p.peer_key)
                assert p.first_video_at is not None and p.offer_at and peer.offer_at
                first.append((p.first_video_at - max(p.offer_at, peer.offer_at)) * 1000)
            result = {
                "calls": calls,
                "window_s": t_1 - t_0,
                "setup_s": setup_s,
                "generator_cpu_s": cpu_1 - cpu_0,
                "video_delivery": delivery(vs_0, vs_1, vr_0, vr_1),
                "audio_delivery": delivery(as_0, as_1, ar_0, ar_1),
                "video_frames_sent": vs_1 - vs_0,
                "latencies_ms": [round(x * 1000, 3) for x in load.latencies],
                "keyframe_latencies_ms": [round(x * 1000, 3) for x in load.keyframe_latencies],
                "unmatched_frames": load.unmatched,
                "first_frame_ms": first,
                "video_kbps": media_bitrate(video) / 1000,
                "errors": [e for p in load.participants for e in p.errors],
            }
        finally:
            await asyncio.gather(*(p.close() for p in load.participants),
                                 return_exceptions=True)
    emit(json.dumps(result))


def main(participant: type[Participant] = Participant) -> None:
    """Command line of the generator; ``participant`` speaks the server's signalling."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--prepare", action="store_true", help="only make the cached media")
    args = parser.parse_args()
    if args.prepare:
        load_media(args.profile)
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(run(args.url, args.calls, args.seconds, args.profile, participant=participant))


if __name__ == "__main__":
    main()
