"""Relay benchmark: panda's relay against aiortc's MediaRelay (and Janus when installed).

For each server and each N, a fresh server process and a load generator process
(``bench/relay_load.py``: N concurrent 1:1 calls of aiortc clients, pre-encoded VP8 + Opus,
nothing decoded) run pinned to separate cores. Server CPU comes from /proc/<pid>/stat
over the measured window. Prints one JSON object:
``{"machine": ..., "panda": R, "baselines": {"mediarelay": R, "janus": R or null}}``.
Run: python bench/relay.py [--quick] [--calls 4,8,16] [--seconds 20]
The panda server here is ``python bench/relay.py serve``: panda.media.RoomRegistry behind a
minimal aiohttp WebSocket signalling endpoint (no web app, no database). Janus (Debian's
``janus``, videoroom) runs in a network namespace of its own: see ``bench/janus.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import janus as janus_bench  # noqa: E402
from bench.common import percentile, pin, run_with_uvloop  # noqa: E402

GENERATOR_BUSY_LIMIT = 0.85
CONTENDED = 0.15  # share of a pinned core used by other processes that spoils a point
NICE = 0  # added to the niceness of measured processes (--nice; negative needs root)
STARVED_BELOW = 0.95  # video delivery under which a point is left out of R (if others are not)


# ---------------------------------------------------------------------- pure logic


def cpu_seconds_from_stat(text: str, clk_tck: int) -> float:
    """utime + stime (all threads) in seconds from the text of /proc/<pid>/stat."""
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / clk_tck


def rss_mb_from_status(text: str) -> float:
    """VmRSS in MB from the text of /proc/<pid>/status."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no VmRSS line")


