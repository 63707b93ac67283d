"""The token-vs-step benchmark on the trained reference model at a tiny size: structure, FLOPs, resume, bad input."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import token_vs_step as tvs  # noqa: E402

from hetcache.cli_common import run_cli  # noqa: E402
from hetcache.engine import apply_hetcache, remove_hetcache  # noqa: E402
from hetcache.plan import plan_from_changes  # noqa: E402
from hetcache.policy import WorkloadSpec, load_policy  # noqa: E402
from hetcache.workloads import ClipSource, Workload  # noqa: E402
from hetcache.workloads.execute import LoadedWorkload  # noqa: E402

TINY = ["--kinds", "small_box", "--sizes", "64", "--frames", "9", "--steps", "6", "--seeds", "1", "--warmup", "1"]
TINY += ["--targets", "0.8", "--token-variants", "ctx0", "--mixed", "", "--quiet"]
ABSENT = "tokens.no_such_field_yet=true"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tvs") / "tvs.json"
    assert run_cli(tvs.main, [*TINY, "--variants", ABSENT, "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_writes_every_run_and_the_comparison_at_the_target(sweep):
    out, report = sweep
    assert report["schema"] == tvs.SCHEMA and len(report["commands"]) == 1
    assert set(report["settings"]["configs"]) == {"step", "token:ctx0"}  # the absent field's variant was skipped
    point = report["points"]["small_box/64/6"]
    assert 0.03 < point["mask_share"] < 0.06 and point["mask_share"] < point["token_share"] < 1
    runs = point["seeds"]["7001"]["runs"]
    assert point["seeds"]["7001"]["complete"]
    for run in runs:
        assert run["plan"][0] == "F" and run["plan"][-1] == "F"
        assert set(run["plan"][1:-1]) <= ({"F", "R"} if run["family"] == "step" else {"F", "P"})
        assert run["decisions"] == run["plan"]  # every PARTIAL step computed fewer tokens, so it kept its label
        active = run["partial_active_fraction"]
        assert active is None if run["family"] == "step" else point["token_share"] <= active < 1
        assert run["psnr"] < 100 and run["psnr_mask"] < 100  # cached runs differ from the uncached one
    at = point["summary"]["0.8"]
    for family, config in (("step", "step"), ("token", "token:ctx0")):
        mine = sorted((r["flops_fraction"], r["psnr"]) for r in runs if r["config"] == config)
        assert any(low < 0.8 <= high for (low, _), (high, _) in itertools.pairwise(mine)), mine
        value = at["best"][family]["psnr"]["mean"]
        assert min(p for _, p in mine) <= value <= max(p for _, p in mine)
    diff = at["token_minus_step"]["psnr"]["mean"]
    assert diff == pytest.approx(at["best"]["token"]["psnr"]["mean"] - at["best"]["step"]["psnr"]["mean"])
    table = out.with_suffix(".md").read_text()
    assert "| small_box | 4." in table and "| 64² | 6 |" in table and "token − step in-mask" in table


def test_reported_flops_are_the_engine_accounting_of_the_reported_plan(sweep):
    _, report = sweep
    runs = report["points"]["small_box/64/6"]["seeds"]["7001"]["runs"]
    workload = Workload(height=64, width=64, num_frames=9, steps=6, clips=(ClipSource("c", "small_box", 7001),))
    session = LoadedWorkload(workload)
    base = tvs.token_base(load_policy(tvs.BENCHMARK_BASE), WorkloadSpec(**session.summary()), warmup=1)
    configs = {c.name: c for c in tvs.configs_from_args(tvs.parse_args(TINY), print)}
    all_full = {"config": "step", "plan": "FFFFFF"}  # a FULL step under the engine (prompt K/V computed once)
    step, token = (next(r for r in runs if r["family"] == family) for family in ("step", "token"))
    for run in (step, token, all_full):
        handle = apply_hetcache(session.pipe, tvs.policy_for(base, configs[run["config"]], run["plan"]))
        try:
            session.generate(session.clips[0], decode=False)
            stats = handle.stats()
        finally:
            remove_hetcache(session.pipe)
        assert stats["decisions"] == run["plan"]
        if run is all_full:
            full = stats["flops_fraction"] / 6
        else:
            assert (stats["flops"], stats["flops_fraction"]) == (run["flops"], run["flops_fraction"])

    def cached_step_cost(run: dict) -> float:  # a cached step's FLOPs as a share of a FULL step's
        return (run["flops_fraction"] - run["plan"].count("F") * full) / run["cached_steps"] / full

    assert 0 < cached_step_cost(step) < 0.05  # a REUSE step runs the embeddings and the head only
    assert cached_step_cost(token) > 0.3  # a PARTIAL step computes the hole and its margin in every block


def test_a_rerun_resumes_without_running_again_and_clashing_settings_are_refused(sweep, tmp_path, capsys):
    out, report = sweep
    copy = tmp_path / "copy.json"
    copy.write_text(out.read_text())
    assert run_cli(tvs.main, [*TINY, "--out", str(copy)]) == 0
    again = json.loads(copy.read_text())
    assert again["points"]["small_box/64/6"]["seeds"] == report["points"]["small_box/64/6"]["seeds"]
    before = copy.read_text()
    assert run_cli(tvs.main, [*TINY, "--warmup", "2", "--out", str(copy)]) == 2
    assert "other settings (warmup)" in capsys.readouterr().err and copy.read_text() == before


def test_bad_flags_and_variants_fail_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "x.json"
    for flags, message in (
        (["--kinds", "hexagon"], "--kinds names unknown kinds hexagon"),
        (["--variants", "context_ratio=0.2"], "is not section.field=value"),
        (["--variants", "tokens.context_ratio=2"], "configuration token:tokens.context_ratio=2"),
        (["--token-variants", "ctx9"], "unknown variants ctx9"),
        (["--targets", "1.5"], "--targets"),
        (["--no-plain-step"], "--no-plain-step leaves no step-only configuration"),
        (["--reading", str(tmp_path / "absent.md")], "--reading"),
    ):
        assert run_cli(tvs.main, [*TINY, *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    name, overrides, skipped = tvs.parse_overrides("kv:" + ABSENT)
    assert (name, overrides) == ("kv", {}) and "no field tokens.no_such_field_yet" in skipped
    assert tvs.parse_overrides("tokens.selection=attention,tokens.context_ratio=0.2")[1] == {
        "selection": "attention",
        "context_ratio": 0.2,
    }


def test_contract_and_envelopes(tmp_path):
    out = tmp_path / "tvs-paste.json"
    assert run_cli(tvs.main, [*TINY, "--contract", "paste", "--points", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["contract"] == "paste" and report["settings"]["points"] == 3
    point = report["points"]["small_box/64/6"]
    runs = point["seeds"]["7001"]["runs"]
    assert all(run["psnr_background"] == 100.0 for run in runs)  # every run, and its reference, pasted back
    envelope = point["summary"]["envelope"]
    assert envelope["runs_per_family"]["step"] >= 3 and envelope["runs_per_family"]["token"] >= 3
    at = point["summary"]["0.8"]["best"]["step"]
    assert set(at) == {"psnr_mask", "psnr_seam"}  # the contract's headline, not whole-frame PSNR
    for flops, entry in envelope["at"].items():
        cell = entry["psnr_mask"]
        front = tvs.envelope([r for r in runs if r["family"] == "step"], "psnr_mask")
        assert cell["step"] == tvs.envelope_at(front, float(flops))
        assert envelope["configs"]["step"][flops]["psnr_mask"] == cell["step"]  # the family's only configuration
    table = out.with_suffix(".md").read_text()
    assert "contract `paste`" in table and "token − step seam" in table and "function of the mask's area" in table
    assert "| small_box | 64² | 6 | token:ctx0 |" in table  # its own envelope's row
    reading = tmp_path / "reading.md"
    reading.write_text("Step reuse wins at this size.\n")
    assert run_cli(tvs.main, ["--render", "--reading", str(reading), "--out", str(out), "--quiet"]) == 0
    rendered = out.with_suffix(".md").read_text()
    assert rendered.index("Step reuse wins at this size.") < rendered.index("Commands:")
    assert json.loads(out.read_text())["reading"] == "Step reuse wins at this size."  # kept for later renders


def test_envelope_is_the_upper_front():
    runs = [{"flops_fraction": f, "q": q} for f, q in ((0.4, 20.0), (0.5, 19.0), (0.6, 25.0), (0.8, 24.0), (0.9, 30.0))]
    assert tvs.envelope(runs, "q") == [(0.4, 20.0), (0.6, 25.0), (0.9, 30.0)]
    front = tvs.envelope(runs, "q")
    assert tvs.envelope_at(front, 0.5) == pytest.approx(22.5) and tvs.envelope_at(front, 0.3) is None
    assert tvs.envelope_at(front, 0.95) is None  # above what was measured: not held flat
    assert tvs.spanning(list("abcdefghij"), 4) == ["a", "d", "g", "j"]
    assert tvs.spread_step_sets(8, 2) == [(2,), (2, 6), (2, 4, 6), (2, 3, 5, 6), (2, 3, 4, 5, 6)]


def test_a_staleness_bound_puts_full_steps_where_the_step_rule_does(tmp_path):
    spec = load_policy(tvs.BENCHMARK_BASE).replace(reuse_threshold=0.0, full_threshold=1e9, warmup_steps=1)
    for bound in (None, 1, 3):  # an explicit all-PARTIAL plan gets the rule's own FULL steps
        rule = plan_from_changes([0.01] * 9, spec.replace(max_partial_run=bound, final_full_steps=1).step_plan)
        assert tvs.Config("token:b", "token", {"max_partial_run": bound}).plan(range(1, 9), 10, 0.5) == rule
    mixed = tvs.Config("mixed:b", "mixed", {"max_partial_run": 2}).plan(range(1, 9), 10, 0.5)
    assert mixed == "FRRRRPPFPF"  # REUSE steps do not count towards a PARTIAL run
    out = tmp_path / "bounded.json"
    variant = "b1:tokens.context_ratio=0,step_plan.max_partial_run=1"
    assert run_cli(tvs.main, [*TINY, "--token-variants", "", "--variants", variant, "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["points"]["small_box/64/6"]["seeds"]["7001"]["runs"]
    bounded = [r for r in runs if r["config"] == "token:b1"]
    assert bounded and all("PP" not in r["plan"] and "P" in r["plan"] for r in bounded)
    for run in bounded:  # the engine ran the bounded plan, and its FLOPs are the engine's for that plan
        assert run["decisions"] == run["plan"]
        full = run["plan"].count("F") / len(run["plan"])
        assert full < run["flops_fraction"] < full + run["plan"].count("P") / len(run["plan"])
