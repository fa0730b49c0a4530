"""Session recording without transcoding.

A :class:`SessionRecorder` hands out one :class:`RecorderSink` per published track (the relay's
sink factory interface) and writes the encoded frames it is given into WebM (VP8/Opus) or
Matroska (H.264) files, one file per participant and source group ("main" = camera +
microphone, "screen" = screen share), through a writer thread with a bounded queue.

Files are written live (``live=1``, short clusters, flushed after every packet) so a killed
process leaves playable files; :meth:`SessionRecorder.stop` then remuxes each one into a
seekable file (cues and duration) without re-encoding, and :func:`recover_recording` does the
same for a directory left behind by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from panda.media.recording_bitstream import h264_size, vp8_size
from panda.media.recording_remux import FileCheck, opus_packet_samples, remux_seekable

__all__ = [
    "JUMP_THRESHOLD",
    "MANIFEST_NAME",
    "RecordedFile",
    "RecorderSink",
    "RecordingError",
    "RecordingResult",
    "SessionRecorder",
    "load_manifest",
    "recover_recording",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# A track whose RTP-derived time drifts this far (seconds) from its arrival time is re-anchored:
# the sender restarted, its timestamps jumped, or they went backwards.
JUMP_THRESHOLD = 1.0
# How long (seconds of arrival time) a group waits for all its tracks' first usable frames
# before it writes its file header with the tracks it has.
HEADER_GRACE = 3.0
# At the start of a participant's first file, audio may begin this much before the picture.
AUDIO_LEAD = 0.02
# Most packets kept in memory for a group whose header is not written yet.
PENDING_LIMIT = 600
# Live-writing options: short clusters flushed as soon as they are written, no seeking back.
LIVE_OPTIONS = {
    "live": "1",
    "cluster_time_limit": "1000",
    "flush_packets": "1",
    # Interleaving must not hold packets back for long when one stream goes quiet.
    "max_interleave_delta": "500000",
}
_MS = Fraction(1, 1000)
# Names the recorder gives its files (anything else in the directory is not a track file).
_FILE_NAME = re.compile(
    r"^(?P<participant>[A-Za-z0-9_-]+)-(?P<group>main|screen)-(?P<segment>\d{2,})\.(webm|mkv)$")
_VIDEO_CODECS = {"video/vp8": "vp8", "video/h264": "h264"}
_AUDIO_CODECS = {"audio/opus": "opus"}


class RecordingError(Exception):
    """A recording stopped because a file could not be written (disk full, I/O error, ...)."""


@dataclass
class RecordedFile:
    """One file of a recording: a participant's source group over one continuous stretch."""

    name: str
    participant_id: str
    group: str  # "main" (camera + microphone) or "screen"
    segment: int
    start_offset: float  # seconds from the recording's start to this file's time 0
    tracks: list[dict[str, Any]] = field(default_factory=list)  # kind, source, codec, frames
    status: str = "open"  # open | closed | ready | damaged
    duration: float | None = None
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form stored in the manifest."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordedFile:
        """Inverse of :meth:`to_json`, tolerant of missing optional keys."""
        return cls(
            name=str(data["name"]),
            participant_id=str(data["participant_id"]),
            group=str(data.get("group", "main")),
            segment=int(data.get("segment", 0)),
            start_offset=float(data.get("start_offset", 0.0)),
            tracks=list(data.get("tracks", [])),
            status=str(data.get("status", "open")),
            duration=None if data.get("duration") is None else float(data["duration"]),
            size=int(data.get("size", 0)),
        )


@dataclass
class RecordingResult:
    """What a stopped (or recovered) recording holds."""

    directory: Path
    state: str  # "stopped" | "failed" | "interrupted"
    files: list[RecordedFile]
    duration: float  # seconds from the recording's start to the end of its last file
    size: int  # bytes of all files
    error: str | None = None
    dropped_frames: int = 0
    participants: dict[str, dict[str, str]] = field(default_factory=dict)


