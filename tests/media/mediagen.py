"""Pre-encoded test media: small VP8/H.264 video and Opus audio made once with PyAV.

Clients publish these encoded frames as ``av.Packet``s, so tests never encode or
decode while media flows.
"""

from __future__ import annotations

import fractions
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame: payload, presentation time in ``clock`` units, keyframe flag."""

    data: bytes
    pts: int
    keyframe: bool


@dataclass(frozen=True)
class EncodedMedia:
    """A short clip of encoded frames of one codec."""

    mime_type: str
    clock_rate: int
    frames: tuple[EncodedFrame, ...]
    duration: int  # in clock units, for looping

    @property
    def time_base(self) -> fractions.Fraction:
        return fractions.Fraction(1, self.clock_rate)


def _video_frames(width: int, height: int, count: int) -> list[av.VideoFrame]:
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[..., 0] = (xs * 255 // width + i * 4) % 256
        rgb[..., 1] = (ys * 255 // height + i * 2) % 256
        rgb[..., 2] = ((xs + ys + i * 8) // 4) % 256
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frames.append(frame)
    return frames


def encode_video(
    codec_name: str = "libvpx",
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    seconds: float = 2.5,
    gop: int = 15,
) -> EncodedMedia:
    """Encode a moving test pattern (VP8 with ``libvpx``, H.264 with ``libx264``)."""
    count = int(fps * seconds)
    ctx = av.CodecContext.create(codec_name, "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = 400_000
    ctx.gop_size = gop
    if codec_name == "libvpx":
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        mime = "video/VP8"
    else:
        ctx.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        mime = "video/H264"
    step = VIDEO_CLOCK // fps
    out: list[EncodedFrame] = []
    for i, frame in enumerate(_video_frames(width, height, count)):
        frame.pts = i
        frame.time_base = ctx.time_base
        for packet in ctx.encode(frame):
            out.append(EncodedFrame(bytes(packet), int(packet.pts) * step, packet.is_keyframe))
    for packet in ctx.encode(None):
        out.append(EncodedFrame(bytes(packet), int(packet.pts) * step, packet.is_keyframe))
    return EncodedMedia(mime, VIDEO_CLOCK, tuple(out), count * step)


def encode_opus(seconds: float = 2.5, frequency: float = 440.0) -> EncodedMedia:
    """Encode a sine tone as 20 ms Opus frames."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = AUDIO_CLOCK
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 64_000
    samples = 960
    total = int(AUDIO_CLOCK * seconds) // samples
    out: list[EncodedFrame] = []
    pts = 0
    for i in range(total):
        t = (np.arange(samples) + i * samples) / AUDIO_CLOCK
        tone = (np.sin(2 * math.pi * frequency * t) * 8000).astype(np.int16)
        stereo = np.repeat(tone, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        pts += samples
        for packet in ctx.encode(frame):
            out.append(EncodedFrame(bytes(packet), len(out) * samples, True))
    for packet in ctx.encode(None):
        out.append(EncodedFrame(bytes(packet), len(out) * samples, True))
    return EncodedMedia("audio/opus", AUDIO_CLOCK, tuple(out), len(out) * samples)


def cached(directory: Path, name: str, make: object) -> EncodedMedia:
    """Load ``name`` from ``directory`` or make and store it."""
    path = directory / f"{name}.pickle"
    if path.exists():
        with path.open("rb") as fh:
            media: EncodedMedia = pickle.load(fh)
            return media
    media = make()  # type: ignore[operator]
    with path.open("wb") as fh:
        pickle.dump(media, fh)
    return media