def udp_rcvbuf_errors(snmp: str) -> int:
    """Host-wide UDP datagrams dropped for a full receive buffer, from /proc/net/snmp."""
    rows = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        raise ValueError("no Udp rows")
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def core_times(proc_stat: str) -> dict[int, tuple[int, int]]:
    """Per core (busy, total) jiffies from the text of /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    for line in proc_stat.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
              core: int) -> float | None:
    """Fraction of ``core`` busy (by anyone) between two :func:`core_times` samples."""
    if core not in before or core not in after:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total > 0 else None


def read_core_times() -> dict[int, tuple[int, int]]:
    with open("/proc/stat") as fh:
        return core_times(fh.read())


def read_udp_rcvbuf_errors(pid: int | str = "self") -> int | None:
    """UDP receive-buffer drops in the network namespace of process ``pid``."""
    try:
        with open(f"/proc/{pid}/net/snmp") as fh:
            return udp_rcvbuf_errors(fh.read())
    except (OSError, ValueError, KeyError):
        return None


def read_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        return cpu_seconds_from_stat(fh.read(), os.sysconf("SC_CLK_TCK"))


def read_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return rss_mb_from_status(fh.read())


def make_point(calls: int, window_s: float, server_cpu_s: float, rss_idle_mb: float,
               rss_load_mb: float, load: dict[str, Any]) -> dict[str, Any]:
    """One measurement at fixed N from the server's and the generator's figures."""
    call_seconds = calls * window_s
    per_call_second = server_cpu_s / call_seconds if call_seconds > 0 else None
    generator_busy = load["generator_cpu_s"] / window_s if window_s > 0 else None
    latencies = load.get("latencies_ms") or []
    first = load.get("first_frame_ms") or []
    keyframes = load.get("keyframe_latencies_ms") or []
    point: dict[str, Any] = {
        "calls": calls,
        "window_s": round(window_s, 3),
        "server_cpu_s": round(server_cpu_s, 4),
        "server_core_busy": round(server_cpu_s / window_s, 4) if window_s > 0 else None,
        "cpu_s_per_call_s": per_call_second,
        "calls_per_core": (1 / per_call_second) if per_call_second else None,
        # a starved server forwards less and looks cheaper: scaled to what it delivered
        "calls_per_core_delivered": (
            load["video_delivery"] / per_call_second
            if per_call_second and load.get("video_delivery") is not None else None),
        "generator_core_busy": generator_busy,
        "dropped": bool(generator_busy is not None and generator_busy > GENERATOR_BUSY_LIMIT),
        "delivery_ratio": load.get("video_delivery"),
        "audio_delivery_ratio": load.get("audio_delivery"),
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99)},
        "latency_samples": len(latencies),
        # where the tail comes from: keyframes (bursts of packets) or every frame
        "keyframe_latency_ms": {"p50": percentile(keyframes, 50),
                                "max": max(keyframes) if keyframes else None},
        "frames_over_50ms": sum(1 for x in latencies if x > 50),
        "keyframes_over_50ms": sum(1 for x in keyframes if x > 50),
        "unmatched_frames": load.get("unmatched_frames", 0),
        "mem_mb_per_call": (rss_load_mb - rss_idle_mb) / calls if calls else None,
        "rss_idle_mb": round(rss_idle_mb, 1),
        "rss_load_mb": round(rss_load_mb, 1),
        "first_frame_ms": first,
        "video_kbps": load.get("video_kbps"),
        "errors": load.get("errors", []),
    }
    return point


def summarise(points: list[dict[str, Any]], note: str | None = None) -> dict[str, Any]:
    """R for one server: aggregates over the points whose generator was not saturated.

    Points where other processes took more than 15% of a pinned core are left out too,
    unless every point was; so are points that delivered under 95% of the frames, unless
    every point did. calls_per_core: median of the kept points; delivery: the worst
    kept point; latency: the kept point whose server core was nearest 50% busy; memory:
    median; first frame: pooled over every point.
    """
    usable = [p for p in points if not p["dropped"]]
    kept = [p for p in usable if not p.get("contended")]
    if usable and not kept:
        kept = usable
        note = (note + "; " if note else "") + "every point ran on a contended machine"
    # a server that lost frames did less work: its CPU per call-second flatters it
    fed = [p for p in kept if (p["delivery_ratio"] or 0) >= STARVED_BELOW]
    if fed and len(fed) < len(kept):
        note = (note + "; " if note else "") + (
            f"left out {len(kept) - len(fed)} point(s) delivering < {STARVED_BELOW:.0%}")
        kept = fed
    elif kept and not fed:
        note = (note + "; " if note else "") + (
            f"every point delivered < {STARVED_BELOW:.0%}: calls per core overstated")
    cpc = [p["calls_per_core"] for p in kept if p["calls_per_core"] is not None]
    deliveries = [p["delivery_ratio"] for p in kept if p["delivery_ratio"] is not None]
    mems = [p["mem_mb_per_call"] for p in kept if p["mem_mb_per_call"] is not None]
    with_latency = [p for p in kept if p["latency_ms"]["p50"] is not None]
    latency = {"p50": None, "p95": None, "p99": None}
    if with_latency:
        best = min(with_latency, key=lambda p: abs((p["server_core_busy"] or 0) - 0.5))
        latency = dict(best["latency_ms"])
    first = [ms for p in points for ms in p["first_frame_ms"]]
    result: dict[str, Any] = {
        "calls_per_core": statistics.median(cpc) if cpc else None,
        "delivery_ratio": min(deliveries) if deliveries else None,
        "latency_ms": latency,
        "mem_mb_per_call": statistics.median(mems) if mems else None,
        "first_frame_ms": {"p50": percentile(first, 50), "p95": percentile(first, 95)},
        "points": [{k: v for k, v in p.items() if k != "first_frame_ms"} for p in points],
    }
    if note:
        result["note"] = note
    return result


def add_ratio(panda: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """Record panda's calls per core as a multiple of ``baseline``'s, in the baseline's R."""
    if baseline is None:
        return
    ours, theirs = panda.get("calls_per_core"), baseline.get("calls_per_core")
    baseline["panda_calls_per_core_ratio"] = ours / theirs if ours and theirs else None


