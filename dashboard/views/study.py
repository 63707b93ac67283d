"""Study page: the speed/quality front of a tuning study, its trials, what mattered, and exporting a trial's policy."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import streamlit as st
from hetcache.dashboard import figures, studies, ui
from optuna.trial import TrialState

from hetcache.errors import HetCacheError

st.title("Study")
found, storage = ui.sidebar()
urls = ([storage] if storage else []) + [u for u in found.studies if u != storage]
if not urls:
    ui.explain_missing(found, "study storages (*.db SQLite files or Optuna journal files)")
    st.caption("A study in another storage (e.g. PostgreSQL) opens with `hetcache-dashboard --storage URL`.")
    st.stop()

labels = {(found.label(u) if u in found.studies else u): u for u in urls}
url = labels[ui.persisted_selectbox("Study storage", list(labels), key="study_storage")]
with ui.friendly():
    names = studies.study_names(url)
if not names:
    st.info(f"The storage `{url}` holds no studies yet. Start one with `hetcache-tune --storage {url}`.")
    st.stop()
name = ui.persisted_selectbox("Study", names, key="study_name")
with ui.friendly():
    study = studies.load_study(url, name)
    judged = studies.verdicts(study)  # the tuner's own reading: feasibility, best trial, Pareto front
trials = study.get_trials(deepcopy=False)
complete = [t for t in trials if t.state == TrialState.COMPLETE]
feasible = [t for t in complete if t.number in judged.feasible_numbers]
budget = judged.budget.as_dict()
attrs = study.user_attrs

cols = st.columns(5)
cols[0].metric("trials", len(trials))
cols[1].metric("complete", len(complete))
cols[2].metric("feasible", len(feasible))
cols[3].metric("pruned", sum(t.state == TrialState.PRUNED for t in trials))
best = judged.best
cols[4].metric("best speedup", f"{best.value:.3f}×" if best is not None else "n/a")
st.caption(
    f"Budget: {judged.budget.describe()}, speedup ≥ {judged.budget.min_speedup:g}× · objective: "
    f"{judged.objective} speedup · workload: {(attrs.get('workload') or {}).get('name', 'n/a')} · editing contract "
    f"`{(attrs.get('workload') or {}).get('contract', 'none')}`"
)
if not complete:
    st.info("No trial has completed yet; the front, importance and export appear once one has.")
    st.stop()

# -- Pareto front ------------------------------------------------------------------------------------------------------
st.subheader("Pareto front")
metrics = studies.quality_metrics(complete)
if not metrics:
    st.warning("The completed trials record no numeric quality metrics (user attribute 'quality').")
    st.stop()
default_metric = next((m for m in budget if m in metrics), metrics[0])
c1, c2, c3 = st.columns(3)
metric = c1.selectbox("Quality metric", metrics, index=metrics.index(default_metric), key="study_metric")
speedups = [k for k in studies.SPEEDUPS if k == "objective" or any(k in t.user_attrs for t in complete)]
speedup = c2.radio("Speedup", speedups, format_func=studies.SPEEDUPS.get, horizontal=True, key="study_speedup")
modes = list(studies.QUALITY_KEYS)
mode = c3.radio(
    "Quality over clips",
    modes,
    index=modes.index(attrs.get("budget_mode")) if attrs.get("budget_mode") in modes else 0,
    horizontal=True,
    key="study_mode",
)
points = studies.front_points(trials, judged, metric, speedup, mode)
st.plotly_chart(figures.pareto_front(points, metric, studies.SPEEDUPS[speedup], budget.get(metric)), key="study_pareto")
front_numbers = sorted(number for number, _, _ in points["Best Trial"])
st.caption(f"Pareto-optimal feasible trials for {metric}: {', '.join(map(str, front_numbers)) or 'none'}")

# -- trial table -------------------------------------------------------------------------------------------------------
st.subheader("Trials")
table = studies.trial_table(trials, judged)
f1, f2, f3 = st.columns(3)
states = sorted(table["state"].unique())
chosen_states = f1.multiselect("State", states, default=states, key="study_states")
feasible_only = f2.checkbox("Feasible only", key="study_feasible_only")
min_speedup = f3.number_input("Minimum speedup", min_value=0.0, value=0.0, step=0.1, key="study_min_speedup")
shown = table[table["state"].isin(chosen_states)]
if feasible_only:
    shown = shown[shown["feasible"].fillna(False).astype(bool)]
if min_speedup > 0:
    shown = shown[shown["speedup"].fillna(0.0) >= min_speedup]
st.dataframe(shown, hide_index=True, key="study_table")
st.caption(f"{len(shown)} of {len(table)} trials shown")

# -- importance and history --------------------------------------------------------------------------------------------


@st.cache_data(show_spinner="Computing parameter importance…", max_entries=8)
def _importance(storage_url: str, study_name: str, n_complete: int):
    """Optuna's parameter-importance figure (cached per number of completed trials)."""
    del n_complete  # part of the cache key only
    return optuna.visualization.plot_param_importances(studies.load_study(storage_url, study_name))


