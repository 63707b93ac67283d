"""The dashboard through Streamlit's AppTest on the demo layout made by the real profiler, tuner and runner: every
page's widgets react and its figures carry the data of the files; broken inputs give friendly messages."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import hetcache.dashboard
import numpy as np
import optuna
import pytest
from hetcache.dashboard import cli, policy_view, sources
from safetensors.numpy import load_file
from streamlit.testing.v1 import AppTest
from test_dashboard_data import BUDGET, LAYERS, TRIALS, broken_runs, demo_runs, load_demo_study, study_url

from hetcache import policies as shipped
from hetcache.errors import HetCacheError, InputError
from hetcache.plan import plan_from_changes
from hetcache.policy import load_policy

__all__ = ["broken_runs", "demo_runs"]  # session fixtures, shared with the other dashboard test modules

APP = Path(hetcache.dashboard.__file__).with_name("app.py")
BOUND = float(BUDGET.split("=")[1])


@pytest.fixture
def dashboard(monkeypatch):
    """Start the app on a runs folder (and storage URL) the way hetcache-dashboard passes them; returns the AppTest."""

    def start(runs: Path, storage: str = "") -> AppTest:
        monkeypatch.setenv(sources.RUNS_ENV, str(runs))
        monkeypatch.setenv(sources.STORAGE_ENV, storage)
        return rerun(AppTest.from_file(str(APP), default_timeout=180))

    return start


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"views/{name}.py")
    return rerun(at)


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by widget key: the figure JSON Streamlit sends to the browser."""
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def array(value) -> np.ndarray:
    """A figure array as numpy: plotly sends numpy data as {"dtype", "bdata" (base64), "shape"}, lists as lists."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def feasible(trial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def profile_data(runs: Path) -> tuple[dict, dict[str, np.ndarray]]:
    folder = runs / "demo" / "profile"
    data = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
    return data, load_file(str(folder / "tensors.safetensors"))


# -- overview ----------------------------------------------------------------------------------------------------------


def test_overview_counts_what_the_demo_wrote(dashboard, demo_runs):
    at = dashboard(demo_runs)
    policies = 1 + len(list((demo_runs / "demo" / "tune" / "pareto").glob("[0-9]*.json")))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"profiles": "1", "studies": "1", "run folders": "1", "policy files": str(policies)}
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"profile", "study storage", "run folder", "policy file"}
    assert {"demo/tune/study.db", "demo/profile", "demo/apply", "demo/tune/policy.json"} <= set(table["path"])


def test_empty_and_missing_runs_folders_explain_what_to_do(dashboard, broken_runs, tmp_path):
    at = dashboard(broken_runs / "empty")
    assert "make demo" in texts(at.info)
    for name in ("profile", "study", "compare"):
        assert "make demo" in texts(page(at, name).info)
    assert "valid hetcache policy" in texts(page(at, "policy").success)  # shipped policies need no runs folder
    at = dashboard(tmp_path / "nowhere")
    assert "does not exist" in texts(at.warning)
    assert "does not exist" in texts(page(at, "compare").warning)


# -- profile -----------------------------------------------------------------------------------------------------------


def test_profile_drift_heatmaps_show_the_recorded_class_series(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "profile")
    data, tensors = profile_data(demo_runs)
    by_class = tensors["drift_by_class"].astype(np.float32)
    figure = charts(at)["profile_drift"]
    assert [t["name"] for t in figure["data"]] == ["generative", "margin", "context", "all"]
    for i, trace in enumerate(figure["data"]):
        assert trace["y"] == LAYERS and trace["x"] == [1, 2]  # step 0 has no drift by definition
        np.testing.assert_allclose(array(trace["z"]), by_class[0, 1:, :, i].T, rtol=1e-6)
    at.radio(key="profile_branch").set_value("uncond")
    figure = charts(rerun(at))["profile_drift"]
    np.testing.assert_allclose(array(figure["data"][2]["z"]), by_class[1, 1:, :, 2].T, rtol=1e-6)
    boxes = texts(at.success) + texts(at.info) + texts(at.warning)
    assert data["headroom"]["verdict"] in boxes
    assert all(w in boxes for w in data["headroom"]["warnings"])


def test_profile_token_maps_follow_layer_step_and_quantity(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "profile")
    data, tensors = profile_data(demo_runs)
    grid = data["tensors"]["token_grid"]
    drift, attention = tensors["drift"].astype(np.float32), tensors["attention"].astype(np.float32)

    def maps() -> tuple[list, list]:
        traces = charts(at)["profile_token_maps"]["data"]
        return [t for t in traces if t["type"] == "heatmap"], [t for t in traces if t["type"] == "contour"]

    heat, contours = maps()
    assert len(heat) == grid[0] and len(contours) == grid[0]
    np.testing.assert_allclose(array(heat[1]["z"]), drift[0, 1, 0].reshape(grid)[1], rtol=1e-6)
    np.testing.assert_array_equal(array(contours[2]["z"]), tensors["token_class"].reshape(grid)[2].astype(float))

    at.selectbox(key="profile_layer").set_value("vace_blocks.1")
    at.select_slider(key="profile_step_drift").set_value(2)
    rerun(at)
    heat, _ = maps()
    np.testing.assert_allclose(array(heat[0]["z"]), drift[0, 2, 7].reshape(grid)[0], rtol=1e-6)

    at.radio(key="profile_quantity").set_value("attention contribution")
    rerun(at)
    at.select_slider(key="profile_step_attention").set_value(1)
    rerun(at)
    heat, _ = maps()
    slot = data["tensors"]["attention_steps"].index(1)
    np.testing.assert_allclose(array(heat[2]["z"]), attention[slot, 7].reshape(grid)[2], rtol=1e-6)
    title = charts(at)["profile_token_maps"]["layout"]["title"]["text"]
    assert title.startswith("attention contribution of vace_blocks.1 at step 1")


def test_profile_step_curve_and_cost(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "profile")
    data, _ = profile_data(demo_runs)
    curve = {t["name"].split(" (")[0]: t for t in charts(at)["profile_step_curve"]["data"]}
    assert curve["modulation change"]["y"] == pytest.approx(data["step_curve"]["modulation_change"])
    assert curve["measured"]["x"] == pytest.approx(data["step_curve"]["modulation_change"])
    fit = curve["fitted polynomial"]
    assert fit["y"] == pytest.approx(np.polyval(data["step_curve"]["polynomial"], fit["x"]).tolist())
    cost = {t["name"]: t for t in charts(at)["profile_cost"]["data"]}
    assert set(cost) == {"self_attention", "cross_attention", "ffn", "vace", "time (ms)"}
    assert cost["ffn"]["y"] == pytest.approx([layer["flops"]["ffn"] / 1e9 for layer in data["layers"]])
    assert cost["time (ms)"]["y"] == pytest.approx([layer["time_ms"] for layer in data["layers"]])


def test_profile_problems_are_reported_not_raised(dashboard, broken_runs):
    at = page(dashboard(broken_runs), "profile")
    at.selectbox(key="profile_folder").set_value("bad-profile")
    errors = texts(rerun(at).error)
    assert "not valid JSON" in errors and "bad-profile/profile.json" in errors
    at.selectbox(key="profile_folder").set_value("no-tensors-profile")
    assert "tensors.safetensors" in texts(rerun(at).error)


# -- study -------------------------------------------------------------------------------------------------------------


def numbers(trace: dict) -> list[int]:
    """Trial numbers of the points of an Optuna Pareto-front trace (from its hover text)."""
    return [int(re.search(r'"number": (\d+)', text).group(1)) for text in trace["text"]]


def test_study_pareto_front_separates_feasible_and_draws_the_budget(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "study")
    study = load_demo_study(demo_runs)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ok = [t for t in complete if feasible(t)]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["trials"], metrics["complete"], metrics["feasible"]) == (
        str(TRIALS),
        str(len(complete)),
        str(len(ok)),
    )

    figure = charts(at)["study_pareto"]
    traces = {t["name"]: t for t in figure["data"] if t.get("x")}
    assert sorted(numbers(traces["Infeasible Trial"])) == sorted(t.number for t in complete if not feasible(t))
    assert sum(len(numbers(t)) for t in traces.values()) == len(complete)
    points = {t.number: (t.user_attrs["quality"]["psnr"], t.value) for t in ok}
    for number in numbers(traces["Best Trial"]):  # no feasible trial is at least as good on both axes, better on one
        x, y = points[number]
        assert not any(a >= x and b >= y and (a > x or b > y) for a, b in points.values())
    assert [s["x0"] for s in figure["layout"]["shapes"]] == [BOUND]
    assert figure["layout"]["xaxis"]["title"]["text"] == "psnr"

    at.selectbox(key="study_metric").set_value("ssim_mask")
    at.radio(key="study_speedup").set_value("speedup_time")
    figure = charts(rerun(at))["study_pareto"]
    assert figure["layout"]["xaxis"]["title"]["text"] == "ssim_mask"
    assert not figure["layout"].get("shapes")  # the budget bounds psnr only
    ys = sorted(y for trace in figure["data"] for y in trace.get("y", []))
    assert ys == pytest.approx(sorted(t.user_attrs["speedup_time"] for t in complete))


def test_study_table_filters_importance_and_history(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "study")
    study = load_demo_study(demo_runs)
    table = at.dataframe[0].value
    assert sorted(table["trial"]) == [t.number for t in study.trials]
    at.checkbox(key="study_feasible_only").check()
    shown = rerun(at).dataframe[0].value
    assert sorted(shown["trial"]) == [t.number for t in study.trials if t.values and feasible(t)]
    at.checkbox(key="study_feasible_only").uncheck()
    threshold = float(np.median(table["speedup"]))
    at.number_input(key="study_min_speedup").set_value(threshold)
    shown = rerun(at).dataframe[0].value
    assert 0 < len(shown) < len(table) and (shown["speedup"] >= threshold).all()
    at.multiselect(key="study_states").set_value([])
    assert rerun(at).dataframe[0].value.empty
    importance = charts(at)["study_importance"]["data"][0]
    assert importance["y"] and set(importance["y"]) <= {p for t in study.trials for p in t.params}
    history = charts(at)["study_history"]["data"]
    assert max(len(trace.get("y") or []) for trace in history) == len(study.trials)


def test_study_export_writes_the_chosen_trials_policy(dashboard, demo_runs, tmp_path):
    at = page(dashboard(demo_runs), "study")
    study = load_demo_study(demo_runs)
    assert at.selectbox(key="study_trial").value == study.best_trial.number
    other = next(t for t in study.trials if t.values and t.number != study.best_trial.number)
    at.selectbox(key="study_trial").set_value(other.number)
    at.text_input(key="study_export_dir").set_value(str(tmp_path / "out"))
    rerun(at)
    decisions = charts(at)["study_decisions"]["data"][0]
    assert ["".join(row) for row in decisions["text"]] == list(other.user_attrs["decisions"].values())
    assert at.get("download_button")[0].proto.label == "Download policy"
    at.button(key="study_write").click()
    written = tmp_path / "out" / f"{study.study_name}-trial{other.number}.json"
    assert f"Wrote `{written}`" in texts(rerun(at).success)
    assert load_policy(written).to_dict() == load_policy(other.user_attrs["policy"]).to_dict()
    at.button(key="study_write").click()
    assert "already exists" in texts(rerun(at).error)


def test_study_storage_problems_are_reported(dashboard, broken_runs, demo_runs):
    at = page(dashboard(broken_runs), "study")
    assert "is not an SQLite database" in texts(at.error)
    missing = f"sqlite:///{broken_runs / 'missing.db'}"
    at = page(dashboard(broken_runs / "empty", storage=missing), "study")
    assert "does not exist" in texts(at.error)
    assert not (broken_runs / "missing.db").exists()  # reading never creates a database
    for storage in (study_url(demo_runs), str(demo_runs / "demo" / "tune" / "study.db")):  # a URL, or a file path
        at = page(dashboard(broken_runs / "empty", storage=storage), "study")
        assert at.selectbox(key="study_name").value == load_demo_study(demo_runs).study_name


def test_study_in_a_journal_file_is_found_and_shown(dashboard, demo_runs, tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    source = load_demo_study(demo_runs)
    journal = tmp_path / "runs" / "tune" / "study.log"
    journal.parent.mkdir(parents=True)
    optuna.copy_study(
        from_study_name=source.study_name,
        from_storage=study_url(demo_runs),
        to_storage=JournalStorage(JournalFileBackend(str(journal))),
    )
    at = page(dashboard(tmp_path / "runs"), "study")
    assert at.selectbox(key="study_storage").value == "tune/study.log"
    assert sorted(at.dataframe[0].value["trial"]) == [t.number for t in source.trials]
    assert {"study_pareto", "study_importance", "study_history"} <= set(charts(at))


# -- policy ------------------------------------------------------------------------------------------------------------


def expected_shares(policy, plan: str, counts: dict[str, int]) -> list[float]:
    """Mean share of tokens per block over the plan, by the rules of docs/method.md (PARTIAL steps)."""
    t, layers = policy.tokens, policy.layers
    partial = (
        counts["generative"] + round(t.margin_ratio * counts["margin"]) + round(t.context_ratio * counts["context"])
    )
    partial /= sum(counts.values())
    shares = []
    for name in LAYERS:
        kind, index = name.split(".")
        chosen = layers.partial_blocks if kind == "blocks" else layers.partial_vace_blocks
        share = partial if chosen is None or int(index) in chosen else 1.0
        shares.append(sum({"F": 1.0, "P": share, "R": 0.0}[c] for c in plan) / len(plan))
    return shares


def test_policy_page_plans_and_active_tokens(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "policy")
    assert f"`{shipped.names()[0]}` is a valid hetcache policy" in texts(at.success)  # the first shipped one
    at.selectbox(key="policy_pick_A").set_value("file: demo/tune/policy.json")
    rerun(at)
    policy = load_policy(demo_runs / "demo" / "tune" / "policy.json")
    record = json.loads((demo_runs / "demo" / "apply" / "run.json").read_text(encoding="utf-8"))
    data, _ = profile_data(demo_runs)
    plan = charts(at)["policy_plan"]["data"][0]
    rows = dict(zip(plan["y"], ("".join(r) for r in plan["text"]), strict=True))
    assert rows == {
        "stored in the policy": policy.step_plan.plan,
        "rule on profile demo/profile": plan_from_changes(data["step_curve"]["modulation_change"], policy.step_plan),
        "run demo/apply (box)": record["clips"][0]["stats"]["plan"],
    }
    assert at.selectbox(key=f"policy_plan_source_{policy.name}").value == "stored in the policy"
    bars = charts(at)["policy_active"]["data"]
    assert len(bars) == 1 and bars[0]["x"] == LAYERS
    counts = data["clips"][0]["token_classes"]
    assert bars[0]["y"] == pytest.approx(expected_shares(policy, policy.step_plan.plan, counts))

    at.selectbox(key="policy_counts_A").set_value("enter shares by hand")
    rerun(at).slider(key="policy_gen_A").set_value(0.5)
    rerun(at)
    at.slider(key="policy_margin_A").set_value(0.2)
    bars = charts(rerun(at))["policy_active"]["data"]
    manual = {"generative": 5000, "margin": 2000, "context": 3000}
    assert bars[0]["y"] == pytest.approx(expected_shares(policy, policy.step_plan.plan, manual))


def test_policy_page_compares_two_policies(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "policy")
    at.selectbox(key="policy_pick_A").set_value("file: demo/tune/policy.json")
    at.toggle(key="policy_compare").set_value(True)
    rerun(at)
    first = shipped.names()[0]
    assert at.selectbox(key="policy_pick_B").value == f"shipped: {first}"
    plans = charts(at)["policy_compare_plans"]["data"][0]
    assert plans["y"] == [
        f"A: {load_policy(demo_runs / 'demo' / 'tune' / 'policy.json').name}",
        f"B: {first}",
    ]
    assert len(charts(at)["policy_active"]["data"]) == 2
    fields = set(at.dataframe[-1].value["field"])
    assert {"name", "step_plan.plan", "provenance.created"} <= fields and "cache.offload" not in fields
    at.checkbox(key="policy_all_fields").check()
    diff = rerun(at).dataframe[-1].value
    assert diff.loc[diff["field"] == "cache.offload", "same"].item()


def test_uploaded_policies_are_parsed_and_validated():
    data = policy_view.parse_upload("p.json", json.dumps(load_policy("reference-psnr35").to_dict()).encode())
    assert policy_view.load_choice(data).name == "reference-psnr35"
    with pytest.raises(HetCacheError, match="not valid JSON"):
        policy_view.parse_upload("p.json", b"{")
    data["step_plan"]["reuse_threshold"] = "high"
    with pytest.raises(HetCacheError, match=r"step_plan\.reuse_threshold must be a number"):
        policy_view.load_choice(data)


def test_policy_validation_errors_name_the_field(dashboard, broken_runs):
    at = page(dashboard(broken_runs), "policy")
    at.selectbox(key="policy_pick_A").set_value("file: broken-policy.json")
    assert "tokens.margin_ratio must be ≤ 1.0" in texts(rerun(at).error)


# -- compare -----------------------------------------------------------------------------------------------------------


def test_compare_page_frames_metrics_and_slider(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "compare")
    record = json.loads((demo_runs / "demo" / "apply" / "run.json").read_text(encoding="utf-8"))
    clip = record["clips"][0]
    captions = [img.proto.imgs[0].caption for img in at.get("image")]
    assert captions[0] == "uncached, frame 0" and captions[2] == "|difference| × 8"
    at.slider(key="compare_frame").set_value(5)
    at.slider(key="compare_gain").set_value(16)
    captions = [img.proto.imgs[0].caption for img in rerun(at).get("image")]
    assert captions[0] == "uncached, frame 5" and captions[2] == "|difference| × 16"
    psnr = charts(at)["compare_psnr"]
    assert [t["name"] for t in psnr["data"]] == ["frame", "mask", "margin", "background", "seam"]
    assert all(len(t["y"]) == 9 for t in psnr["data"]) and psnr["layout"]["shapes"][0]["x0"] == 5
    regions = at.dataframe[0].value.set_index("region")
    assert regions.loc["mask", "psnr (dB)"] == pytest.approx(clip["quality"]["psnr_mask"])
    assert regions.loc["background", "ssim"] == pytest.approx(clip["quality"]["ssim_background"])
    decisions = charts(at)["compare_decisions"]["data"][0]
    recorded = clip["stats"]["decisions_by_context"]
    assert dict(zip(decisions["y"], ("".join(r) for r in decisions["text"]), strict=True)) == recorded


def test_compare_page_shows_the_time_speedup_with_its_spread(dashboard, demo_runs):
    at = page(dashboard(demo_runs), "compare")
    record = json.loads((demo_runs / "demo" / "apply" / "run.json").read_text(encoding="utf-8"))
    summary, clip = record["summary"], record["clips"][0]
    shown = {m.label: m.value for m in at.metric}
    spread = f"{summary['speedup_time_min']:.2f}–{summary['speedup_time_max']:.2f}"
    assert shown["speedup (time, min–max)"] == f"{summary['speedup_time']:.2f}× ({spread})"
    assert shown["speedup (FLOPs)"] == f"{summary['speedup_flops']:.3f}×"
    flagged = [w.value for w in at.warning if w.value.startswith("Wall-clock figure not trustworthy")]
    assert flagged == [f"Wall-clock figure not trustworthy: {w}" for w in summary["warnings"]]
    timing = at.dataframe[1].value.iloc[0]
    rounds = clip["timing"]
    assert timing["rounds"] == rounds["rounds"] == 3
    low, high = rounds["cached_denoise_s"]["min"], rounds["cached_denoise_s"]["max"]
    assert timing["cached s min–max"] == f"{low:.3f}–{high:.3f}"
    assert timing["speedup (time, min–max)"].startswith(f"{clip['speedup_time']:.2f}× (")


def test_app_starts_from_a_relative_path_in_the_repository_root(monkeypatch, demo_runs):
    """`streamlit run dashboard/app.py` from the repository root: the script's __file__ is relative."""
    root = APP.parents[1]
    monkeypatch.chdir(root)
    monkeypatch.setenv(sources.RUNS_ENV, str(demo_runs))
    at = rerun(AppTest(str(APP.relative_to(root)), default_timeout=180))
    assert at.title[0].value == "hetcache dashboard"
    assert page(at, "compare").title[0].value == "Compare"


