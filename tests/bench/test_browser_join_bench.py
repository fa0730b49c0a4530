"""The browser join benchmark's own logic: a page trace turned into a join record, and the
summary over joins (the browser run itself is done by hand: bench/browser_join.py)."""

from __future__ import annotations

import pytest

from bench import browser_join


def _trace(click: float = 1000.0, **steps: float) -> dict[str, float]:
    return {"click": click, **{name: click + ms for name, ms in steps.items()}}


def test_join_record_times_steps_from_the_click() -> None:
    trace = _trace(ws_open=5.0, msg_join=12.5, remote_offer=80.0, ice_connected=95.0,
                   first_decoded=240.0, first_frame=251.25)
    trace.update(pli_sent=1, nack_sent=0, unknown_step=1.0)
    record = browser_join.join_record(trace)
    assert record["join_to_first_frame_ms"] == pytest.approx(251.2, abs=0.1)
    assert record["steps_ms"]["msg_join"] == 12.5
    assert record["steps_ms"]["first_decoded"] == 240.0
    assert "unknown_step" not in record["steps_ms"] and "click" not in record["steps_ms"]
    assert record["pli_sent"] == 1 and record["nack_sent"] == 0
    # the order of STEPS is the order of a join
    assert list(record["steps_ms"]) == [s for s in browser_join.STEPS if s in record["steps_ms"]]


def test_join_record_falls_back_to_stats_and_to_none() -> None:
    assert browser_join.join_record(_trace(first_decoded=300.0))["join_to_first_frame_ms"] \
        == 300.0
    assert browser_join.join_record(_trace(ws_open=3.0))["join_to_first_frame_ms"] is None
    with pytest.raises(ValueError, match="click"):
        browser_join.join_record({"first_frame": 5.0})


def test_summary_percentiles_and_step_medians() -> None:
    joins = [browser_join.join_record(_trace(ice_connected=float(10 * i),
                                             first_frame=float(100 * i)))
             for i in range(1, 11)]
    joins.append(browser_join.join_record(_trace(ws_open=1.0)))  # never saw a frame
    summary = browser_join.summarise(joins)
    assert summary["joins"] == 11 and summary["with_first_frame"] == 10
    first = summary["join_to_first_frame_ms"]
    assert first["p50"] == pytest.approx(550.0)
    assert first["p95"] == pytest.approx(955.0)
    assert (first["min"], first["max"]) == (100.0, 1000.0)
    assert summary["median_steps_ms"]["ice_connected"] == pytest.approx(55.0)
    assert summary["median_steps_ms"]["ws_open"] == 1.0


def test_summary_of_nothing() -> None:
    summary = browser_join.summarise([])
    assert summary["join_to_first_frame_ms"]["p50"] is None
    assert summary["median_steps_ms"] == {}


def test_command_line_refuses_zero_joins() -> None:
    with pytest.raises(SystemExit):
        browser_join.main(["--joins", "0"])


def test_publisher_steps_are_the_first_after_the_click() -> None:
    events = [{"kind": "keyframe", "at": 5_480}, {"kind": "pli", "at": 4_990},
              {"kind": "pli", "at": 5_300}, {"kind": "pli", "at": 5_350},
              {"kind": "keyframe", "at": 5_330}]
    steps = browser_join.publisher_steps(events, click_wall=5_000)
    assert steps == {"publisher_pli": 300.0, "publisher_keyframe": 330.0}
    assert browser_join.publisher_steps([], 5_000) == {}
    record = browser_join.join_record(_trace(pc_connected=250.0, first_frame=400.0), steps)
    assert list(record["steps_ms"]) == ["pc_connected", "publisher_pli", "publisher_keyframe",
                                        "first_frame"]
