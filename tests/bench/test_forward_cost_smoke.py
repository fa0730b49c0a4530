"""Smoke run of ``bench/forward_cost.py``: the per-packet benchmark runs, and every packet it
feeds to the relay's socket callback is forwarded to the subscriber."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_forward_cost_quick_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "forward_cost.py"), "--packets", "400",
         "--rounds", "2"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["relay_us_per_packet"] > 0 and result["floor_us_per_packet"] > 0
    assert len(result["relay_us_rounds"]) == len(result["floor_us_rounds"]) == 2
    # The fed packets continue the publisher's own streams, so the relay forwards them all.
    assert result["forwarded_ratio"] > 0.9, result
