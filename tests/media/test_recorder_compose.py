"""The combined file: pictures side by side, screen share in the main area, voices mixed."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from panda.media.recorder import SessionRecorder
from panda.media.recording_compose import (
    ComposeError,
    compose_recording,
    read_progress,
    start_compose_worker,
)
from tests.media.recorder_media import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    encode_opus,
    encode_vp8,
    make_packet,
    schedule,
)

RED = (200, 30, 30)
BLUE = (30, 30, 200)
GREEN = (30, 200, 30)
START = 500.0
W, H = 640, 360


def _record(directory: Path, *, screen: bool = False) -> float:
    recorder = SessionRecorder(directory, start=START)
    recorder.describe_participant("s-2", name="Sam", role="student")
    recorder.describe_participant("t-1", name="Tia", role="tutor")
    # The student appears first, to show the tutor still goes to the left.
    plan = [
        ("s-2", "video", "camera", encode_vp8(BLUE, 4.0), VIDEO_TIME_BASE, 0.0),
        ("s-2", "audio", "microphone", encode_opus(1000.0, 4.0), AUDIO_TIME_BASE, 0.0),
        ("t-1", "video", "camera", encode_vp8(RED, 3.5), VIDEO_TIME_BASE, 0.5),
        ("t-1", "audio", "microphone", encode_opus(440.0, 3.5), AUDIO_TIME_BASE, 0.5),
    ]
    if screen:
        plan.append(("t-1", "video", "screen", encode_vp8(GREEN, 2.0, size=(640, 360)),
                     VIDEO_TIME_BASE, 1.0))
    sinks = [recorder.sink_factory(p, k, s, "video/VP8" if k == "video" else "audio/opus")
             for p, k, s, *_ in plan]
    for d in schedule([(frames, tb, offset) for *_, frames, tb, offset in plan], start=START):
        sink = sinks[d.sink_index]
        assert sink is not None
        sink.on_frame(make_packet(d.frame, d.time_base, 1000 + d.sink_index),
                      keyframe=d.frame.keyframe, arrival=d.arrival)
    for sink in sinks:
        assert sink is not None
        sink.on_end()
    return recorder.stop_blocking().duration


def _frame_at(path: Path, t: float) -> np.ndarray:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= t:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"no frame at {t}")


def _colour(image: np.ndarray, x: int, y: int) -> np.ndarray:
    return image[y - 4:y + 4, x - 4:x + 4].reshape(-1, 3).mean(axis=0)


def _near(colour: np.ndarray, expected: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(colour - np.array(expected)) < 40))


def _audio(path: Path) -> np.ndarray:
    chunks = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def _tone_strength(samples: np.ndarray, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48000)
    band = (freqs > frequency - 15) & (freqs < frequency + 15)
    return float(spectrum[band].max() / spectrum.max())


def test_combined_file_has_both_pictures_and_both_voices(tmp_path: Path) -> None:
    duration = _record(tmp_path / "rec")
    assert 3.9 < duration < 4.2
    seen: list[float] = []
    output = tmp_path / "combined.webm"
    result = compose_recording(tmp_path / "rec", output, width=W, height=H, fps=15,
                               progress=seen.append, progress_file=tmp_path / "progress.json")
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10
    assert read_progress(tmp_path / "progress.json")["state"] == "done"  # type: ignore[index]
    assert abs(result.duration - duration) < 0.01
    with av.open(str(output)) as container:
        assert container.duration is not None  # seekable
        assert abs(container.duration / 1e6 - duration) < 0.15
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (W, H)
    image = _frame_at(output, 2.0)
    assert _near(_colour(image, W // 4, H // 2), RED)  # tutor left
    assert _near(_colour(image, 3 * W // 4, H // 2), BLUE)  # student right
    # Before the tutor's camera starts the left half is empty.
    early = _frame_at(output, 0.1)
    assert not _near(_colour(early, W // 4, H // 2), RED)
    assert _near(_colour(early, 3 * W // 4, H // 2), BLUE)
    samples = _audio(output)
    assert abs(len(samples) / 48000 - duration) < 0.1
    middle = samples[48000:48000 * 3]
    assert _tone_strength(middle, 440.0) > 0.5
    assert _tone_strength(middle, 1000.0) > 0.5
    assert _tone_strength(middle, 700.0) < 0.01  # and nothing where no one spoke
    # Only the student speaks in the first half second.
    first = samples[:int(0.4 * 48000)]
    assert _tone_strength(first, 1000.0) == 1.0
    assert _tone_strength(first, 440.0) < 0.01


def test_screen_share_takes_the_main_area(tmp_path: Path) -> None:
    _record(tmp_path / "rec", screen=True)
    output = tmp_path / "combined.webm"
    compose_recording(tmp_path / "rec", output, width=W, height=H, fps=10)
    image = _frame_at(output, 2.0)
    main_w = W * 3 // 4
    assert _near(_colour(image, main_w // 2, H // 2), GREEN)
    side_x = main_w + (W - main_w) // 2
    # Camera tiles stacked in the side column: tutor above, student below.
    assert _near(_colour(image, side_x, H // 2 - 30), RED)
    assert _near(_colour(image, side_x, H // 2 + 30), BLUE)
    after = _frame_at(output, 3.2)  # the share ended at 3 s: side by side again
    assert _near(_colour(after, W // 4, H // 2), RED)
    assert _near(_colour(after, 3 * W // 4, H // 2), BLUE)


async def test_worker_process_runs_at_low_priority(tmp_path: Path) -> None:
    _record(tmp_path / "rec")
    output = tmp_path / "combined.webm"
    progress = tmp_path / "progress.json"
    process = await start_compose_worker(tmp_path / "rec", output, progress, nice=7,
                                         width=320, height=180, fps=5)
    assert await process.wait() == 0
    state = read_progress(progress)
    assert state is not None and state["state"] == "done" and state["progress"] == 1.0
    assert state["nice"] >= 7
    assert output.exists() and state["result"]["size"] == output.stat().st_size

    failing = await start_compose_worker(tmp_path / "missing", tmp_path / "x.webm",
                                         tmp_path / "p2.json", width=320, height=180)
    assert await failing.wait() == 1
    assert read_progress(tmp_path / "p2.json")["state"] == "failed"  # type: ignore[index]
    assert not (tmp_path / "x.webm").exists()


def test_compose_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ComposeError):
        compose_recording(tmp_path, tmp_path / "out.webm")
    with pytest.raises(ValueError):
        compose_recording(tmp_path, tmp_path / "out.webm", width=641)
