"""H.264 goes into Matroska; sizes are read from the bitstream without decoding."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from panda.media.recorder import SessionRecorder
from panda.media.recording_bitstream import h264_size, vp8_size
from tests.media.recorder_media import VIDEO_TIME_BASE, encode_h264, encode_vp8, make_packet


@pytest.mark.parametrize("size", [(320, 180), (640, 360), (176, 144)])
def test_sizes_from_bitstream(size: tuple[int, int]) -> None:
    h264 = encode_h264((0, 200, 0), 2, size)
    assert h264_size(h264[0].data) == size
    assert h264_size(h264[1].data) is None  # no SPS in a delta frame
    vp8 = encode_vp8((0, 200, 0), 0.1, size=size)
    assert vp8_size(vp8[0].data) == size
    assert vp8_size(vp8[1].data) is None
    assert h264_size(b"") is None and vp8_size(b"\x00") is None


def test_h264_is_recorded_into_matroska(tmp_path: Path) -> None:
    frames = encode_h264((0, 200, 0), 60, (320, 180))
    recorder = SessionRecorder(tmp_path, start=0.0)
    sink = recorder.sink_factory("tutor", "video", "camera", "video/H264")
    assert sink is not None
    for frame in frames:
        sink.on_frame(make_packet(frame, VIDEO_TIME_BASE, 77), keyframe=frame.keyframe,
                      arrival=frame.time)
    sink.on_end()
    result = recorder.stop_blocking()
    assert result.state == "stopped"
    assert [f.name for f in result.files] == ["tutor-main-00.mkv"]
    with av.open(str(tmp_path / "tutor-main-00.mkv")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 180)
        assert container.duration is not None
        decoded = list(container.decode(video=0))
    assert len(decoded) == len(frames)
    assert abs(result.files[0].duration - 2.0) < 0.05
