"""A call between aiortc clients through a real Room is recorded through the relay's sinks:
what is recorded is byte-identical to what was sent, with nothing decoded on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av

from panda.media.recorder import SessionRecorder
from panda.media.recording_remux import check_file
from panda.media.room import RoomRegistry
from tests.media.clients import Client, contiguous_in, wait_for
from tests.media.mediagen import EncodedMedia


def _stream_packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [p for p in container.demux(stream) if p.dts is not None]


async def test_call_between_clients_is_recorded_byte_identical(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia, tmp_path: Path
) -> None:
    room = registry.get_or_create("recorded-call")
    tutor = Client("tutor", video=vp8, audio=opus)
    student = Client("student", video=vp8, audio=opus)
    recorder = SessionRecorder(tmp_path)
    try:
        await tutor.join(room)
        await tutor.publish()
        await student.join(room)
        await student.publish()
        room.add_sink_factory(recorder.sink_factory)  # existing tracks get sinks now
        sinks = list(recorder._sinks.values())
        assert len(sinks) == 4
        # The room lets the recorder ask a publisher for a keyframe when it needs one.
        assert all(s.request_keyframe is not None for s in sinks)

        def recorded_enough() -> bool:
            return all(
                len(c.frames_from(other, "video")) >= 60
                for c, other in ((tutor, "student"), (student, "tutor"))
            )

        await wait_for(recorded_enough, limit=30, what="3 s of media both ways")
        room.remove_sink_factory(recorder.sink_factory)
        result = await recorder.stop()
        sent = {
            c.name: {src: c.published[mid].sent for mid, src in c.sources.items()}
            for c in (tutor, student)
        }
    finally:
        await tutor.close()
        await student.close()
    assert result.state == "stopped" and result.error is None
    assert sorted(f.name for f in result.files) == ["student-main-00.webm", "tutor-main-00.webm"]
    for record in result.files:
        path = tmp_path / record.name
        video = _stream_packets(path, "video")
        audio = _stream_packets(path, "audio")
        # Byte-identical runs of what the participant sent, starting on a keyframe.
        assert contiguous_in([bytes(p) for p in video], sent[record.participant_id]["camera"])
        assert contiguous_in([bytes(p) for p in audio], sent[record.participant_id]["microphone"])
        assert video[0].is_keyframe and not bytes(video[0])[0] & 1
        # The frame count matches the recorded time at 30 fps.
        times = [float(p.pts * p.time_base) for p in video]
        assert abs((times[-1] - times[0]) * 30 + 1 - len(video)) <= 2
        with av.open(str(path)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == len(video)
        check = check_file(path)
        video_check, audio_check = check.streams
        # Audio and video start together: audio before the first keyframe is trimmed. At the
        # stop, whatever each pipeline still held is cut off, and on a loaded machine the video
        # side (reassembly) may hold a few frames more than the audio side: 0.5 s covers that.
        assert abs(video_check.start - audio_check.start) < 0.1
        assert abs(video_check.end - audio_check.end) < 0.5
        assert len(video) >= 50
    await asyncio.sleep(0)
