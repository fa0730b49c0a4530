"""Helpers every benchmark script shares: percentiles, pinned child processes, uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def pin(cpu: int | None, nice: int) -> Callable[[], None] | None:
    """preexec_fn of a measured process: pinned to ``cpu``, ``nice`` added to its niceness."""
    if cpu is None and not nice:
        return None

    def start() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.nice(nice)

    return start


def run_with_uvloop(main: Coroutine[Any, Any, None]) -> None:
    """Run a server coroutine on uvloop when installed, as ``python -m panda serve`` does."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main)
