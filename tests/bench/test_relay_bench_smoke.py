"""Smoke run of the relay benchmark: ``bench/relay.py --quick`` end to end on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
R_KEYS = {"calls_per_core", "delivery_ratio", "latency_ms", "mem_mb_per_call",
          "first_frame_ms", "points"}


@pytest.mark.timeout(180)
def test_quick_run_prints_one_json_object_of_the_agreed_shape() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relay.py"), "--quick"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result) == {"machine", "panda", "baselines"}
    assert set(result["baselines"]) == {"mediarelay", "janus"}
    for r in (result["panda"], result["baselines"]["mediarelay"]):
        assert R_KEYS <= set(r), r
        assert set(r["latency_ms"]) == {"p50", "p95", "p99"}
        assert set(r["first_frame_ms"]) == {"p50", "p95"}
        assert len(r["points"]) == 1, proc.stderr[-3000:]
        assert r["calls_per_core"] > 0
        assert r["delivery_ratio"] > 0.5  # media flowed (a loaded box may lose some)
        assert r["first_frame_ms"]["p50"] > 0
        assert not r["points"][0]["errors"]
    panda = result["panda"]
    # the relay forwards payloads unchanged: every video frame in the window is matched
    assert panda["latency_ms"]["p50"] is not None and panda["latency_ms"]["p50"] >= 0
    assert panda["points"][0]["unmatched_frames"] == 0
    janus = result["baselines"]["janus"]
    note = result["machine"]["notes"]["janus"]
    if janus is None:  # skipped, and the note says why (and how to install it)
        assert note
        if shutil.which("janus") is None:
            assert "apt-get install janus" in note
    else:  # same clients, same accounting, Janus forwards payloads unchanged too
        assert R_KEYS <= set(janus), janus
        assert janus["calls_per_core"] > 0 and janus["delivery_ratio"] > 0.5
        assert janus["latency_ms"]["p50"] is not None
        assert janus["points"][0]["unmatched_frames"] == 0
        assert not janus["points"][0]["errors"]
        assert janus["panda_calls_per_core_ratio"] > 0
