"""Wall-clock speedups with their spread: interleaved rounds on the real pipeline, and the warnings that keep a busy
machine's figure from passing as a result."""

from __future__ import annotations

import json
import threading

import pytest

from hetcache import timing
from hetcache.cli import main
from hetcache.run_record import read_run_record
from hetcache.runner import run
from hetcache.workloads import ClipSource, Workload

SMALL = dict(weights="random", height=64, width=64, num_frames=9, steps=3, clips=(ClipSource("box", kind="box"),))
SMALL_FLAGS = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "3"]


def test_consistent_rounds_give_no_warning():
    rounds = timing.Rounds(uncached=[2.0, 2.1, 2.0], cached=[1.5, 1.55, 1.52])
    assert timing.warnings_for(rounds, speedup_flops=1.42) == []
    assert rounds.summary()["speedup_time"]["median"] == pytest.approx(2.0 / 1.5)  # ratios 1.33, 1.35, 1.32


def test_one_slow_round_is_a_spread_warning_not_the_result():
    rounds = timing.Rounds(uncached=[2.0, 2.0, 2.0], cached=[1.5, 4.0, 1.5])  # the 2nd cached round was slowed
    summary = rounds.summary()["speedup_time"]
    assert summary["median"] == pytest.approx(2.0 / 1.5) and summary["min"] == pytest.approx(0.5)
    (warning,) = timing.warnings_for(rounds, speedup_flops=1.42)
    assert "varied by" in warning and "0.50–1.33x over 3 rounds" in warning and "trust the FLOPs speedup" in warning


def test_time_speedup_the_flops_cannot_explain_is_flagged():
    slow = timing.Rounds(uncached=[1.0, 1.0, 1.0], cached=[1.72, 1.70, 1.75])  # 0.58x with 1.80x fewer FLOPs
    (warning,) = timing.warnings_for(slow, speedup_flops=1.80, engine_overhead=0.12)
    assert "disagrees with the FLOPs speedup (1.80x)" in warning and "engine overhead was 12%" in warning
    fast = timing.Rounds(uncached=[3.0, 3.0, 3.1], cached=[1.0, 1.0, 1.0])  # 3x time from 1.4x FLOPs: uncached slowed
    assert "disagrees" in timing.warnings_for(fast, speedup_flops=1.4)[0]


def test_rounds_of_several_clips_are_summed_per_round():
    first = timing.Rounds(uncached=[2.0, 2.2, 2.0], cached=[1.0, 1.0, 1.1])
    second = timing.Rounds(uncached=[1.0, 1.0, 1.2], cached=[0.5, 0.6, 0.5])
    both = timing.combine([first, second])
    assert both.uncached == pytest.approx([3.0, 3.2, 3.2]) and both.cached == pytest.approx([1.5, 1.6, 1.6])
    assert both.summary()["speedup_time"]["median"] == pytest.approx(2.0)


def test_run_reports_the_time_speedup_with_its_spread(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *SMALL_FLAGS, "--clips", "box", "--policy", "reference-psnr35", "--compare"]
    assert main([*args, "--reps", "3", "--out", str(out)]) == 0
    record = read_run_record(out)
    summary, (clip,) = record["summary"], record["clips"]
    assert summary["timing"]["rounds"] == 3 and len(summary["timing"]["speedup_time"]["values"]) == 3
    assert summary["speedup_time_min"] <= summary["speedup_time"] <= summary["speedup_time_max"]
    seconds = clip["timing"]["cached_denoise_s"]
    assert len(seconds["values"]) == 3 and clip["cached_denoise_s"] == seconds["median"]
    uncached, cached = clip["timing"]["uncached_denoise_s"]["values"], seconds["values"]
    ratios = sorted(u / c for u, c in zip(uncached, cached, strict=True))
    assert summary["speedup_time"] == pytest.approx(ratios[1])
    assert (summary["speedup_time_min"], summary["speedup_time_max"]) == pytest.approx((ratios[0], ratios[2]))
    assert summary["headline"] == ("flops" if summary["warnings"] else "time")
    printed = capsys.readouterr().out
    assert "median of 3 interleaved rounds, min–max" in printed and "time x (min–max)" in printed
    assert printed.count("warning: ") == len(summary["warnings"])


def test_a_busy_round_produces_the_warning_not_a_silent_slowdown():
    """A busy thread (contending for the GIL) in one cached round: the median ignores it, the spread flags it."""
    stop = threading.Event()
    busy: list[threading.Thread] = []

    def spin() -> None:
        while not stop.is_set():
            pass

    def before_run(clip: str, kind: str, round_: int) -> None:
        stop.set()
        for thread in busy:
            thread.join()
        busy.clear()
        if kind == "cached" and round_ == 2:
            stop.clear()
            busy.append(threading.Thread(target=spin, daemon=True))
            for thread in busy:
                thread.start()

    try:
        record = run(Workload(**SMALL), policy="reference-psnr35", compare=True, reps=3, before_run=before_run)
    finally:
        stop.set()
    (clip,) = record["clips"]
    cached = clip["timing"]["cached_denoise_s"]["values"]
    assert cached[1] > 1.5 * max(cached[0], cached[2])  # the busy round really was slower
    summary = record["summary"]
    assert summary["speedup_time"] > summary["speedup_time_min"]  # the median is not the busy round's figure
    assert any("varied by" in w for w in summary["warnings"]) and summary["headline"] == "flops"
    assert json.dumps(summary)  # the record stays JSON
