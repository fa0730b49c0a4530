"""Checking recorded files and remuxing them into seekable WebM/Matroska without re-encoding."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

__all__ = ["FileCheck", "StreamCheck", "check_file", "opus_packet_samples", "remux_seekable"]

log = logging.getLogger(__name__)


@dataclass
class StreamCheck:
    """What one stream of a file holds."""

    kind: str
    codec: str
    packets: int = 0
    start: float | None = None  # seconds
    end: float = 0.0  # seconds, last packet's pts + duration


@dataclass
class FileCheck:
    """The result of reading (and possibly remuxing) a recorded file."""

    size: int
    streams: list[StreamCheck] = field(default_factory=list)
    error: str | None = None  # set when reading stopped early (e.g. a truncated tail)

    @property
    def packets(self) -> int:
        """Packets in all streams."""
        return sum(s.packets for s in self.streams)

    @property
    def duration(self) -> float:
        """Seconds from file time 0 to the end of its last packet."""
        return max((s.end for s in self.streams), default=0.0)


_OPUS_FRAME_MS = (10, 20, 40, 60, 10, 20, 40, 60, 10, 20, 40, 60, 10, 20, 10, 20,
                  2.5, 5, 10, 20, 2.5, 5, 10, 20, 2.5, 5, 10, 20, 2.5, 5, 10, 20)


def opus_packet_samples(data: bytes) -> int:
    """Samples at 48 kHz in one Opus packet (RFC 6716 3.1), 0 when it cannot be told."""
    if not data:
        return 0
    toc = data[0]
    frame_samples = int(_OPUS_FRAME_MS[toc >> 3] * 48)
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(data) >= 2:
        count = data[1] & 0x3F
    else:
        return 0
    return frame_samples * count


def _read(path: Path, output: Any | None) -> FileCheck:
    """Demux every packet of ``path``; mux them into ``output`` when given."""
    check = FileCheck(size=path.stat().st_size)
    with av.open(str(path)) as source:
        mapping: dict[int, Any] = {}
        for stream in source.streams:
            if stream.type not in ("video", "audio"):
                continue
            check.streams.append(StreamCheck(stream.type, stream.codec_context.name))
            if output is not None:
                mapping[stream.index] = output.add_stream_from_template(stream, opaque=True)
        by_index = {
            s.index: c
            for s, c in zip(
                [s for s in source.streams if s.type in ("video", "audio")],
                check.streams,
                strict=True,
            )
        }
        try:
            for packet in source.demux():
                if packet.dts is None or packet.stream.index not in by_index:
                    continue
                info = by_index[packet.stream.index]
                time_base = packet.time_base
                start = float(packet.pts * time_base) if packet.pts is not None else None
                duration = packet.duration or 0
                if not duration and info.kind == "audio" and info.codec == "opus":
                    samples = opus_packet_samples(bytes(packet))
                    duration = round(samples / 48000 / time_base)
                    packet.duration = duration
                if start is not None:
                    if info.start is None:
                        info.start = start
                    info.end = max(info.end, start + float(duration * time_base))
                info.packets += 1
                if output is not None:
                    packet.stream = mapping[packet.stream.index]
                    output.mux(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            # A file cut short by a crash ends in a partial cluster: keep what came before it.
            check.error = f"{type(exc).__name__}: {exc}"
    return check


def check_file(path: str | os.PathLike[str]) -> FileCheck:
    """Read every packet of a recorded file and report its streams and real duration."""
    return _read(Path(path), None)


def remux_seekable(path: str | os.PathLike[str]) -> FileCheck:
    """Rewrite a live-written file in place as a seekable one (cues, duration); no re-encoding.

    Writes to a temporary file beside it and replaces the original only when that succeeded,
    so a failure (full disk) leaves the original untouched. Returns the check of the original.
    """
    path = Path(path)
    fmt = "matroska" if path.suffix == ".mkv" else "webm"
    tmp = path.with_name(f"{path.stem}.remux{path.suffix}")
    try:
        with av.open(str(tmp), "w", format=fmt) as output:
            check = _read(path, output)
            if not check.packets:
                raise ValueError(f"{path.name}: no readable packets")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    check.size = path.stat().st_size
    return check
