"""The relay benchmark's own logic: percentiles, CPU and memory accounting, latency
matching, delivery, the keyframe jump of the load client, and the JSON shape."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.media.mediagen import EncodedFrame, EncodedMedia

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


relay = _load("relay")
relay_load = _load("relay_load")

# /proc/<pid>/stat of a process whose name holds a space and a parenthesis
STAT = ("4242 (python (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
        "250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615")


def test_percentile_interpolates_and_handles_empty() -> None:
    assert relay.percentile([], 50) is None
    assert relay.percentile([7.0], 99) == 7.0
    values = [float(x) for x in range(1, 101)]  # 1..100
    assert relay.percentile(values, 50) == pytest.approx(50.5)
    assert relay.percentile(values, 95) == pytest.approx(95.05)
    assert relay.percentile(values, 100) == 100.0
    assert relay.percentile([3.0, 1.0, 2.0], 0) == 1.0  # unsorted input


def test_cpu_seconds_from_stat_sums_utime_and_stime() -> None:
    assert relay.cpu_seconds_from_stat(STAT, 100) == pytest.approx(3.25)
    assert relay.cpu_seconds_from_stat(STAT, 250) == pytest.approx(1.3)


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    before = relay.read_cpu_seconds(os.getpid())
    end = relay_load.proc_cpu_seconds() + 0.05
    while relay_load.proc_cpu_seconds() < end:
        sum(range(10_000))
    assert relay.read_cpu_seconds(os.getpid()) >= before + 0.05


def test_rss_from_status() -> None:
    assert relay.rss_mb_from_status("Name:\tpython\nVmRSS:\t  20480 kB\n") == 20.0
    with pytest.raises(ValueError):
        relay.rss_mb_from_status("Name:\tpython\n")
    assert relay.read_rss_mb(os.getpid()) > 1


def test_udp_rcvbuf_errors_from_snmp() -> None:
    snmp = ("Ip: Forwarding\nIp: 1\n"
            "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
            "Udp: 100 0 7 90 5 0\nUdpLite: InDatagrams\nUdpLite: 0\n")
    assert relay.udp_rcvbuf_errors(snmp) == 5
    with pytest.raises(ValueError):
        relay.udp_rcvbuf_errors("Ip: 1\n")


def test_core_busy_from_proc_stat() -> None:
    before = relay.core_times("cpu  9 9 9 9 9 9 9 9 0 0\n"
                              "cpu0 100 0 100 700 100 0 0 0 0 0\n"
                              "cpu1 0 0 0 1000 0 0 0 0 0 0\nintr 5\n")
    after = relay.core_times("cpu  9 9 9 9 9 9 9 9 0 0\n"
                             "cpu0 200 0 200 800 100 0 0 0 0 0\n"
                             "cpu1 0 0 0 1100 0 0 0 0 0 0\n")
    assert before[0] == (200, 1000)  # iowait counts as idle
    assert relay.core_busy(before, after, 0) == pytest.approx(200 / 300)
    assert relay.core_busy(before, after, 1) == 0.0
    assert relay.core_busy(before, after, 5) is None
    assert set(relay.read_core_times()) >= {0}


def test_send_log_matches_payloads_to_their_latest_send() -> None:
    log = relay_load.SendLog()
    log.record(b"frame-1", 10.0)
    log.record(b"frame-2", 10.033)
    log.record(b"frame-1", 16.0)  # the clip looped
    assert log.count == 3
    assert log.latency(b"frame-2", 10.035) == pytest.approx(0.002)
    assert log.latency(b"frame-1", 16.004) == pytest.approx(0.004)
    assert log.latency(b"re-encoded", 16.0) is None
    assert log.latency(b"frame-1", 15.0) is None  # arrival before send: not a match


def test_load_counts_latency_only_while_measuring() -> None:
    load = relay_load.Load()
    load.logs["0:a"] = log = relay_load.SendLog()
    log.record(b"y", 1.0)
    load.on_video("0:a", b"y", 1.010)
    assert load.latencies == [] and load.unmatched == 0
    load.measuring = True
    load.on_video("0:a", b"y", 1.010)
    log.record(b"\x00key", 1.0)
    load.on_video("0:a", b"\x00key", 1.020)
    load.on_video("0:a", b"other", 1.010)
    load.on_video("9:b", b"y", 1.010)  # unknown publisher
    assert load.latencies == [pytest.approx(0.010), pytest.approx(0.020)]
    assert load.keyframe_latencies == [pytest.approx(0.020)]  # b"y" (0x79): bit 0 set, delta frame
    assert load.unmatched == 2


def test_delivery_ratio() -> None:
    assert relay_load.delivery(100, 400, 90, 390) == 1.0
    assert relay_load.delivery(0, 200, 0, 150) == 0.75
    assert relay_load.delivery(5, 5, 0, 0) is None


def _media() -> EncodedMedia:
    frames = tuple(EncodedFrame(bytes([i]), i * 3000, i % 4 == 0) for i in range(8))
    return EncodedMedia("video/VP8", 90000, frames, 8 * 3000)


async def test_packet_track_jumps_to_next_keyframe_on_request() -> None:
    sent: list[int] = []
    track = relay_load.PacketTrack("video", _media(), None, lambda: sent.append(1))
    first = await track.recv()
    assert bytes(first) == b"\x00"
    track.request_keyframe()
    second = await track.recv()
    assert bytes(second) == b"\x04"  # frames 1..3 skipped
    assert second.pts == 4 * 3000
    assert bytes(await track.recv()) == b"\x05"
    assert len(sent) == 3


def _load_result(**overrides: Any) -> dict[str, Any]:
    result = {"generator_cpu_s": 2.0, "video_delivery": 0.995, "audio_delivery": 1.0,
              "latencies_ms": [1.0, 2.0, 3.0, 4.0], "unmatched_frames": 0,
              "first_frame_ms": [100.0, 200.0], "video_kbps": 1500.0, "errors": []}
    result.update(overrides)
    return result


def test_make_point_accounts_cpu_per_call_second() -> None:
    # 4 calls for 10 s = 40 call-seconds; 2 server CPU-seconds -> 0.05 -> 20 calls per core
    point = relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result())
    assert point["cpu_s_per_call_s"] == pytest.approx(0.05)
    assert point["calls_per_core"] == pytest.approx(20.0)
    assert point["calls_per_core_delivered"] == pytest.approx(20.0 * 0.995)
    assert relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result(video_delivery=None)
                            )["calls_per_core_delivered"] is None
    assert point["server_core_busy"] == pytest.approx(0.2)
    assert point["generator_core_busy"] == pytest.approx(0.2)
    assert point["mem_mb_per_call"] == pytest.approx(4.0)
    assert point["latency_ms"]["p50"] == pytest.approx(2.5)
    assert point["frames_over_50ms"] == 0 and point["keyframe_latency_ms"]["max"] is None
    slow = relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result(
        latencies_ms=[1.0, 60.0, 80.0], keyframe_latencies_ms=[80.0]))
    assert slow["frames_over_50ms"] == 2 and slow["keyframes_over_50ms"] == 1
    assert slow["keyframe_latency_ms"] == {"p50": 80.0, "max": 80.0}
    assert not point["dropped"]


def test_point_dropped_when_generator_core_saturated() -> None:
    point = relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result(generator_cpu_s=8.6))
    assert point["dropped"]
    kept = relay.make_point(8, 10.0, 5.0, 80.0, 112.0, _load_result(video_delivery=0.99))
    summary = relay.summarise([point, kept])
    assert summary["calls_per_core"] == pytest.approx(16.0)  # only the kept point
    assert summary["delivery_ratio"] == pytest.approx(0.99)


def test_contended_points_left_out_unless_all_are() -> None:
    calm = relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result())
    busy = relay.make_point(8, 10.0, 8.0, 80.0, 96.0, _load_result())
    busy["contended"] = True
    assert relay.summarise([calm, busy])["calls_per_core"] == pytest.approx(20.0)
    only_busy = relay.summarise([busy])
    assert only_busy["calls_per_core"] == pytest.approx(10.0)
    assert "contended" in only_busy["note"]


def test_starved_points_left_out_unless_all_are() -> None:
    fed = relay.make_point(4, 10.0, 2.0, 80.0, 96.0, _load_result(video_delivery=0.99))
    starved = relay.make_point(8, 10.0, 2.0, 80.0, 96.0, _load_result(video_delivery=0.3))
    summary = relay.summarise([fed, starved])
    assert summary["calls_per_core"] == pytest.approx(20.0)
    assert summary["delivery_ratio"] == pytest.approx(0.99)
    assert "left out 1 point(s)" in summary["note"] and len(summary["points"]) == 2
    only_starved = relay.summarise([starved])
    assert only_starved["calls_per_core"] == pytest.approx(40.0)
    assert only_starved["delivery_ratio"] == pytest.approx(0.3)
    assert "overstated" in only_starved["note"]


def test_summary_latency_from_point_nearest_half_busy() -> None:
    low = relay.make_point(2, 10.0, 1.0, 80, 88, _load_result(latencies_ms=[1.0]))
    half = relay.make_point(8, 10.0, 4.8, 80, 112, _load_result(latencies_ms=[3.0]))
    high = relay.make_point(16, 10.0, 9.0, 80, 144, _load_result(latencies_ms=[9.0]))
    summary = relay.summarise([low, half, high])
    assert summary["latency_ms"] == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
    assert summary["first_frame_ms"]["p50"] == pytest.approx(150.0)


def test_summary_shape_and_empty_points() -> None:
    empty = relay.summarise([], "every point failed")
    for r in (empty, relay.summarise([relay.make_point(1, 5, 0.3, 80, 85, _load_result())])):
        assert {"calls_per_core", "delivery_ratio", "latency_ms", "mem_mb_per_call",
                "first_frame_ms", "points"} <= set(r)
        assert set(r["latency_ms"]) == {"p50", "p95", "p99"}
        assert set(r["first_frame_ms"]) == {"p50", "p95"}
    assert empty["calls_per_core"] is None and empty["note"] == "every point failed"


def test_ratio_against_baseline() -> None:
    baseline: dict[str, Any] = {"calls_per_core": 2.0}
    relay.add_ratio({"calls_per_core": 20.0}, baseline)
    assert baseline["panda_calls_per_core_ratio"] == pytest.approx(10.0)
    missing: dict[str, Any] = {"calls_per_core": None}
    relay.add_ratio({"calls_per_core": 20.0}, missing)
    assert missing["panda_calls_per_core_ratio"] is None
    relay.add_ratio({"calls_per_core": 20.0}, None)  # janus absent: nothing to do


def test_measured_processes_start_pinned_and_at_the_chosen_niceness(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    assert relay._pin(None) is None  # nothing to do: no hook at all
    monkeypatch.setattr(relay, "NICE", 3)
    core = sorted(os.sched_getaffinity(0))[-1]
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.nice(0), sorted(os.sched_getaffinity(0)))"],
        preexec_fn=relay._pin(core), capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == min(os.nice(0) + 3, 19)
    assert " ".join(out[1:]) == f"[{core}]"
