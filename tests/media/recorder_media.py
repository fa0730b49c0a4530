"""Pre-encoded test media for the recorder tests: solid-colour VP8 video and sine-tone Opus."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, 48000)
FPS = 30
WIDTH, HEIGHT = 320, 180


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame as the relay would forward it (pts from 0 on its own clock)."""

    data: bytes
    pts: int
    keyframe: bool
    time: float  # media time in seconds


@functools.lru_cache(maxsize=8)
def encode_vp8(
    colour: tuple[int, int, int], seconds: float, *, gop: int = 60, size: tuple[int, int] = (
        WIDTH, HEIGHT)
) -> tuple[EncodedFrame, ...]:
    """Solid-colour VP8 at 30 fps with a small moving white square (so frames differ)."""
    width, height = size
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.framerate = FPS
    encoder.gop_size = gop
    encoder.bit_rate = 300_000
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    frames: list[EncodedFrame] = []
    count = round(seconds * FPS)
    for index in range(count):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = colour
        y = (index * 3) % (height - 16)
        image[y:y + 16, 0:16] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = encoder.time_base
        for packet in [*encoder.encode(frame), *([] if index < count - 1 else encoder.encode())]:
            frames.append(_video(packet))
    return tuple(frames)


def _video(packet: av.Packet) -> EncodedFrame:
    pts = int(packet.pts) * (90000 // FPS)
    return EncodedFrame(bytes(packet), pts, bool(packet.is_keyframe), pts / 90000)


@functools.lru_cache(maxsize=8)
def encode_opus(
    frequency: float, seconds: float, *, level: float = 0.3
) -> tuple[EncodedFrame, ...]:
    """A sine tone as 20 ms Opus packets (mono content, stereo stream like WebRTC)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.time_base = AUDIO_TIME_BASE
    encoder.bit_rate = 64000
    frames: list[EncodedFrame] = []
    total = round(seconds * 50)
    for index in range(total):
        start = index * 960
        t = np.arange(start, start + 960) / 48000
        mono = (np.sin(2 * np.pi * frequency * t) * level * 32767).astype(np.int16)
        stereo = np.repeat(mono[:, None], 2, axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = start
        frame.time_base = AUDIO_TIME_BASE
        for packet in encoder.encode(frame):
            frames.append(_audio(packet))
    for packet in encoder.encode():
        frames.append(_audio(packet))
    # Rebase so the first packet is at 0 (WebRTC has no pre-skip); keep whole 20 ms steps.
    return tuple(
        EncodedFrame(f.data, i * 960, True, i * 0.02) for i, f in enumerate(frames[:total])
    )


def _audio(packet: av.Packet) -> EncodedFrame:
    return EncodedFrame(bytes(packet), int(packet.pts), True, 0.0)


@dataclass(frozen=True)
class Delivery:
    """One frame handed to a sink at an arrival time."""

    arrival: float
    sink_index: int
    frame: EncodedFrame
    time_base: Fraction


def schedule(
    tracks: list[tuple[tuple[EncodedFrame, ...], Fraction, float]],
    *,
    start: float,
    seed: int = 1,
    jitter: float = 0.008,
) -> list[Delivery]:
    """Interleave tracks by arrival time.

    Each track is (frames, time_base, offset): its frames arrive at start + offset + media
    time + a little random network delay (in order, as the jitter buffer hands them over).
    """
    rng = random.Random(seed)
    deliveries: list[Delivery] = []
    for index, (frames, time_base, offset) in enumerate(tracks):
        last = 0.0
        for frame in frames:
            arrival = start + offset + frame.time + rng.uniform(0, jitter)
            last = max(last, arrival)
            deliveries.append(Delivery(last, index, frame, time_base))
    deliveries.sort(key=lambda d: d.arrival)
    return deliveries


def make_packet(frame: EncodedFrame, time_base: Fraction, rtp_base: int) -> av.Packet:
    """An av.Packet as the relay forwards it: RTP-based pts from an arbitrary start."""
    packet = av.Packet(frame.data)
    packet.pts = rtp_base + frame.pts
    packet.dts = packet.pts
    packet.time_base = time_base
    return packet


def iter_video_frames(path: str, stream_index: int = 0) -> Iterator[av.Packet]:
    """Every video packet of a file, in order."""
    with av.open(path) as container:
        stream = container.streams.video[stream_index]
        for packet in container.demux(stream):
            if packet.dts is not None:
                yield packet


def _child_main(argv: list[str]) -> int:
    """Child process for the crash and write-error tests (run with ``-m``)."""
    import hashlib
    import json
    import resource
    import signal
    import sys
    import time
    from pathlib import Path

    from panda.media.recorder import SessionRecorder

    mode, directory = argv[0], argv[1]
    video = encode_vp8((200, 30, 30), 6.0)
    audio = encode_opus(440.0, 6.0)
    errors: list[str] = []
    # The encoder's realtime mode is not deterministic: tell the parent what is sent.
    Path(directory, "sent-video.json").write_text(
        json.dumps([hashlib.sha256(f.data).hexdigest() for f in video]))
    if mode == "fsize":
        limit = int(argv[2])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    start = time.monotonic()
    recorder = SessionRecorder(directory, start=start, on_error=lambda e: errors.append(str(e)))
    sinks = [
        recorder.sink_factory("tutor", "video", "camera", "video/VP8"),
        recorder.sink_factory("tutor", "audio", "microphone", "audio/opus"),
    ]
    deliveries = schedule([(video, VIDEO_TIME_BASE, 0.0), (audio, AUDIO_TIME_BASE, 0.0)],
                          start=start)
    stop_after = float(argv[2]) if mode == "kill" else None
    for delivery in deliveries:
        if stop_after is not None:
            if delivery.arrival - start > stop_after:
                break
            # Paced like a live call so the writer keeps up as it would in production.
            time.sleep(max(0.0, delivery.arrival - time.monotonic()))
        sink = sinks[delivery.sink_index]
        assert sink is not None
        packet = make_packet(delivery.frame, delivery.time_base, 5000 + 77 * delivery.sink_index)
        sink.on_frame(packet, keyframe=delivery.frame.keyframe, arrival=delivery.arrival)
    if mode == "kill":
        print(f"fed {stop_after}", flush=True)
        sys.stdin.read()  # wait to be killed
        return 0
    result = recorder.stop_blocking()
    print(json.dumps({
        "state": result.state,
        "error": result.error,
        "callback_errors": errors,
        "files": [f.to_json() for f in result.files],
        "accepting": recorder.accepting,
    }), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_child_main(sys.argv[1:]))


def encode_h264(colour: tuple[int, int, int], frames: int, size: tuple[int, int]) -> list[
        EncodedFrame]:
    """Annex B H.264 (baseline, in-band SPS/PPS on keyframes) as browsers send it."""
    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.framerate = FPS
    encoder.gop_size = 30
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    out: list[EncodedFrame] = []
    for index in range(frames):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = colour
        image[index % (height - 8):index % (height - 8) + 8, 0:8] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = encoder.time_base
        out.extend(_video(p) for p in encoder.encode(frame))
    out.extend(_video(p) for p in encoder.encode())
    return out
