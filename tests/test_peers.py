"""The peers benchmark harness on tiny random weights: every row runs, outputs are written, the checks measure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402
import peers_methods as pm  # noqa: E402
import peers_report  # noqa: E402

from hetcache.cli_common import run_cli  # noqa: E402
from hetcache.engine import apply_hetcache, remove_hetcache  # noqa: E402
from hetcache.errors import InputError  # noqa: E402
from hetcache.plan import plan_from_changes  # noqa: E402
from hetcache.workloads.execute import LoadedWorkload  # noqa: E402
from hetcache.workloads.spec import Workload  # noqa: E402

TINY = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "6", "--clips", "box"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """One full benchmark run (every row, two interleaved rounds) on the tiny random reference workload."""
    out = tmp_path_factory.mktemp("peers") / "peers"
    code = run_cli(peers.main, [*TINY, "--reps", "2", "--out", str(out), "--quiet"])
    assert code == 0
    return {"out": out, "report": json.loads(out.with_suffix(".json").read_text())}


@pytest.fixture(scope="module")
def session() -> LoadedWorkload:
    workload = Workload(weights="random", height=64, width=64, num_frames=9, steps=6)
    return LoadedWorkload(workload.replace(clips=tuple(s for s in workload.clip_sources() if s.kind == "box")))


def _rows(report: dict, method: str) -> list[dict]:
    return [r for r in report["rows"] if r["method"] == method]


def test_every_row_runs_and_files_are_written(smoke):
    report, out = smoke["report"], smoke["out"]
    methods = {r["method"] for r in report["rows"]}
    assert methods == set(pm.METHODS)
    for row in report["rows"]:
        if row.get("unavailable"):
            assert row["method"] == pm.DBCACHE and "not installed" in row["unavailable"]
            continue
        assert 0.0 < row["flops_fraction"] <= 1.0 + 1e-9, row
        assert row["speedup_time_min"] <= row["speedup_time"] <= row["speedup_time_max"]
        assert set(row["quality"]) >= {"psnr", "psnr_mask", "ssim", "ssim_mask"}
    for method in pm.METHODS:
        if method not in (pm.UNCACHED, pm.HETCACHE_PAPER, pm.HETCACHE_PAPER_EVAL, pm.HETCACHE_TUNED):
            assert len(_rows(report, method)) >= 2, f"{method} needs at least two operating points"
    (uncached,) = _rows(report, pm.UNCACHED)
    assert uncached["flops_fraction"] == 1.0 and uncached["quality"]["psnr"] == 100.0
    assert report["baseline_drift"] == 0.0  # the uncached baseline reproduces bit for bit after every other row
    markdown = out.with_suffix(".md").read_text()
    assert "| method | setting | FLOPs |" in markdown and "Command: `python benchmarks/peers.py" in markdown
    assert markdown.count("\n| ") >= len(report["rows"]) + 1
    html = out.with_suffix(".html").read_text()
    assert "plotly" in html and pm.FBC in html


def test_the_papers_own_evaluation_pastes_and_scores_the_whole_frame(smoke):
    report, out = smoke["report"], smoke["out"]
    (paper,) = _rows(report, pm.HETCACHE_PAPER)
    (evaluation,) = _rows(report, pm.HETCACHE_PAPER_EVAL)
    assert evaluation["contract"] == "paste" and paper["contract"] is None
    assert evaluation["flops_fraction"] == pytest.approx(paper["flops_fraction"])
    q, raw = evaluation["quality"], paper["quality"]
    assert q["psnr_mask"] == pytest.approx(raw["psnr_mask"])  # paste-back does not touch the edit region
    assert q["psnr"] > raw["psnr"]  # the pasted context matches exactly: whole-frame PSNR rises with it
    assert q["psnr_vs_source"] < q["psnr"] and q["psnr_uncached_vs_source"] < 100
    assert all(g["method"] != pm.HETCACHE_PAPER_EVAL for g in report["goal"])
    markdown = out.with_suffix(".md").read_text()
    assert "The paper's own evaluation" in markdown and "function of the mask's area" in markdown


def test_render_rewrites_the_same_table_from_json(smoke, tmp_path):
    again = tmp_path / "again"
    assert run_cli(peers.main, ["--render", str(smoke["out"].with_suffix(".json")), "--out", str(again)]) == 0
    assert again.with_suffix(".md").read_text() == smoke["out"].with_suffix(".md").read_text()
    assert again.with_suffix(".html").exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    assert run_cli(peers.main, ["--render", str(broken), "--out", str(again)], prog="peers") == 2


def test_fewer_steps_cost_is_the_step_ratio(smoke):
    for row in _rows(smoke["report"], pm.FEWER_STEPS):
        steps = int(row["setting"].split()[0])
        assert row["flops_fraction"] == pytest.approx(steps / 6, rel=1e-12)


def test_timestep_only_rows_have_no_partial_steps(smoke):
    for row in _rows(smoke["report"], pm.TIMESTEP_ONLY):
        (decisions,) = row["decisions"].values()
        assert "P" not in decisions and "R" in decisions and decisions.startswith("FF") and decisions.endswith("F")


def test_replay_flags_first_block_cache_on_vace_and_hetcache_is_exact(smoke):
    checks = {r["method"]: r["correctness"] for r in smoke["report"]["rows"]}
    fbc = checks[pm.FBC]
    assert fbc["replay_error"] > 0.05 and fbc["plain_wan_error"] < 1e-4  # hints counted twice on VACE only
    assert fbc["cached_share"] < 0.5 and "WRONG on VACE" in fbc["note"] and "hints added twice" in fbc["note"]
    assert checks[pm.MAGCACHE]["replay_error"] > 0.05
    for method in (pm.TIMESTEP_ONLY, pm.HETCACHE_TUNED):
        assert checks[method]["replay_error"] < 1e-5 and checks[method]["branch_error"] < 1e-5
        assert checks[method]["note"].startswith("exact")
    assert checks[pm.HETCACHE_TUNED]["cached_share"] < 1.0  # the partial replay really skipped work
    assert checks[pm.TAYLORSEER]["replay_error"] < 1e-5 and checks[pm.TAYLORSEER]["cached_share"] < 0.5
    assert checks[pm.TAYLORSEER]["default_patterns_share"] == 1.0  # diffusers' default patterns hook nothing
    assert checks[pm.PAB]["branch_error"] > 1e-3 and "uncond branch" in checks[pm.PAB]["note"]


def test_flop_counter_matches_the_engine_uncached_count(session):
    clip = session.clips[0]
    counter = pm.FlopCounter(session.transformer)
    try:
        session.generate(clip, decode=False)
    finally:
        counter.remove()
    policy = pm.timestep_only_policy(pm.timestep_only_spec(1.0))
    handle = apply_hetcache(session.pipe, policy, strict=False)
    try:
        session.generate(clip, decode=False)
        stats = handle.stats()
    finally:
        remove_hetcache(session.pipe)
    assert counter.forwards == 2 * session.workload.steps
    assert counter.flops == pytest.approx(stats["flops_uncached"], rel=1e-12)
    assert stats["flops"] < stats["flops_uncached"]


def test_timestep_only_thresholds_hit_distinct_plans():
    changes = [0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.02, 0.03, 0.05]
    thresholds = pm.timestep_only_thresholds(changes, (0.7, 0.5, 0.35))
    plans = [plan_from_changes(changes, pm.timestep_only_spec(t)) for t in thresholds]
    assert len(set(plans)) == len(plans) >= 2
    shares = [p.count("F") / len(p) for p in plans]
    assert shares == sorted(shares, reverse=True) and all("P" not in p for p in plans)


def test_paper_policy_translation_matches_the_tuner(session):
    from hetcache.tuner.space import paper_params

    policy = pm.paper_policy(session.transformer)
    assert policy.layers.partial_blocks == tuple(range(paper_params(6)["partial_blocks"])) == (0, 1, 2, 3)
    assert policy.layers.partial_vace_blocks == ()
    assert policy.step_plan.reuse_threshold == 0.1 and policy.tokens.margin_ratio == 0.7


def test_goal_check_interpolates_the_tuned_curve_at_each_rows_flops():
    def row(method, setting, fraction, psnr, mask):
        return {
            "method": method,
            "setting": setting,
            "flops_fraction": fraction,
            "quality": {"psnr": psnr, "psnr_mask": mask},
        }

    rows = [
        row("uncached", "20", 1.0, 100.0, 100.0),
        row(peers_report.TUNED, "a", 0.4, 20.0, 18.0),
        row(peers_report.TUNED, "b", 0.6, 30.0, 28.0),
        row(peers_report.TUNED, "identical", 1.0, 100.0, 100.0),
        row("fewer steps", "mid", 0.5, 24.0, 24.0),
        row("fewer steps", "none", 1.0, 100.0, 100.0),
        row("fewer steps", "dear", 0.9, 29.0, 27.0),
        row("cheap", "c", 0.2, 10.0, 10.0),
    ]
    goal = {g["setting"]: g for g in peers_report.goal_check(rows)}
    assert set(goal) == {"mid", "dear", "c"}
    assert goal["mid"]["psnr_tuned"] == pytest.approx(25.0) and goal["mid"]["psnr_mask_tuned"] == pytest.approx(23.0)
    assert not goal["mid"]["tuned_better"]  # frame PSNR higher, in-mask lower: both must be higher
    assert goal["dear"]["tuned_cost"] == "lower" and goal["dear"]["tuned_better"]
    assert goal["dear"]["psnr_tuned"] == 30.0  # not lifted towards the capped PSNR of the identical tuned point
    assert not goal["c"]["comparable"] and not goal["c"]["tuned_better"]
    note = peers_report.closing_note({"weights": "trained", "goal": list(goal.values())})
    assert "than 1 of the 2 rows" in note and "Not higher than: fewer steps [mid]" in note and "cheap [c]" in note


def test_runs_without_cache_dit(monkeypatch):
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # what an environment without the extra looks like
    points = pm._cachedit_points(6)
    assert len(points) == 3 and all("not installed" in p.unavailable for p in points)
    row = {"method": pm.DBCACHE, "setting": points[0].setting, "unavailable": points[0].unavailable}
    assert "not installed" in peers_report.table([row])


def test_bad_arguments_exit_2(tmp_path, capsys):
    out = tmp_path / "peers"
    assert run_cli(peers.main, [*TINY[:-2], "--clips", "boxx", "--out", str(out)], prog="peers") == 2
    assert "--clips names unknown clips boxx" in capsys.readouterr().err
    assert run_cli(peers.main, [*TINY, "--methods", "fbc,TeaCache", "--out", str(out)], prog="peers") == 2
    err = capsys.readouterr().err
    assert "--methods names unknown rows TeaCache" in err and "use uncached, steps, timestep" in err
    assert not out.with_suffix(".json").exists()


def test_magcache_ratios_come_from_calibration(session):
    ratios = pm.magcache_ratios(session, session.clips[0], session.workload.steps)
    assert len(ratios) == session.workload.steps and ratios[0] == 1.0
    assert all(0.0 < r < 10.0 for r in ratios) and len(set(ratios)) > 2


def test_tuned_folder_takes_its_policies_only(tmp_path):
    from hetcache import policies

    hand = policies.load("reference-psnr35").replace(name="ladder-1", provenance={"source": "hand"})
    hand.save(tmp_path / "01-1.50x.json")
    (tmp_path / "index.json").write_text(json.dumps({"study": "s", "ladder": []}))
    loaded = peers.tuned_policies([tmp_path])
    assert [(label, p.name) for label, p in loaded] == [("01-1.50x (hand-set, not tuned)", "ladder-1")]
    shipped = [label for label, _ in peers.tuned_policies(None)]
    assert {"reference-psnr35", "reference-psnr30"} <= set(shipped) and all(s.startswith("reference-") for s in shipped)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no policy file"):
        peers.tuned_policies([empty])


def test_runs_on_a_saved_pipeline(tmp_path):
    from conftest import tiny_pipeline
    from safetensors.torch import save_file

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    generator = torch.Generator().manual_seed(0)
    embeds = {name: torch.randn(1, 8, 32, generator=generator) for name in ("prompt_embeds", "negative_prompt_embeds")}
    save_file(embeds, str(tmp_path / "embeds.safetensors"))
    out = tmp_path / "peers"
    args = ["--pipeline", str(tmp_path / "pipe"), "--prompt-embeds", str(tmp_path / "embeds.safetensors")]
    args += [*TINY[2:], "--reps", "1", "--methods", "steps,paper", "--out", str(out), "--quiet", "--no-figure"]
    assert run_cli(peers.main, args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["workload"]["name"] == "pipe" and report["workload"]["pipeline"].endswith("pipe")
    assert {r["method"] for r in report["rows"]} == {pm.UNCACHED, pm.FEWER_STEPS, pm.HETCACHE_PAPER}
    (paper,) = _rows(report, pm.HETCACHE_PAPER)
    assert 0.0 < paper["flops_fraction"] < 1.0
    full = [*args, "--size", "full"]
    assert run_cli(peers.main, full, prog="peers") == 2


def test_a_hetcache_row_is_attached_as_every_cached_run_is():
    """Under blend a trimming policy's peers row trims its FULL steps as the tuner's runs do (at 64² the grown
    latent mask covers every token: nothing to trim), for the same FLOPs."""
    workload = Workload(weights="random", height=128, width=128, num_frames=9, steps=6, contract="blend")
    s = LoadedWorkload(workload.replace(clips=tuple(c for c in workload.clip_sources() if c.kind == "box")))
    policy = pm.timestep_only_policy(pm.timestep_only_spec(1.0)).replace(trim_discarded=True)
    point = pm.Point("hetcache", "trim", "hetcache", policy=policy)
    clip = s.clips[0]
    with pm.attached(point, s, {}, clip) as probe:
        probe.session.generate(clip, decode=False)
    _, expected = s.generate_cached(clip, policy, strict=False)
    assert probe.stats()["trimmed_steps"] == expected["trimmed_steps"] != []
    assert probe.flops() == expected["flops"] < expected["flops_uncached"]
