"""The combined file of a recording: everyone side by side, voices mixed, in one WebM.

This is offline work (decode, compose, encode VP8/Opus) meant for a low-priority worker process:
:func:`start_compose_worker` spawns ``python -m panda.media.recording_compose`` under ``nice`` and
the worker reports progress in a small JSON file that :func:`read_progress` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from panda.media.recorder import RecordedFile, load_manifest
from panda.media.recording_remux import check_file

__all__ = [
    "ComposeError",
    "ComposeResult",
    "compose_recording",
    "read_progress",
    "start_compose_worker",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
BACKGROUND = (24, 24, 28)

ProgressFn = Callable[[float], None]
# The worker is started with this on its path, as the package may not be installed.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ComposeError(Exception):
    """The combined file could not be built (nothing to compose, unreadable inputs, ...)."""


@dataclass
class ComposeResult:
    """What the combined file holds."""

    path: str
    duration: float
    width: int
    height: int
    video_frames: int
    size: int


@dataclass
class _Source:
    record: RecordedFile
    path: Path
    role: str


class _VideoTrack:
    """Decoded pictures of one file's video stream, walked forward in recording time."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.offset = source.record.start_offset
        # The file ends when its track ended (camera off, share stopped): the tile empties then.
        self.end = self.offset + (source.record.duration or 0.0)
        self._container = av.open(str(source.path))
        self._frames: Iterator[av.VideoFrame] = self._decode()
        self.current: av.VideoFrame | None = None
        self.current_time = -1.0
        self._next: av.VideoFrame | None = None
        self._next_time = float("inf")
        self.first_time: float | None = None
        self.last_time = -1.0
        self._advance()
        self._scaled: dict[tuple[int, int], np.ndarray] = {}

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            yield from self._container.decode(video=0)
        except (av.error.FFmpegError, ValueError) as exc:
            log.warning("video of %s ends early: %s", self.source.path.name, exc)

    def _advance(self) -> None:
        frame = next(self._frames, None)
        self._next = frame
        if frame is None or frame.time is None:
            self._next = None
            self._next_time = float("inf")
            return
        self._next_time = self.offset + float(frame.time)
        if self.first_time is None:
            self.first_time = self._next_time

    def at(self, t: float) -> av.VideoFrame | None:
        """The picture showing at recording time ``t`` (None before the first or long after)."""
        while self._next is not None and self._next_time <= t:
            self.current, self.current_time = self._next, self._next_time
            self.last_time = self._next_time
            self._scaled.clear()
            self._advance()
        if self.current is None or t >= self.end:
            return None
        return self.current

    def scaled(self, box: tuple[int, int]) -> np.ndarray:
        """The current picture scaled to fit in ``box`` (width, height), aspect kept."""
        cached = self._scaled.get(box)
        if cached is not None:
            return cached
        frame = self.current
        assert frame is not None
        box_w, box_h = box
        scale = min(box_w / frame.width, box_h / frame.height)
        width = max(2, int(frame.width * scale) // 2 * 2)
        height = max(2, int(frame.height * scale) // 2 * 2)
        image = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
        self._scaled[box] = image
        return image

    def close(self) -> None:
        self._container.close()


class _AudioTrack:
    """Decoded mono samples of one file's audio stream, placed on the recording's timeline."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.offset = source.record.start_offset
        self._container = av.open(str(source.path))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._chunks = self._decode()
        self._held: tuple[int, np.ndarray] | None = None

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        try:
            for frame in self._container.decode(audio=0):
                if frame.time is None:
                    continue
                start = round((self.offset + float(frame.time)) * SAMPLE_RATE)
                position = start
                for out in self._resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32)
                    yield position, samples
                    position += len(samples)
        except (av.error.FFmpegError, ValueError) as exc:
            log.warning("audio of %s ends early: %s", self.source.path.name, exc)

    def mix_into(self, buffer: np.ndarray, start: int) -> None:
        """Add this track's samples that fall in [start, start + len(buffer))."""
        end = start + len(buffer)
        while True:
            if self._held is None:
                self._held = next(self._chunks, None)
                if self._held is None:
                    return
            position, samples = self._held
            if position >= end:
                return
            lo, hi = max(position, start), min(position + len(samples), end)
            if hi > lo:
                buffer[lo - start:hi - start] += samples[lo - position:hi - position]
            if position + len(samples) > end:
                return  # the rest belongs to the next chunk
            self._held = None

    def close(self) -> None:
        self._container.close()


def _sources(directory: Path) -> tuple[list[_Source], list[str]]:
    manifest = load_manifest(directory)
    if manifest is None:
        raise ComposeError(f"no manifest in {directory}")
    participants: dict[str, dict[str, str]] = manifest.get("participants", {})
    sources: list[_Source] = []
    order: list[str] = []
    for data in manifest.get("files", []):
        record = RecordedFile.from_json(data)
        path = directory / record.name
        if record.status == "damaged" or not path.exists():
            continue
        if record.duration is None:
            record.duration = check_file(path).duration
        role = participants.get(record.participant_id, {}).get("role", "")
        sources.append(_Source(record, path, role))
        if record.participant_id not in order:
            order.append(record.participant_id)
    # Tutors first (left), then everyone else in order of appearance.
    order.sort(key=lambda pid: participants.get(pid, {}).get("role", "") != "tutor")
    return sources, order


def _paste(canvas: np.ndarray, image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    ih, iw = image.shape[:2]
    top = y + (h - ih) // 2
    left = x + (w - iw) // 2
    canvas[top:top + ih, left:left + iw] = image


def _write_progress(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_progress(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The worker's progress: {"state": "running"|"done"|"failed", "progress": 0..1, ...}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def compose_recording(
    directory: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 15,
    video_bit_rate: int = 1_200_000,
    progress: ProgressFn | None = None,
    progress_file: str | os.PathLike[str] | None = None,
    order: Sequence[str] | None = None,
) -> ComposeResult:
    """Build one WebM of a stopped recording: cameras side by side (tutor left), a screen share
    in the main area while it runs, all voices mixed. Runs in the calling thread (offline).
    """
    directory = Path(directory)
    output = Path(output)
    progress_path = Path(progress_file) if progress_file is not None else None
    if width % 2 or height % 2 or width < 64 or height < 64 or not 1 <= fps <= 60:
        raise ValueError("width/height must be even and >= 64, fps 1..60")
    started = time.monotonic()
    _write_progress(progress_path, {"state": "running", "progress": 0.0})
    try:
        result = _compose(directory, output, width, height, fps, video_bit_rate, progress,
                          progress_path, order)
    except BaseException as exc:
        _write_progress(progress_path, {"state": "failed", "progress": 0.0,
                                        "error": f"{type(exc).__name__}: {exc}"})
        raise
    _write_progress(progress_path, {"state": "done", "progress": 1.0, "result": asdict(result),
                                    "seconds": round(time.monotonic() - started, 2),
                                    "nice": os.nice(0)})
    return result


def _compose(
    directory: Path, output: Path, width: int, height: int, fps: int, video_bit_rate: int,
    progress: ProgressFn | None, progress_path: Path | None, order: Sequence[str] | None,
) -> ComposeResult:
    sources, participants = _sources(directory)
    if order:
        participants = [p for p in order if p in participants] + [
            p for p in participants if p not in order]
    total = max((s.record.start_offset + (s.record.duration or 0.0) for s in sources), default=0.0)
    if total <= 0:
        raise ComposeError("the recording holds no media")

    def kinds(source: _Source) -> set[str]:
        return {t.get("kind", "") for t in source.record.tracks} or {"video", "audio"}

    cameras: dict[str, list[_VideoTrack]] = {p: [] for p in participants}
    screens: list[_VideoTrack] = []
    audios: list[_AudioTrack] = []
    opened: list[_VideoTrack | _AudioTrack] = []
    tmp = output.with_name(f"{output.stem}.part{output.suffix}")
    try:
        for source in sources:
            with av.open(str(source.path)) as probe:
                has_video = bool(probe.streams.video) and "video" in kinds(source)
                has_audio = bool(probe.streams.audio) and "audio" in kinds(source)
            if has_video:
                track = _VideoTrack(source)
                opened.append(track)
                if source.record.group == "screen":
                    screens.append(track)
                else:
                    cameras[source.record.participant_id].append(track)
            if has_audio:
                audio = _AudioTrack(source)
                opened.append(audio)
                audios.append(audio)
        tiles = [p for p in participants if cameras[p]] or participants

        with av.open(str(tmp), "w", format="webm") as container:
            video_stream = container.add_stream("libvpx", rate=fps)
            video_stream.width, video_stream.height = width, height
            video_stream.pix_fmt = "yuv420p"
            video_stream.bit_rate = video_bit_rate
            video_stream.options = {"deadline": "realtime", "cpu-used": "6",
                                    "lag-in-frames": "0", "auto-alt-ref": "0"}
            video_stream.codec_context.gop_size = fps * 4
            audio_stream = container.add_stream("libopus", rate=SAMPLE_RATE)
            audio_stream.codec_context.layout = "mono"
            audio_stream.bit_rate = 64_000
            frame_count = round(total * fps)
            audio_pos = 0
            audio_block = 960
            last_report = -1.0
            for index in range(frame_count):
                t = index / fps
                canvas = np.empty((height, width, 3), np.uint8)
                canvas[:] = BACKGROUND
                screen = next((s for s in screens if s.at(t) is not None), None)
                for other in screens:
                    if other is not screen:
                        other.at(t)
                pictures = []
                for pid in tiles:
                    shown = None
                    for track in cameras.get(pid, []):
                        if track.at(t) is not None:
                            shown = track
                    pictures.append(shown)
                if screen is not None:
                    main_w = width * 3 // 4 // 2 * 2
                    _paste(canvas, screen.scaled((main_w, height)), (0, 0, main_w, height))
                    side_w = width - main_w
                    tile_h = min(height // max(1, len(pictures)), side_w * 9 // 16) // 2 * 2
                    top = (height - tile_h * len(pictures)) // 2
                    for slot, shown in enumerate(pictures):
                        if shown is not None:
                            _paste(canvas, shown.scaled((side_w, tile_h)),
                                   (main_w, top + slot * tile_h, side_w, tile_h))
                else:
                    columns = max(1, len(pictures))
                    tile_w = width // columns // 2 * 2
                    for slot, shown in enumerate(pictures):
                        if shown is not None:
                            _paste(canvas, shown.scaled((tile_w, height)),
                                   (slot * tile_w, 0, tile_w, height))
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(
                    format="yuv420p")
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                container.mux(video_stream.encode(frame))

                # Audio up to the end of this video frame, in 20 ms blocks.
                audio_end = round((index + 1) / fps * SAMPLE_RATE)
                if index == frame_count - 1:
                    audio_end = round(total * SAMPLE_RATE)
                while audio_pos < audio_end:
                    mix = np.zeros(audio_block, np.float32)
                    for audio in audios:
                        audio.mix_into(mix, audio_pos)
                    np.clip(mix, -1.0, 1.0, out=mix)
                    block = av.AudioFrame.from_ndarray(mix.reshape(1, -1), format="flt",
                                                       layout="mono")
                    block.sample_rate = SAMPLE_RATE
                    block.pts = audio_pos
                    block.time_base = Fraction(1, SAMPLE_RATE)
                    container.mux(audio_stream.encode(block))
                    audio_pos += audio_block

                fraction = (index + 1) / frame_count
                if fraction - last_report >= 0.01 or index == frame_count - 1:
                    last_report = fraction
                    if progress is not None:
                        progress(fraction)
                    _write_progress(progress_path, {"state": "running",
                                                    "progress": round(fraction, 4)})
            container.mux(video_stream.encode(None))
            container.mux(audio_stream.encode(None))
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        for item in opened:
            with contextlib.suppress(Exception):
                item.close()
    return ComposeResult(
        path=str(output), duration=round(total, 3), width=width, height=height,
        video_frames=frame_count, size=output.stat().st_size,
    )


async def start_compose_worker(
    directory: str | os.PathLike[str],
    output: str | os.PathLike[str],
    progress_file: str | os.PathLike[str],
    *,
    nice: int = 10,
    width: int = 1280,
    height: int = 720,
    fps: int = 15,
) -> asyncio.subprocess.Process:
    """Spawn the low-priority worker process that builds the combined file.

    Await ``process.wait()`` for the end; the progress file tells how far it got and, once
    ``state`` is ``done``, what it wrote.
    """
    root = _PROJECT_ROOT
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panda.media.recording_compose",
        str(directory), str(output), "--progress-file", str(progress_file),
        "--nice", str(nice), "--width", str(width), "--height", str(height), "--fps", str(fps),
        env=env, stdin=asyncio.subprocess.DEVNULL,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: ``python -m panda.media.recording_compose DIR OUTPUT [...]``."""
    parser = argparse.ArgumentParser(description="Build the combined file of a recording.")
    parser.add_argument("directory")
    parser.add_argument("output")
    parser.add_argument("--progress-file")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=15)
    args = parser.parse_args(argv)
    if args.nice > 0:
        os.nice(args.nice)  # offline work: let live calls have the CPU first
    try:
        compose_recording(args.directory, args.output, width=args.width, height=args.height,
                          fps=args.fps, progress_file=args.progress_file)
    except Exception as exc:
        print(f"compose failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
