"""Smoke run of the browser join benchmark: one real Chromium join, end to end on loopback.

Keeps the benchmark's page trace in step with the call page it drives (the join and leave
buttons, ``.remote-video``, ``window.pandaCall``); figures are not checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_one_join_is_timed_to_its_first_frame_with_every_step() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDA_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "browser_join.py"), "--joins", "1"],
        cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["joins"] == 1 and result["with_first_frame"] == 1
    assert result["join_to_first_frame_ms"]["p50"] > 0
    (record,) = result["records"]
    steps = record["steps_ms"]
    # the page went through signalling, negotiation, ICE and DTLS before its first frame
    for step in ("ws_open", "msg_join", "local_offer", "remote_answer", "pc_connected",
                 "first_frame"):
        assert step in steps, steps
    assert 0 < steps["ws_open"] < steps["msg_join"] < steps["remote_answer"] < steps["first_frame"]
    # the page makes its offer while the join is on its way; it is answered after the join
    assert 0 < steps["local_offer"] < steps["remote_answer"]
    assert steps["pc_connected"] < steps["first_frame"]