left, right = st.columns(2)
with left:
    try:
        st.plotly_chart(_importance(url, name, len(complete)), key="study_importance")
    except (ValueError, RuntimeError) as exc:
        st.info(f"Parameter importance is not available yet ({exc}); it needs completed trials with varied parameters.")
with right:
    st.plotly_chart(optuna.visualization.plot_optimization_history(study), key="study_history")

# -- pick a trial and export its policy --------------------------------------------------------------------------------
st.subheader("Export a trial's policy")
pickable = [int(n) for n in shown.loc[shown["state"] == TrialState.COMPLETE.name, "trial"]]
if not pickable:
    st.info("No completed trial matches the filters above.")
    st.stop()
by_number = {t.number: t for t in complete}
default = best.number if best is not None and best.number in pickable else pickable[0]


def _describe(number: int) -> str:
    """The trial picker's label: speedup, chosen metric, feasibility."""
    t = by_number[number]
    value = studies.quality_of(t, metric, mode)
    tail = f", {metric} {value:.4g}" if value is not None else ""
    verdict = "feasible" if number in judged.feasible_numbers else "infeasible"
    return f"trial {number}: speedup {t.value:.3f}×{tail} ({verdict})"


number = st.selectbox("Trial", pickable, index=pickable.index(default), format_func=_describe, key="study_trial")
trial = by_number[number]
with ui.friendly():
    policy = studies.trial_policy(trial)

per_clip = trial.user_attrs.get("quality_per_clip") or {}
if per_clip:
    st.dataframe([{"clip": clip, **values} for clip, values in per_clip.items()], hide_index=True, key="study_clips")
decisions = trial.user_attrs.get("decisions") or {}
if decisions:
    st.plotly_chart(figures.plan_timeline(decisions), key="study_decisions")
with st.expander("Policy JSON"):
    st.json(policy.to_dict())

text = json.dumps(policy.to_dict(), indent=2) + "\n"
file_name = st.text_input("File name", value=f"{name}-trial{number}.json", key=f"study_file_name_{name}_{number}")
st.download_button("Download policy", data=text, file_name=file_name, mime="application/json", key="study_download")
e1, e2 = st.columns([3, 1])
folder = e1.text_input("Or write it to a folder", value=str(found.root / "exported"), key="study_export_dir")
overwrite = e2.checkbox("Overwrite", key="study_overwrite")
if st.button("Write policy file", key="study_write"):
    target = Path(folder).expanduser() / file_name
    if target.exists() and not overwrite:
        st.error(f"`{target}` already exists. Tick Overwrite, or change the file name.")
    else:
        try:
            policy.save(target)
        except (OSError, HetCacheError) as exc:
            st.error(f"Could not write `{target}`: {exc}")
        else:
            st.success(f"Wrote `{target}`")