def test_compare_problems_are_reported_not_raised(dashboard, broken_runs):
    at = page(dashboard(broken_runs), "compare")
    at.selectbox(key="compare_run").set_value("bad-run")
    assert "not valid JSON" in texts(rerun(at).error)
    at.selectbox(key="compare_run").set_value("no-videos-run")
    assert "box.uncached.mp4' does not exist" in texts(rerun(at).error)
    at.selectbox(key="compare_run").set_value("uncached-run")
    assert "no uncached/cached pair" in texts(rerun(at).warning) and not at.get("image")


# -- command line ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cli_builds_a_headless_loopback_server(demo_runs):
    port = free_port()
    url = study_url(demo_runs)  # checked before serving: the storage is a study database
    _, command, env = cli.prepare(["--runs", str(demo_runs), "--storage", url, "--port", str(port)])
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert {"--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}"} <= set(command)
    assert env[sources.RUNS_ENV] == str(demo_runs.resolve()) and env[sources.STORAGE_ENV] == url


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(InputError, match="is not a folder"):
        cli.prepare(["--runs", str(tmp_path / "missing")])
    assert cli.main(["--runs", str(tmp_path / "missing")]) == 2
    assert "hetcache-dashboard: error: --runs" in capsys.readouterr().err
    assert cli.main(["--port", "70000"]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main(["--runs", str(tmp_path), "--port", str(busy.getsockname()[1])]) == 2
    assert "pass another --port" in capsys.readouterr().err


def test_compare_page_names_the_trimmed_steps_of_a_blended_run(dashboard, tmp_path):
    """A run under blend with the discard trim: the page says which FULL steps the last block ran trimmed."""
    from hetcache.cli import main
    from hetcache.policy import Policy

    policy = tmp_path / "trim.json"
    Policy(name="trim").replace(rule="explicit", plan="FRF", trim_discarded=True).save(policy)
    flags = ["--weights", "random", "--height", "128", "--width", "128", "--frames", "9", "--steps", "3"]
    flags += ["--clips", "box", "--contract", "blend", "--policy", str(policy), "--no-strict", "--compare"]
    assert main(["run", *flags, "--out", str(tmp_path / "runs" / "blend")]) == 0
    at = page(dashboard(tmp_path / "runs"), "compare")
    assert "Discard trim on FULL steps 0, 2: the last block computed only" in texts(at.caption)
