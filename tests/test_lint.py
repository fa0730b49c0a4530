"""The whole tree passes `ruff check` with the project's configuration."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_ruff_check_is_clean() -> None:
    if importlib.util.find_spec("ruff") is not None:
        ruff = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        ruff = [str(shutil.which("ruff"))]
    else:
        pytest.fail("ruff is not installed (a dev dependency: `make test` installs it)")
    out = subprocess.run(
        [*ruff, "check", "--no-cache", "--output-format=concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, f"ruff found problems:\n{out.stdout}{out.stderr}"
