"""Recorder tests: frames fed straight into FrameSinks, files checked with PyAV."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

from panda.media.recorder import (
    MANIFEST_NAME,
    RecordingError,
    SessionRecorder,
    load_manifest,
    recover_recording,
)
from panda.media.recording_remux import check_file, opus_packet_samples, remux_seekable
from tests.media.recorder_media import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    EncodedFrame,
    encode_opus,
    encode_vp8,
    make_packet,
    schedule,
)

ROOT = Path(__file__).resolve().parents[2]
RED = (200, 30, 30)
BLUE = (30, 30, 200)
START = 1000.0


def _packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [p for p in container.demux(stream) if p.dts is not None]


def _feed(recorder: SessionRecorder, participant: str, video: tuple[EncodedFrame, ...],
          audio: tuple[EncodedFrame, ...], *, video_offset: float = 0.04, seed: int = 1,
          rtp_bases: tuple[int, int] = (3_000_000_000, 1_234_567)) -> None:
    video_sink = recorder.sink_factory(participant, "video", "camera", "video/VP8")
    audio_sink = recorder.sink_factory(participant, "audio", "microphone", "audio/opus")
    assert video_sink is not None and audio_sink is not None
    sinks = [video_sink, audio_sink]
    plan = schedule([(video, VIDEO_TIME_BASE, video_offset), (audio, AUDIO_TIME_BASE, 0.0)],
                    start=START, seed=seed)
    for d in plan:
        packet = make_packet(d.frame, d.time_base, rtp_bases[d.sink_index])
        sinks[d.sink_index].on_frame(packet, keyframe=d.frame.keyframe, arrival=d.arrival)
    for sink in sinks:
        sink.on_end()


def _decode_all(path: Path) -> tuple[int, float]:
    """Decode every video frame and all audio; return (video frames, audio seconds)."""
    frames = 0
    samples = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            assert frame.width > 0
            frames += 1
    with av.open(str(path)) as container:
        if container.streams.audio:
            for audio_frame in container.decode(audio=0):
                samples += audio_frame.samples
    return frames, samples / 48000


def test_recorded_frames_are_byte_identical_and_aligned(tmp_path: Path) -> None:
    red_video, blue_video = encode_vp8(RED, 4.0), encode_vp8(BLUE, 4.0)
    red_audio, blue_audio = encode_opus(440.0, 4.0), encode_opus(1000.0, 4.0)
    recorder = SessionRecorder(tmp_path, start=START)
    recorder.describe_participant("tutor-1", name="Tina", role="tutor")
    _feed(recorder, "tutor-1", red_video, red_audio, seed=1)
    _feed(recorder, "student-2", blue_video, blue_audio, seed=2, video_offset=0.1,
          rtp_bases=(17, 4_000_000_000))
    result = recorder.stop_blocking()

    assert result.state == "stopped" and result.error is None
    assert [f.name for f in result.files] == ["tutor-1-main-00.webm", "student-2-main-00.webm"]
    for record, video, audio, offset in (
        (result.files[0], red_video, red_audio, 0.04),
        (result.files[1], blue_video, blue_audio, 0.1),
    ):
        path = tmp_path / record.name
        assert record.status == "ready"
        recorded_video = _packets(path, "video")
        assert [bytes(p) for p in recorded_video] == [f.data for f in video]
        assert recorded_video[0].is_keyframe
        recorded_audio = _packets(path, "audio")
        # The file starts with the picture: the sound from before the first keyframe (the
        # `offset` the video arrived later) is left out, the rest is byte-identical.
        skipped = len(audio) - len(recorded_audio)
        assert 0 < skipped <= round(offset / 0.02) + 1
        assert [bytes(p) for p in recorded_audio] == [f.data for f in audio[skipped:]]
        video_start = float(recorded_video[0].pts * recorded_video[0].time_base)
        audio_start = float(recorded_audio[0].pts * recorded_audio[0].time_base)
        assert abs(video_start - audio_start) < 0.03
        # Aligned on arrival: an audio frame sits where it arrived relative to the video.
        assert abs((video_start - audio_start) - (offset - skipped * 0.02)) < 0.015
        frames, audio_seconds = _decode_all(path)
        assert frames == len(video)
        check = check_file(path)
        video_check, audio_check = check.streams
        assert abs((video_check.end - video_check.start) - len(video) / 30) < 0.05
        assert abs(audio_seconds - (4.0 - skipped * 0.02)) < 0.03
        # The recorded audio and video durations agree within 100 ms.
        assert abs((video_check.end - video_check.start) - (audio_check.end - audio_check.start)
                   ) < 0.1
        assert abs((video_check.end - audio_check.end) - offset) < 0.03
        assert abs(record.duration - check.duration) < 0.002
        assert record.tracks[0]["frames"] == len(video)
    assert 3.9 < result.duration < 4.3
    manifest = load_manifest(tmp_path)
    assert manifest is not None and manifest["state"] == "stopped"
    assert manifest["participants"]["tutor-1"] == {"name": "Tina", "role": "tutor"}


def test_video_starts_on_keyframe(tmp_path: Path) -> None:
    video = encode_vp8(RED, 3.0, gop=30)
    audio = encode_opus(440.0, 3.0)
    keyframes = [i for i, f in enumerate(video) if f.keyframe]
    assert len(keyframes) >= 2
    recorder = SessionRecorder(tmp_path, start=START)
    # The recording joins mid-GOP: the frames before the next keyframe cannot be decoded.
    late = video[5:]
    _feed(recorder, "tutor", late, audio[8:], video_offset=5 / 30)
    result = recorder.stop_blocking()
    recorded = _packets(tmp_path / result.files[0].name, "video")
    assert recorded[0].is_keyframe
    assert [bytes(p) for p in recorded] == [f.data for f in video[keyframes[1]:]]
    frames, _ = _decode_all(tmp_path / result.files[0].name)
    assert frames == len(video) - keyframes[1]


def test_timestamp_jumps_and_backwards_steps_keep_time_monotonic(tmp_path: Path) -> None:
    video = encode_vp8(RED, 3.0)
    recorder = SessionRecorder(tmp_path, start=START)
    sink = recorder.sink_factory("tutor", "video", "camera", "video/VP8")
    assert sink is not None
    for index, frame in enumerate(video):
        pts = 90_000 + frame.pts
        if index >= 30:
            pts += 50 * 90_000  # the sender's clock jumps 50 s ahead
        if index >= 60:
            pts -= 80 * 90_000  # then 30 s behind where it started
        packet = make_packet(frame, VIDEO_TIME_BASE, 0)
        packet.pts = packet.dts = pts
        sink.on_frame(packet, keyframe=frame.keyframe, arrival=START + frame.time)
    sink.on_end()
    result = recorder.stop_blocking()
    recorded = _packets(tmp_path / result.files[0].name, "video")
    times = [float(p.pts * p.time_base) for p in recorded]
    assert len(times) == len(video)
    assert all(b > a for a, b in itertools.pairwise(times))
    # Re-anchored on arrival: the file still spans the three seconds it was fed over.
    assert abs(times[-1] - times[0] - (len(video) - 1) / 30) < 0.05


def test_stop_remuxes_into_seekable_file(tmp_path: Path) -> None:
    live_dir, final_dir = tmp_path / "live", tmp_path / "final"
    for directory, remux in ((live_dir, False), (final_dir, True)):
        recorder = SessionRecorder(directory, start=START, remux_on_stop=remux)
        _feed(recorder, "tutor", encode_vp8(RED, 4.0, gop=30), encode_opus(440.0, 4.0))
        result = recorder.stop_blocking()
    live_file = live_dir / result.files[0].name
    final_file = final_dir / result.files[0].name
    with av.open(str(live_file)) as container:
        assert container.duration is None  # written live: no duration, no cues
    with av.open(str(final_file)) as container:
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - result.files[0].duration) < 0.05
        stream = container.streams.video[0]
        assert len(stream.index_entries) > 0  # cues were read: the file is seekable
        container.seek(2_000_000)
        packet = next(p for p in container.demux(stream) if p.dts is not None)
        assert packet.is_keyframe and 0.9 < float(packet.pts * packet.time_base) <= 2.1
    # Remuxing changed no frame.
    assert [bytes(p) for p in _packets(live_file, "video")] == [
        bytes(p) for p in _packets(final_file, "video")]
    assert [bytes(p) for p in _packets(live_file, "audio")] == [
        bytes(p) for p in _packets(final_file, "audio")]


def test_late_video_starts_new_segment_without_losing_audio(tmp_path: Path) -> None:
    audio = encode_opus(440.0, 6.5)
    video = encode_vp8(RED, 2.0)
    recorder = SessionRecorder(tmp_path, start=START)
    audio_sink = recorder.sink_factory("tutor", "audio", "microphone", "audio/opus")
    assert audio_sink is not None
    video_sink = None
    video_iter = iter(video)
    next_video = next(video_iter, None)
    for frame in audio:
        if frame.time >= 4.0 and video_sink is None:
            video_sink = recorder.sink_factory("tutor", "video", "camera", "video/VP8")
        while video_sink is not None and next_video is not None and (
                4.0 + next_video.time <= frame.time):
            video_sink.on_frame(make_packet(next_video, VIDEO_TIME_BASE, 0),
                                keyframe=next_video.keyframe, arrival=START + 4.0 + next_video.time)
            next_video = next(video_iter, None)
        audio_sink.on_frame(make_packet(frame, AUDIO_TIME_BASE, 99), keyframe=True,
                            arrival=START + frame.time)
    result = recorder.stop_blocking()
    names = [f.name for f in result.files]
    assert names == ["tutor-main-00.webm", "tutor-main-01.webm"]
    first, second = result.files
    assert [t["kind"] for t in first.tracks] == ["audio"]
    assert [t["kind"] for t in second.tracks] == ["video", "audio"]
    assert abs(second.start_offset - 4.0) < 0.05
    recorded_audio = _packets(tmp_path / first.name, "audio") + _packets(
        tmp_path / second.name, "audio")
    assert [bytes(p) for p in recorded_audio] == [f.data for f in audio]
    assert len(_packets(tmp_path / second.name, "video")) == len(video)


def test_screen_share_gets_its_own_file_per_share(tmp_path: Path) -> None:
    screen = encode_vp8((30, 200, 30), 1.0, size=(640, 360))
    recorder = SessionRecorder(tmp_path, start=START)
    for share, offset in ((0, 0.0), (1, 2.0)):
        sink = recorder.sink_factory("tutor", "video", "screen", "video/VP8")
        assert sink is not None
        for frame in screen:
            sink.on_frame(make_packet(frame, VIDEO_TIME_BASE, 10 * share),
                          keyframe=frame.keyframe, arrival=START + offset + frame.time)
        sink.on_end()
    result = recorder.stop_blocking()
    assert [f.name for f in result.files] == ["tutor-screen-00.webm", "tutor-screen-01.webm"]
    assert [round(f.start_offset, 1) for f in result.files] == [0.0, 2.0]
    with av.open(str(tmp_path / result.files[0].name)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (640, 360)


def test_republished_camera_continues_in_same_file(tmp_path: Path) -> None:
    video = encode_vp8(RED, 1.0)
    audio = encode_opus(440.0, 3.0)
    recorder = SessionRecorder(tmp_path, start=START)
    audio_sink = recorder.sink_factory("tutor", "audio", "microphone", "audio/opus")
    cameras = [recorder.sink_factory("tutor", "video", "camera", "video/VP8") for _ in range(2)]
    assert audio_sink is not None and all(cameras)
    events: list[tuple[float, int, EncodedFrame]] = [(f.time, 2, f) for f in audio]
    events += [(0.02 + f.time, 0, f) for f in video] + [(1.5 + f.time, 1, f) for f in video]
    events.sort(key=lambda e: (e[0], e[1]))
    ended = False
    for at, which, frame in events:
        if which == 1 and not ended:
            cameras[0].on_end()  # type: ignore[union-attr]
            ended = True
        sink = audio_sink if which == 2 else cameras[which]
        assert sink is not None
        time_base = AUDIO_TIME_BASE if which == 2 else VIDEO_TIME_BASE
        sink.on_frame(make_packet(frame, time_base, 1000 * which), keyframe=frame.keyframe,
                      arrival=START + at)
    result = recorder.stop_blocking()
    assert [f.name for f in result.files] == ["tutor-main-00.webm"]
    recorded = _packets(tmp_path / result.files[0].name, "video")
    assert [bytes(p) for p in recorded] == [f.data for f in video] * 2
    times = [float(p.pts * p.time_base) for p in recorded]
    assert all(b > a for a, b in itertools.pairwise(times))


def test_sink_factory_and_sinks_after_stop(tmp_path: Path) -> None:
    recorder = SessionRecorder(tmp_path, start=START)
    assert recorder.sink_factory("tutor", "video", "camera", "video/AV1") is None
    assert recorder.sink_factory("tutor", "audio", "microphone", "audio/PCMU") is None
    sink = recorder.sink_factory("tutor", "audio", "microphone", "audio/opus")
    assert sink is not None
    result = recorder.stop_blocking()
    assert result.files == [] and result.state == "stopped"
    frame = encode_opus(440.0, 0.1)[0]
    sink.on_frame(make_packet(frame, AUDIO_TIME_BASE, 0), keyframe=True, arrival=START)
    sink.on_end()
    assert recorder.sink_factory("tutor", "audio", "microphone", "audio/opus") is None
    assert recorder.stop_blocking() is result
    assert not list(tmp_path.glob("*.webm"))


def test_opus_packet_samples() -> None:
    assert opus_packet_samples(encode_opus(440.0, 0.1)[0].data) == 960
    assert opus_packet_samples(bytes([(19 << 3) | 0])) == 960  # CELT 20 ms, one frame
    assert opus_packet_samples(bytes([(16 << 3) | 1])) == 240  # CELT 2.5 ms, two frames
    assert opus_packet_samples(bytes([(1 << 3) | 3, 3])) == 2880  # SILK 20 ms, three frames
    assert opus_packet_samples(b"") == 0


async def test_stop_from_event_loop_and_error_callback_on_loop(tmp_path: Path) -> None:
    errors: list[RecordingError] = []
    recorder = SessionRecorder(tmp_path, start=START, on_error=errors.append)
    _feed(recorder, "tutor", encode_vp8(RED, 1.0), encode_opus(440.0, 1.0))
    result = await recorder.stop()
    assert result.state == "stopped" and errors == []
    assert (tmp_path / MANIFEST_NAME).exists()


def _child(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.media.recorder_media", *args],
        cwd=ROOT, env=env, stdin=stdin, stdout=subprocess.PIPE, text=True,
    )


def test_sigkill_leaves_playable_file_missing_at_most_two_seconds(tmp_path: Path) -> None:
    fed = 4.0
    child = _child("kill", str(tmp_path), str(fed), stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == f"fed {fed}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    manifest = load_manifest(tmp_path)
    assert manifest is not None and manifest["state"] == "recording"
    path = tmp_path / "tutor-main-00.webm"
    check = check_file(path)
    assert check.error is None or check.packets > 0
    assert fed - 2.0 <= check.duration <= fed + 0.1
    frames, _ = _decode_all(path)
    sent = json.loads((tmp_path / "sent-video.json").read_text())
    recorded = _packets(path, "video")
    assert frames == len(recorded) > 0
    assert [hashlib.sha256(bytes(p)).hexdigest() for p in recorded] == sent[: len(recorded)]

    result = recover_recording(tmp_path)
    assert result.state == "interrupted"
    assert [f.status for f in result.files] == ["ready"]
    assert abs(result.files[0].duration - check.duration) < 0.05
    with av.open(str(path)) as container:
        assert container.duration is not None  # now seekable, with its real duration
    assert load_manifest(tmp_path)["state"] == "interrupted"  # type: ignore[index]


def test_write_error_stops_cleanly_and_keeps_what_was_written(tmp_path: Path) -> None:
    limit = 60_000
    child = _child("fsize", str(tmp_path), str(limit))
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["state"] == "failed"
    assert "too large" in report["error"].lower()
    assert len(report["callback_errors"]) == 1
    assert report["accepting"] is False
    path = tmp_path / "tutor-main-00.webm"
    assert 0 < path.stat().st_size <= limit
    check = check_file(path)
    assert check.packets > 0 and check.duration > 0.5
    frames, _ = _decode_all(path)
    assert frames > 0
    assert load_manifest(tmp_path)["error"] == report["error"]  # type: ignore[index]


def test_recover_handles_unlisted_and_leftover_files(tmp_path: Path) -> None:
    recorder = SessionRecorder(tmp_path / "a", start=START, remux_on_stop=False)
    _feed(recorder, "tutor", encode_vp8(RED, 2.0), encode_opus(440.0, 2.0))
    recorder.stop_blocking()
    directory = tmp_path / "a"
    (directory / MANIFEST_NAME).unlink()
    (directory / "tutor-main-00.remux.webm").write_bytes(b"partial")
    (directory / "junk-main-00.webm").write_bytes(b"not a webm")
    result = recover_recording(directory)
    by_name = {f.name: f for f in result.files}
    assert by_name["tutor-main-00.webm"].status == "ready"
    assert abs(by_name["tutor-main-00.webm"].duration - 2.0) < 0.1
    assert by_name["junk-main-00.webm"].status == "closed"  # unreadable: left as it was
    assert not (directory / "tutor-main-00.remux.webm").exists()


def test_remux_refuses_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.webm"
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_mux_stream("vp8", width=16, height=16)
        stream.time_base = Fraction(1, 1000)
        container.start_encoding()
    assert path.stat().st_size > 0
    with pytest.raises((ValueError, av.error.FFmpegError)):
        remux_seekable(path)
    assert path.exists() and not (tmp_path / "x.remux.webm").exists()


def test_no_event_loop_needed_for_callbacks(tmp_path: Path) -> None:
    recorder = SessionRecorder(tmp_path, start=START)
    assert recorder._loop is None
    asyncio.run(asyncio.sleep(0))
    recorder.stop_blocking()


async def test_recorder_asks_for_keyframes_when_it_waits_for_one(tmp_path: Path) -> None:
    video = encode_vp8(RED, 2.0, gop=600)
    recorder = SessionRecorder(tmp_path, start=START)
    asked = asyncio.Event()
    calls: list[str] = []
    old = recorder.sink_factory("tutor", "video", "camera", "video/VP8")
    new = recorder.sink_factory("tutor", "video", "camera", "video/VP8")
    assert old is not None and new is not None

    def ask() -> None:
        calls.append("new")
        asked.set()

    new.request_keyframe = ask
    for frame in video[:30]:
        old.on_frame(make_packet(frame, VIDEO_TIME_BASE, 0), keyframe=frame.keyframe,
                     arrival=START + frame.time)
    # A republished camera overlaps the old one: its frames wait for the stream to be free
    # and the recorder asks its publisher for a keyframe to start on.
    new.on_frame(make_packet(video[0], VIDEO_TIME_BASE, 0), keyframe=True, arrival=START + 1.0)
    old.on_end()
    await asyncio.wait_for(asked.wait(), 10)
    for frame in video[:30]:
        new.on_frame(make_packet(frame, VIDEO_TIME_BASE, 0), keyframe=frame.keyframe,
                     arrival=START + 1.1 + frame.time)
    new.on_end()
    result = await recorder.stop()
    assert calls and result.files[0].tracks[0]["frames"] == 60


def test_audio_long_before_the_first_keyframe_stays_in_one_file(tmp_path: Path) -> None:
    # In a real call the sound flows at once and the picture waits for a keyframe.
    video = encode_vp8(RED, 3.0)
    audio = encode_opus(440.0, 3.4)
    recorder = SessionRecorder(tmp_path, start=START)
    _feed(recorder, "tutor", video, audio, video_offset=0.4, seed=5)
    result = recorder.stop_blocking()
    assert [f.name for f in result.files] == ["tutor-main-00.webm"]
    assert [t["kind"] for t in result.files[0].tracks] == ["video", "audio"]
    path = tmp_path / result.files[0].name
    recorded_video = _packets(path, "video")
    recorded_audio = _packets(path, "audio")
    assert [bytes(p) for p in recorded_video] == [f.data for f in video]
    skipped = len(audio) - len(recorded_audio)
    assert 18 <= skipped <= 21  # the 0.4 s before the picture
    assert [bytes(p) for p in recorded_audio] == [f.data for f in audio[skipped:]]
    check = check_file(path)
    assert abs(check.streams[0].start - check.streams[1].start) < 0.03
    assert abs(check.streams[0].end - check.streams[1].end) < 0.1
