"""Recorder cost per frame: event-loop side (``on_frame``) and writer thread, as JSON.

Feeds pre-encoded 640x360 VP8 (30 fps) + Opus (50 packets/s) for two participants into a
SessionRecorder as fast as it takes them, and reports CPU microseconds per frame for the
caller (the relay's event loop) and for the writer thread, plus the remux time on stop.
Run: python bench/recording.py [seconds]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panda.media.recorder import SessionRecorder
from tests.media.recorder_media import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    encode_opus,
    encode_vp8,
    make_packet,
    schedule,
)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    video = encode_vp8((200, 30, 30), seconds, size=(640, 360))
    audio = encode_opus(440.0, seconds)
    plan = schedule([(video, VIDEO_TIME_BASE, 0.0), (audio, AUDIO_TIME_BASE, 0.0),
                     (video, VIDEO_TIME_BASE, 0.0), (audio, AUDIO_TIME_BASE, 0.0)], start=0.0)
    packets = [(d.sink_index, make_packet(d.frame, d.time_base, 0), d.frame.keyframe, d.arrival)
               for d in plan]
    with tempfile.TemporaryDirectory() as tmp:
        recorder = SessionRecorder(tmp, start=0.0, queue_size=len(packets) + 10)
        sinks = [recorder.sink_factory(p, k, s, c) for p, k, s, c in (
            ("a", "video", "camera", "video/VP8"), ("a", "audio", "microphone", "audio/opus"),
            ("b", "video", "camera", "video/VP8"), ("b", "audio", "microphone", "audio/opus"))]
        assert recorder._thread.ident is not None
        writer_clock = time.pthread_getcpuclockid(recorder._thread.ident)
        writer_before = time.clock_gettime(writer_clock)
        started = time.thread_time()
        for index, packet, keyframe, arrival in packets:
            sink = sinks[index]
            assert sink is not None
            sink.on_frame(packet, keyframe=keyframe, arrival=arrival)
        caller_cpu = time.thread_time() - started
        while recorder._queue.qsize():
            time.sleep(0.005)
        time.sleep(0.05)  # the last item taken off the queue is being written
        writer_cpu = time.clock_gettime(writer_clock) - writer_before
        t0 = time.perf_counter()
        result = recorder.stop_blocking()
        stop_seconds = time.perf_counter() - t0
        size = result.size
    frames = len(packets)
    print(json.dumps({
        "media_seconds": seconds,
        "participants": 2,
        "frames": frames,
        "caller_us_per_frame": round(caller_cpu / frames * 1e6, 2),
        "writer_us_per_frame": round(writer_cpu / frames * 1e6, 2),
        "writer_core_share_per_call": round(writer_cpu / seconds, 4),
        "stop_and_remux_seconds": round(stop_seconds, 3),
        "bytes_written": size,
    }))


if __name__ == "__main__":
    main()
