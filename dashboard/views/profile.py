"""Profile page: where a model's redundancy is (drift per layer, step and token class), its step curve and cost."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from hetcache.dashboard import figures, profiles, ui

from hetcache.errors import HetCacheError

st.title("Profile")
found, _ = ui.sidebar()
if not found.profiles:
    ui.explain_missing(found, "profile folders (profile.json)")
    st.stop()

choices = {found.label(p): p for p in found.profiles}
chosen = ui.persisted_selectbox("Profile folder", list(choices), key="profile_folder")
with ui.friendly():
    profile = ui.load_profile(choices[chosen])
data = profile.data

# -- header and headroom verdict -----------------------------------------------------------------------------------
model = data.get("model") or {}
clips = data.get("clips") or []
st.caption(
    f"Model `{model.get('class', 'unknown')}` ({model.get('fingerprint', 'no fingerprint')}) · workload "
    f"`{(data.get('workload') or {}).get('name', '?')}` (editing contract "
    f"`{(data.get('workload') or {}).get('contract', 'none')}`) · {data.get('created', '')}"
)
cols = st.columns(3)
cols[0].metric("steps", data.get("steps", "?"))
cols[1].metric("layers", len(profile.layer_names))
cols[2].metric("clips", len(clips))
if clips:
    st.dataframe(
        pd.DataFrame([{"clip": c.get("name"), "grid": c.get("grid"), **(c.get("token_classes") or {})} for c in clips]),
        hide_index=True,
    )

headroom = data.get("headroom") or {}
st.subheader("Headroom verdict")
if headroom:
    verdict_box = {"high": st.success, "low": st.warning}.get(str(headroom.get("level")), st.info)
    verdict_box(str(headroom.get("verdict", "no verdict recorded")), icon=":material/speed:")
    for warning in headroom.get("warnings") or []:
        st.warning(str(warning))
    keys = ("small_change_step_share", "context_token_share", "context_vs_generative_drift")
    shares = {k: headroom.get(k) for k in keys}
    for col, (key, value) in zip(st.columns(len(shares)), shares.items(), strict=True):
        col.metric(key.replace("_", " "), f"{value:.3g}" if isinstance(value, (int, float)) else "n/a")
    if headroom.get("least_drifting_layers"):
        st.caption("Least drifting layers: " + ", ".join(map(str, headroom["least_drifting_layers"])))
else:
    st.info("This profile records no headroom verdict.")

# -- drift heatmaps ----------------------------------------------------------------------------------------------------
st.subheader("Drift by layer and step")
try:
    branches = profiles.branch_names(profile)
except HetCacheError as exc:
    ui.show_error(exc)
    branches = []
if branches:
    clip_names = profile.clip_names
    c1, c2 = st.columns(2)
    clip = c1.selectbox("Clip", clip_names, key="profile_clip") if len(clip_names) > 1 else clip_names[0]
    branch = branches.index(c2.radio("CFG branch", branches, horizontal=True, key="profile_branch"))
    with ui.friendly():
        steps, per_class = profiles.class_drift(profile, clip, branch)
    st.plotly_chart(figures.drift_heatmaps(per_class, profile.layer_names, steps), key="profile_drift")

    # -- per-token maps ------------------------------------------------------------------------------------------------
    st.subheader("Per-token maps over the latent frames")
    grid = profiles.token_grid(profile, clip)
    if grid is None:
        st.info("The per-token axis of this profile matches no recorded token grid, so it has no maps.")
    else:
        attention_steps = profiles.attention_steps(profile, clip)
        c1, c2, c3 = st.columns([1, 1, 2])
        kinds = ["drift", "attention contribution"] if attention_steps else ["drift"]
        quantity = c1.radio("Quantity", kinds, key="profile_quantity")
        layer = profile.layer_names.index(c2.selectbox("Layer", profile.layer_names, key="profile_layer"))
        choices = (steps or [0]) if quantity == "drift" else attention_steps
        step = (
            c3.select_slider("Step", choices, key=f"profile_step_{quantity.split()[0]}")
            if len(choices) > 1
            else choices[0]
        )
        with ui.friendly():
            values = profiles.token_map(profile, clip, quantity, branch, step, layer)
        pooled = " (pooled tokens)" if profile.meta.get("pooled") else ""
        title = f"{quantity} of {profile.layer_names[layer]} at step {step}{pooled}; outline: generative / margin"
        fig = figures.token_maps(values, profiles.class_grid(profile, clip), title, quantity)
        st.plotly_chart(fig, key="profile_token_maps")

# -- step-change curve -------------------------------------------------------------------------------------------------
st.subheader("Step-change curve")
curve = data.get("step_curve") or {}
if curve.get("modulation_change") and curve.get("output_change"):
    st.plotly_chart(
        figures.step_change(
            curve["modulation_change"], curve["output_change"], curve.get("polynomial"), curve.get("fit_r2")
        ),
        key="profile_step_curve",
    )
    if curve.get("polynomial"):
        st.caption(f"Polynomial (numpy.polyval order, degree {curve.get('degree')}): {curve['polynomial']}")
else:
    st.info("This profile records no step-change curve.")

# -- cost per layer ----------------------------------------------------------------------------------------------------
st.subheader("Cost per layer")
layers = data.get("layers") or []
if layers:
    st.plotly_chart(figures.layer_cost(layers), key="profile_cost")
    st.dataframe(pd.DataFrame(profiles.layer_table(profile)), hide_index=True)
else:
    st.info("This profile records no layers.")