def _safe_name(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", value).strip("_")
    return (cleaned or "p")[:40]


@dataclass
class _Frame:
    track_id: int
    data: bytes
    pts: int
    time_base: Fraction
    keyframe: bool
    arrival: float


@dataclass
class _Track:
    id: int
    participant_id: str
    kind: str
    source: str
    codec: str  # ffmpeg codec name
    group: str
    ended: bool = False
    base_pts: int | None = None
    base_time: float = 0.0  # recording time of base_pts
    last_ms: int = -1  # last timestamp written, in ms of its file
    last_time: float = -1.0  # last recording time assigned
    waiting_keyframe: bool = True
    frames: int = 0  # frames written in the current file
    size: tuple[int, int] | None = None
    re_anchors: int = 0

    def recording_time(self, frame: _Frame, arrival_time: float) -> float:
        """Recording time (seconds) of a frame: RTP-exact within a track, anchored on arrival."""
        if self.base_pts is None:
            self.base_pts, self.base_time = frame.pts, arrival_time
        value = self.base_time + float((frame.pts - self.base_pts) * frame.time_base)
        if abs(value - arrival_time) > JUMP_THRESHOLD:
            # Timestamps jumped (sender restart, wrap, clock trouble): trust arrival from here on.
            self.base_pts, self.base_time = frame.pts, arrival_time
            self.re_anchors += 1
            value = arrival_time
        if value <= self.last_time:
            value = self.last_time + 0.001
        self.last_time = value
        return value


@dataclass
class _OpenFile:
    record: RecordedFile
    container: Any  # av.container.OutputContainer
    streams: dict[int, Any]  # track id -> stream
    slots: list[tuple[str, str, Any, int | None]]  # (kind, codec, stream, track id or None)
    origin: float  # recording time of file time 0


@dataclass
class _Group:
    participant_id: str
    name: str
    segments: int = 0
    pending: list[tuple[_Frame, float]] = field(default_factory=list)
    file: _OpenFile | None = None


class RecorderSink:
    """FrameSink for one published track; ``on_frame`` only copies and enqueues."""

    def __init__(self, recorder: SessionRecorder, track_id: int, kind: str) -> None:
        self._recorder = recorder
        self._track_id = track_id
        self.kind = kind
        self._ended = False
        # Set when frames had to be dropped (queue full) and the video needs a fresh keyframe.
        self.wants_keyframe = kind == "video"
        # The relay may set this to its "ask the publisher for a keyframe" function: the
        # recorder calls it (on the event loop) whenever it waits for a keyframe mid-track.
        self.request_keyframe: Callable[[], None] | None = None

    def _ask_keyframe(self) -> None:
        requester = self.request_keyframe
        if requester is not None and not self._ended:
            try:
                requester()
            except Exception:
                log.exception("keyframe request failed")

    def on_frame(self, packet: av.Packet[Any], *, keyframe: bool, arrival: float) -> None:
        """Take one encoded frame (event loop thread; never blocks)."""
        if self._ended or not self._recorder.accepting:
            return
        if self.kind == "video" and self.wants_keyframe:
            if not keyframe:
                return
            self.wants_keyframe = False
        pts = packet.pts
        time_base = packet.time_base
        if pts is None or time_base is None:
            return
        frame = _Frame(self._track_id, bytes(packet), int(pts), Fraction(time_base), keyframe,
                       arrival)
        if not self._recorder._enqueue(("frame", frame)):
            self._recorder._dropped += 1
            if self.kind == "video" and not self.wants_keyframe:
                self.wants_keyframe = True
                self._ask_keyframe()

    def on_end(self) -> None:
        """The track was unpublished or the room closed."""
        if self._ended:
            return
        self._ended = True
        self._recorder._enqueue(("end", self._track_id), control=True)


ErrorCallback = Callable[[RecordingError], None]


class SessionRecorder:
    """Records one session: every published track into per-participant WebM files.

    Use :meth:`sink_factory` as the room's sink factory. Stop with :meth:`stop` (async) or
    :meth:`stop_blocking`; both finalise and remux the files into seekable ones.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        on_error: ErrorCallback | None = None,
        start: float | None = None,
        queue_size: int = 4000,
        remux_on_stop: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic() if start is None else start
        self.started_at = time.time()
        self._on_error = on_error
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._remux_on_stop = remux_on_stop
        # Unbounded for control messages; frames are dropped past queue_size (see _enqueue).
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._queue_size = queue_size
        # Re-entrant: stop_blocking holds it while writing the manifest, which takes it too.
        self._lock = threading.RLock()
        self._next_track_id = 0
        self._tracks: dict[int, _Track] = {}
        self._sinks: dict[int, RecorderSink] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._files: list[RecordedFile] = []
        self._participants: dict[str, dict[str, str]] = {}
        self._dropped = 0
        self.state = "recording"  # recording | stopping | stopped | failed
        self.error: str | None = None
        self._result: RecordingResult | None = None
        self._write_manifest()
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    # ----- event loop side -------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """True while frames are recorded."""
        return self.state == "recording"

    def describe_participant(self, participant_id: str, *, name: str = "", role: str = "") -> None:
        """Remember a participant's display name and role (used by the combined file)."""
        with self._lock:
            self._participants[participant_id] = {"name": name, "role": role}

    def sink_factory(
        self, participant_id: str, kind: str, source: str, codec_mime: str
    ) -> RecorderSink | None:
        """Room sink factory: a sink for a recordable track, None for anything else."""
        if not self.accepting:
            return None
        mime = codec_mime.lower()
        if kind == "video":
            codec = _VIDEO_CODECS.get(mime)
        elif kind == "audio":
            codec = _AUDIO_CODECS.get(mime)
        else:
            codec = None
        if codec is None:
            log.warning("not recording %s track with codec %s", kind, codec_mime)
            return None
        with self._lock:
            track_id = self._next_track_id
            self._next_track_id += 1
        group = "screen" if source == "screen" else "main"
        track = _Track(track_id, participant_id, kind, source, codec, group)
        with self._lock:
            self._participants.setdefault(participant_id, {"name": "", "role": ""})
        self._enqueue(("track", track), control=True)
        sink = RecorderSink(self, track_id, kind)
        self._sinks[track_id] = sink
        return sink

    def _enqueue(self, item: tuple[str, Any], *, control: bool = False) -> bool:
        # Frames are dropped when the writer lags (slow disk); control messages never are.
        if not control and self._queue.qsize() >= self._queue_size:
            return False
        self._queue.put_nowait(item)
        return True

    async def stop(self) -> RecordingResult:
        """Stop recording, finalise and remux every file (off the event loop)."""
        return await asyncio.to_thread(self.stop_blocking)

    def stop_blocking(self) -> RecordingResult:
        """Blocking form of :meth:`stop`; safe to call more than once."""
        with self._lock:
            if self.state == "recording":
                self.state = "stopping"
        self._thread_stop()
        with self._lock:
            if self._result is not None:
                return self._result
            if self._remux_on_stop:
                for record in self._files:
                    self._finish_file(record)
            final_state = "failed" if self.error else "stopped"
            self.state = final_state
            try:
                self._write_manifest()
            except OSError as exc:  # the disk that failed the recording may fail this too
                log.warning("manifest of %s not written: %s", self.directory, exc)
            self._result = self._make_result(final_state)
            return self._result

    def _thread_stop(self) -> None:
        if self._thread.is_alive():
            self._enqueue(("stop", None), control=True)
            self._thread.join()

    def _finish_file(self, record: RecordedFile) -> None:
        path = self.directory / record.name
        if not path.exists():
            record.status = "damaged"
            return
        try:
            check = remux_seekable(path)
        except Exception as exc:  # remux is a nicety: the live file stays playable
            log.warning("remux of %s failed: %s", path, exc)
            check = None
        _apply_check(record, path, check)

    def _make_result(self, state: str) -> RecordingResult:
        files = list(self._files)
        return RecordingResult(
            directory=self.directory,
            state=state,
            files=files,
            duration=_recording_duration(files),
            size=sum(f.size for f in files),
            error=self.error,
            dropped_frames=self._dropped,
            participants=dict(self._participants),
        )

    # ----- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "stop":
                break
            if self.error is not None:
                continue  # failed: drain and discard until stopped
            try:
                if kind == "frame":
                    self._handle_frame(payload)
                elif kind == "track":
                    self._tracks[payload.id] = payload
                elif kind == "end":
                    self._handle_end(payload)
            except Exception as exc:
                self._fail(exc)
        if self.error is None:
            try:
                for group in self._groups.values():
                    self._flush_pending(group, force=True)
                    self._close_group_file(group)
            except Exception as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.error("recording in %s failed: %s", self.directory, message)
        self.error = message
        with self._lock:
            if self.state == "recording":
                self.state = "failed"
        for group in self._groups.values():
            group.pending.clear()
            with contextlib.suppress(Exception):
                self._close_group_file(group)
        with contextlib.suppress(Exception):
            self._write_manifest()
        callback = self._on_error
        if callback is not None:
            error = RecordingError(message)
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(callback, error)
            else:
                callback(error)

    def _group_for(self, track: _Track) -> _Group:
        key = (track.participant_id, track.group)
        group = self._groups.get(key)
        if group is None:
            name = f"{_safe_name(track.participant_id)}-{track.group}"
            group = _Group(track.participant_id, name)
            self._groups[key] = group
        return group

    def _handle_frame(self, frame: _Frame) -> None:
        track = self._tracks.get(frame.track_id)
        if track is None or track.ended:
            return
        if track.kind == "video":
            if track.waiting_keyframe:
                if not frame.keyframe:
                    return
                track.waiting_keyframe = False
            if frame.keyframe:
                size = vp8_size(frame.data) if track.codec == "vp8" else h264_size(frame.data)
                track.size = size or track.size
        arrival_time = max(0.0, frame.arrival - self.start)
        rec_time = track.recording_time(frame, arrival_time)
        self._place(self._group_for(track), track, frame, rec_time)

    def _place(self, group: _Group, track: _Track, frame: _Frame, rec_time: float) -> None:
        """Write a frame into its group's open file, or keep it until the file can be opened."""
        open_file = group.file
        if open_file is not None and track.id not in open_file.streams:
            if not any(k == track.kind and c == track.codec for k, c, _, _ in open_file.slots):
                # A new kind of track in a file whose header is written: start a new segment.
                self._close_group_file(group)
            elif self._free_slot(open_file, track, frame) is None:
                # Another live track of this kind holds the stream (a republish overlapping the
                # old track): drop until it ends, then take over on a keyframe.
                self._need_keyframe(track)
                return
        if group.file is None:
            if track.kind == "video" and not frame.keyframe and not any(
                f.track_id == track.id for f, _ in group.pending
            ):
                self._need_keyframe(track)
                return
            group.pending.append((frame, rec_time))
            self._flush_pending(group, force=len(group.pending) >= PENDING_LIMIT)
            return
        self._write(group.file, track, frame, rec_time)

    def _need_keyframe(self, track: _Track, *, again: bool = False) -> None:
        """Drop this video track's frames until a keyframe, and ask the publisher for one."""
        if track.kind != "video" or (track.waiting_keyframe and not again):
            return
        track.waiting_keyframe = True
        sink = self._sinks.get(track.id)
        if sink is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(sink._ask_keyframe)

    def _free_slot(self, open_file: _OpenFile, track: _Track, frame: _Frame) -> Any | None:
        if track.kind == "video" and not frame.keyframe:
            return None
        for index, (kind, codec, stream, owner) in enumerate(open_file.slots):
            if kind == track.kind and codec == track.codec and (
                owner is None or self._tracks[owner].ended
            ):
                if owner is not None:
                    open_file.streams.pop(owner, None)
                    # The stream's timestamps must keep increasing across the hand-over.
                    track.last_ms = max(track.last_ms, self._tracks[owner].last_ms)
                open_file.slots[index] = (kind, codec, stream, track.id)
                open_file.streams[track.id] = stream
                return stream
        return None

    def _flush_pending(self, group: _Group, *, force: bool) -> None:
        if group.file is not None or not group.pending:
            return
        live = [
            t for t in self._tracks.values()
            if t.participant_id == group.participant_id
            and self._group_for(t) is group and not t.ended
        ]
        have = {f.track_id for f, _ in group.pending}
        first_time = group.pending[0][1]
        last_time = group.pending[-1][1]
        ready = all(t.id in have for t in live)
        if not (force or ready or last_time - first_time >= HEADER_GRACE):
            return
        pending, group.pending = group.pending, []
        video_start = min(
            (t for f, t in pending if self._tracks[f.track_id].kind == "video"), default=None)
        if video_start is not None and group.segments == 0:
            # The participant's first file starts with the picture: sound from before the
            # first keyframe (the wait for it, typically a few hundred ms) is left out, so
            # audio and video begin and end together.
            pending = [(f, t) for f, t in pending
                       if t >= video_start - AUDIO_LEAD or self._tracks[f.track_id].kind == "video"]
        # Every track that delivered gets its stream, even if its early frames were left out.
        tracks = [self._tracks[i] for i in sorted(have)]
        open_file = self._open_file(group, tracks, origin=min(t for _, t in pending))
        for frame, rec_time in pending:
            track = self._tracks[frame.track_id]
            if track.id in open_file.streams:
                self._write(open_file, track, frame, rec_time)
            elif not (track.kind == "video" and track.waiting_keyframe and not frame.keyframe):
                track.waiting_keyframe = False
                self._place(group, track, frame, rec_time)

    def _open_file(self, group: _Group, tracks: list[_Track], *, origin: float) -> _OpenFile:
        has_h264 = any(t.codec == "h264" for t in tracks)
        extension, fmt = (".mkv", "matroska") if has_h264 else (".webm", "webm")
        segment = group.segments
        group.segments += 1
        name = f"{group.name}-{segment:02d}{extension}"
        container = av.open(str(self.directory / name), "w", format=fmt,
                            options=dict(LIVE_OPTIONS))
        streams: dict[int, Any] = {}
        slots: list[tuple[str, str, Any, int | None]] = []
        # Video first, then audio: a stable layout that players and the composer expect.
        for track in sorted(tracks, key=lambda t: (t.kind != "video", t.id)):
            if any(s[0] == track.kind for s in slots):
                continue  # one stream per kind; a second one waits for a new segment
            if track.kind == "video":
                # The header wants a size; decoders take the real one from the bitstream.
                width, height = track.size or (640, 480)
                stream = container.add_mux_stream(track.codec, width=width, height=height)
            else:
                # An encoder context (opened, never fed) gives the Opus header players need.
                stream = container.add_stream("libopus", rate=48000)
            stream.time_base = _MS
            track.last_ms = -1
            track.frames = 0
            streams[track.id] = stream
            slots.append((track.kind, track.codec, stream, track.id))
        record = RecordedFile(
            name=name,
            participant_id=group.participant_id,
            group=group.name.rsplit("-", 1)[-1],
            segment=segment,
            start_offset=round(origin, 3),
            tracks=[
                {"kind": t.kind, "source": t.source, "codec": t.codec, "frames": 0}
                for t in (self._tracks[owner] for _, _, _, owner in slots if owner is not None)
            ],
        )
        group.file = _OpenFile(record, container, streams, slots, origin)
        self._files.append(record)
        self._write_manifest()
        return group.file

    def _write(self, open_file: _OpenFile, track: _Track, frame: _Frame, rec_time: float) -> None:
        stream = open_file.streams.get(track.id)
        if stream is None:
            return
        pts_ms = max(0, round((rec_time - open_file.origin) * 1000))
        if pts_ms <= track.last_ms:
            pts_ms = track.last_ms + 1
        packet = av.Packet(frame.data)
        packet.stream = stream
        packet.time_base = _MS
        packet.pts = packet.dts = pts_ms
        packet.is_keyframe = frame.keyframe or track.kind == "audio"
        if track.codec == "opus":
            packet.duration = opus_packet_samples(frame.data) // 48
        open_file.container.mux(packet)
        track.last_ms = pts_ms
        track.frames += 1
        for info in open_file.record.tracks:
            if info["kind"] == track.kind:
                info["frames"] += 1
                break

    def _handle_end(self, track_id: int) -> None:
        track = self._tracks.get(track_id)
        if track is None:
            return
        track.ended = True
        group = self._groups.get((track.participant_id, track.group))
        if group is None:
            return
        siblings = [
            t for t in self._tracks.values()
            if t.participant_id == track.participant_id and t.group == track.group
        ]
        for sibling in siblings:
            if sibling.waiting_keyframe and not sibling.ended and sibling.kind == track.kind:
                self._need_keyframe(sibling, again=True)  # it may take over the stream now
        if all(t.ended for t in siblings):
            self._flush_pending(group, force=True)
            self._close_group_file(group)
        else:
            self._flush_pending(group, force=False)

    def _close_group_file(self, group: _Group) -> None:
        open_file, group.file = group.file, None
        if open_file is None:
            return
        record = open_file.record
        try:
            open_file.container.close()
        finally:
            path = self.directory / record.name
            record.status = "closed"
            with contextlib.suppress(OSError):
                record.size = path.stat().st_size
            with contextlib.suppress(Exception):
                self._write_manifest()

    # ----- manifest ---------------------------------------------------------------------------

    def _write_manifest(self) -> None:
        # The event loop adds participants while the writer thread saves: copy under the lock.
        with self._lock:
            participants = {pid: dict(info) for pid, info in self._participants.items()}
            files = [f.to_json() for f in self._files]
        data = {
            "version": 1,
            "started_at": self.started_at,
            "state": self.state,
            "error": self.error,
            "participants": participants,
            "files": files,
        }
        _write_json_atomic(self.directory / MANIFEST_NAME, data)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _recording_duration(files: list[RecordedFile]) -> float:
    return round(max((f.start_offset + (f.duration or 0.0) for f in files), default=0.0), 3)


def _apply_check(record: RecordedFile, path: Path, check: FileCheck | None) -> None:
    if check is None:
        record.status = "closed"
        with contextlib.suppress(OSError):
            record.size = path.stat().st_size
        return
    record.duration = round(check.duration, 3)
    record.size = check.size
    record.status = "ready" if check.packets else "damaged"


def load_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest a recording keeps in its directory, or None when missing or unreadable."""
    try:
        data = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recover_recording(directory: str | os.PathLike[str]) -> RecordingResult:
    """Check and remux the files a crashed recording left; report what they really hold.

    Files the manifest does not list (a crash between opening a file and writing the
    manifest) are picked up too. Files with no readable packet are marked ``damaged``.
    """
    directory = Path(directory)
    manifest = load_manifest(directory) or {}
    for leftover in directory.glob("*.remux.*"):
        leftover.unlink(missing_ok=True)
    records = [RecordedFile.from_json(f) for f in manifest.get("files", [])]
    listed = {r.name for r in records}
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.match(path.name)
        if match is not None and path.name not in listed:
            records.append(RecordedFile(
                name=path.name,
                participant_id=match["participant"],
                group=match["group"],
                segment=int(match["segment"]),
                start_offset=0.0,
            ))
    for record in records:
        path = directory / record.name
        if not path.exists():
            record.status = "damaged"
            record.duration = 0.0
            continue
        try:
            check = remux_seekable(path)
        except Exception as exc:
            log.warning("recovery remux of %s failed: %s", path, exc)
            check = None
        _apply_check(record, path, check)
    error = manifest.get("error")
    state = "failed" if error else "interrupted"
    if manifest.get("state") == "stopped":
        state = "stopped"
    result = RecordingResult(
        directory=directory,
        state=state,
        files=records,
        duration=_recording_duration(records),
        size=sum(r.size for r in records),
        error=error,
        participants=dict(manifest.get("participants", {})),
    )
    manifest_out = dict(manifest)
    manifest_out.update({"state": state, "files": [r.to_json() for r in records], "version": 1})
    with contextlib.suppress(OSError):
        _write_json_atomic(directory / MANIFEST_NAME, manifest_out)
    return result