def machine() -> dict[str, Any]:
    """What the figures ran on, including how busy the box was when they started."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    import aiortc

    return {"cpu": model, "cores": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "python": platform.python_version(), "aiortc": aiortc.__version__,
            "kernel": platform.release()}


# ---------------------------------------------------------------------- panda bench server

async def _serve_panda() -> None:
    from aiohttp import WSMsgType, web

    from panda.media.errors import SignalError
    from panda.media.ice import MediaConfig
    from panda.media.room import RoomRegistry

    # Clients offer first: the fallback server offer is pushed out of the way (no glare).
    relay_path = os.environ.get("PANDA_RELAY_PATH", "").strip() or "packet"
    registry = RoomRegistry(MediaConfig(ice_loopback=True, relay_path=relay_path),
                            initial_offer_delay=3600)

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        room = registry.get_or_create(request.query.get("room", ""))
        pid = request.query.get("pid", "")

        async def send(msg: dict[str, Any]) -> None:
            if not ws.closed:
                await ws.send_json(msg)

        participant = await room.join(pid, name=pid, role="student", send=send)
        try:
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    break
                try:
                    await participant.handle_signal(json.loads(raw.data))
                except SignalError as exc:
                    await ws.send_json({"type": "error", "error": str(exc)})
        finally:
            await participant.leave()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await registry.close()


def serve_panda() -> None:
    """Run the panda bench server until killed (uvloop, as ``python -m panda serve`` does)."""
    run_with_uvloop(_serve_panda())


# ---------------------------------------------------------------------- orchestration

SERVERS = {
    "panda": [str(Path(__file__).resolve()), "serve"],
    "mediarelay": [str(ROOT / "bench" / "mediarelay_server.py")],
}


def measure_point(server_pid: int, gen: subprocess.Popen[str], calls: int, seconds: float,
                  rss_idle: float, server_cpu: int | None, gen_cpu: int | None
                  ) -> dict[str, Any]:
    """Measure the window a started generator announces, against the server ``server_pid``.

    Shared by every server under test (the Janus baseline starts its own processes).
    """
    assert gen.stdout is not None
    deadline = time.monotonic() + 90 + 4 * calls + seconds
    while _readline(gen.stdout, deadline, gen) != "START":
        pass
    cpu_0, t_0 = read_cpu_seconds(server_pid), time.monotonic()
    drops_0, cores_0 = read_udp_rcvbuf_errors(server_pid), read_core_times()
    while _readline(gen.stdout, deadline, gen) != "END":
        pass
    cpu_1, t_1 = read_cpu_seconds(server_pid), time.monotonic()
    drops_1, cores_1 = read_udp_rcvbuf_errors(server_pid), read_core_times()
    rss_load = read_rss_mb(server_pid)
    load = json.loads(_readline(gen.stdout, deadline, gen))
    gen.wait(timeout=60)
    point = make_point(calls, t_1 - t_0, cpu_1 - cpu_0, rss_idle, rss_load, load)
    # whole network namespace: other processes' UDP drops count too
    point["udp_rcvbuf_errors"] = (drops_1 - drops_0
                                  if drops_0 is not None and drops_1 is not None else None)
    if server_cpu is not None and gen_cpu is not None:
        # other processes on the shared box: how much of each pinned core was not ours
        busy = core_busy(cores_0, cores_1, server_cpu)
        point["server_core_others"] = (None if busy is None else
                                       round(max(0.0, busy - point["server_core_busy"]), 3))
        gen_busy = core_busy(cores_0, cores_1, gen_cpu)
        point["generator_core_others"] = (
            None if gen_busy is None or point["generator_core_busy"] is None
            else round(max(0.0, gen_busy - point["generator_core_busy"]), 3))
        others = [x for x in (point["server_core_others"], point["generator_core_others"])
                  if x is not None]
        point["contended"] = any(x > CONTENDED for x in others)
    return point


def _pin(cpu: int | None) -> Any:
    """preexec_fn of a measured process: pinned to ``cpu``, ``NICE`` added to its niceness."""
    return pin(cpu, NICE)


def _readline(stream: IO[str], deadline: float, proc: subprocess.Popen[str]) -> str:
    # blocking readline is fine: the child always prints or exits (then EOF)
    line = stream.readline()
    if not line:
        raise RuntimeError(f"process {proc.args!r} ended early (code {proc.poll()})")
    if time.monotonic() > deadline:
        raise RuntimeError("benchmark step timed out")
    return line.strip()


def run_point(server: str, calls: int, seconds: float, profile: str,
              relay_path: str = "frame") -> dict[str, Any]:
    """Start a fresh server and a generator, measure one window of N calls, stop both."""
    cores = sorted(os.sched_getaffinity(0))
    server_cpu, gen_cpu = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PANDA_ICE_LOOPBACK="1",
               PANDA_RELAY_PATH=relay_path)
    srv = subprocess.Popen([sys.executable, *SERVERS[server]], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, text=True, preexec_fn=_pin(server_cpu))
    gen: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        assert srv.stdout is not None
        ready = _readline(srv.stdout, deadline, srv)
        if not ready.startswith("READY "):
            raise RuntimeError(f"server said {ready!r}")
        port = int(ready.split()[1])
        time.sleep(0.5)
        rss_idle = read_rss_mb(srv.pid)
        gen = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "relay_load.py"),
             "--url", f"ws://127.0.0.1:{port}/ws", "--calls", str(calls),
             "--seconds", str(seconds), "--profile", profile],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(gen_cpu))
        return measure_point(srv.pid, gen, calls, seconds, rss_idle, server_cpu, gen_cpu)
    finally:
        for proc in (gen, srv):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run_server(server: str, calls: Sequence[int], seconds: float, profile: str,
               relay_path: str = "frame") -> dict[str, Any]:
    points = []
    for n in calls:
        try:
            points.append(run_point(server, n, seconds, profile, relay_path))
        except Exception as exc:  # one failed point must not lose the others
            print(f"{server} N={n} failed: {exc}", file=sys.stderr)
    return summarise(points, None if points else "every point failed (see stderr)")


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        serve_panda()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 call, small frames, 3 s")
    parser.add_argument("--calls", default="4,8,16", help="comma-separated N for panda")
    parser.add_argument("--baseline-calls", default="1,2",
                        help="N for the MediaRelay baseline (it decodes and re-encodes)")
    parser.add_argument("--janus-calls", default=None,
                        help="N for the Janus baseline (default: the same as --calls)")
    parser.add_argument("--no-janus", action="store_true", help="leave the Janus baseline out")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness added to servers and generators, e.g. -10 (root) to "
                             "keep other work on a shared box from starving them")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile", choices=["quick", "full"], default=None)
    parser.add_argument("--relay-path", choices=["frame", "packet"], default="packet",
                        help="panda's forwarding path (PANDA_RELAY_PATH of the server)")
    args = parser.parse_args(args_list)
    if args.quick:
        calls, base_calls, seconds, profile = [1], [1], 3.0, args.profile or "quick"
        janus_calls = calls
    else:
        calls = [int(x) for x in args.calls.split(",") if x]
        base_calls = [int(x) for x in args.baseline_calls.split(",") if x]
        janus_calls = [int(x) for x in (args.janus_calls or args.calls).split(",") if x]
        seconds, profile = args.seconds, args.profile or "full"
    global NICE
    NICE = janus_bench.NICE = args.nice
    info = machine()
    info["profile"] = profile
    info["nice"] = args.nice
    info["pinned"] = len(os.sched_getaffinity(0)) >= 2
    info["relay_path"] = args.relay_path
    # make the cached media before any timing starts
    subprocess.run([sys.executable, str(ROOT / "bench" / "relay_load.py"), "--url", "-",
                    "--prepare", "--profile", profile], cwd=ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    result = {
        "machine": info,
        "panda": run_server("panda", calls, seconds, profile, args.relay_path),
        "baselines": {
            "mediarelay": run_server("mediarelay", base_calls, seconds, profile),
            "janus": None,
        },
    }
    if args.no_janus:
        janus_note = "left out (--no-janus)"
    else:
        janus_points, janus_note = janus_bench.run_points(janus_calls, seconds, profile,
                                                          measure_point, read_rss_mb)
        if janus_points is not None:
            result["baselines"]["janus"] = summarise(
                janus_points, None if janus_points else "every point failed (see stderr)")
    add_ratio(result["panda"], result["baselines"]["mediarelay"])
    add_ratio(result["panda"], result["baselines"]["janus"])
    # the output keeps exactly the three top-level keys: notes live with the machine
    info["notes"] = {
        "janus": janus_note,
        "mediarelay": "latency_ms is null: MediaRelay re-encodes, so payloads cannot be "
                      "matched to their send times",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
