"""Policy page: validate a policy file or a shipped one, see its step plan and active tokens, compare two policies."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from hetcache.dashboard import figures, policy_view, ui

from hetcache.errors import HetCacheError
from hetcache.policy import Policy
from hetcache.steps import FULL, PARTIAL, REUSE

UPLOAD = "upload a file…"
MANUAL = "enter shares by hand"

st.title("Policy")
found, _ = ui.sidebar()
options = policy_view.policy_options(found.policies, found.label)
profiles = ui.try_load_profiles(found)
runs = ui.try_load_runs(found)


def pick(slot: str) -> Policy | None:
    """A policy picker with its validation result; None when nothing valid is chosen."""
    choice = ui.persisted_selectbox(f"Policy {slot}", [*options, UPLOAD], key=f"policy_pick_{slot}")
    try:
        if choice == UPLOAD:
            upload = st.file_uploader(f"Policy file {slot}", type=["json"], key=f"policy_upload_{slot}")
            if upload is None:
                st.info("Choose a policy JSON file to validate it.")
                return None
            source = policy_view.parse_upload(upload.name, upload.getvalue())
        else:
            source = options[choice]
        policy = policy_view.load_choice(source)
    except HetCacheError as exc:
        ui.show_error(exc)
        return None
    st.success(
        f"`{policy.name}` is a valid hetcache policy (schema hetcache.policy/v1).", icon=":material/check_circle:"
    )
    return policy


def describe(policy: Policy) -> None:
    """Summary, provenance and the JSON of one policy."""
    if policy.description:
        st.markdown(policy.description)
    st.markdown("\n".join(policy_view.summary_lines(policy)))
    if policy.provenance:
        st.dataframe(
            pd.DataFrame([{"field": k, "value": str(v)} for k, v in policy.provenance.items()]),
            hide_index=True,
        )
    with st.expander("Policy JSON"):
        st.json(policy.to_dict())


def token_counts(slot: str) -> tuple[str, dict[str, int]]:
    """Token-class counts to estimate active tokens with: from a profile, a run, or entered by hand."""
    sources: dict[str, dict[str, int]] = {}
    for profile in profiles:
        counts = policy_view.counts_from_profile(profile)
        if counts:
            sources[f"profile {found.label(profile.folder)}"] = counts
    for run in runs:
        counts = policy_view.counts_from_run(run)
        if counts:
            sources[f"run {found.label(run.folder)}"] = counts
    choice = ui.persisted_selectbox("Token classes from", [*sources, MANUAL], key=f"policy_counts_{slot}")
    if choice != MANUAL:
        return choice, sources[choice]
    c1, c2 = st.columns(2)
    gen = c1.slider("generative share", 0.0, 1.0, 0.25, 0.01, key=f"policy_gen_{slot}")
    margin = c2.slider("margin share", 0.0, 1.0 - gen, min(0.15, 1.0 - gen), 0.01, key=f"policy_margin_{slot}")
    scale = 10_000
    return MANUAL, {
        "generative": round(gen * scale),
        "margin": round(margin * scale),
        "context": scale - round(gen * scale) - round(margin * scale),
    }


policy = pick("A")
if policy is None:
    st.stop()
describe(policy)

# -- step plan ---------------------------------------------------------------------------------------------------------
st.subheader("Step plan")
plans = policy_view.plan_sources(policy, profiles, runs, found.label)
if not plans:
    st.info(
        "This policy's plan follows its rule on the model's timesteps, and nothing here records them: add a "
        "profile of the model (hetcache-profile) or a run with this policy under the runs folder to see the plan."
    )
    st.stop()
st.plotly_chart(figures.plan_timeline(plans), key="policy_plan")
plan_source = ui.persisted_selectbox("Plan used below", list(plans), key=f"policy_plan_source_{policy.name}")
plan = plans[plan_source]
counts = {"full": plan.count(FULL), "partial": plan.count(PARTIAL), "reuse": plan.count(REUSE)}
st.caption(f"{len(plan)} steps: {counts['full']} full, {counts['partial']} partial, {counts['reuse']} reuse")

# -- active tokens per block -------------------------------------------------------------------------------------------
st.subheader("Active-token share per block")
main, vace = policy_view.block_names(policy, profiles[0] if profiles else None)
if not main:
    st.info("The policy names no model architecture and no profile is present, so its blocks are unknown.")
    st.stop()
counts_label, token_counts_a = token_counts("A")
with ui.friendly():
    shares = {policy.name: policy_view.active_share(policy, plan, token_counts_a, main, vace)}
st.caption(
    f"Expected from the policy's rules with the token classes of {counts_label}: a partial block computes "
    f"{policy_view.partial_share(policy, token_counts_a):.1%} of the tokens; full steps all, reuse steps none."
)

# -- comparison --------------------------------------------------------------------------------------------------------
other = None
if st.toggle("Compare with a second policy", key="policy_compare"):
    st.subheader("Policy B")
    other = pick("B")
if other is None:
    st.plotly_chart(figures.active_share(shares), key="policy_active")
    st.stop()

describe(other)
other_plans = policy_view.plan_sources(other, profiles, runs, found.label)
other_plan = other_plans.get(plan_source) or next(iter(other_plans.values()), None)
if other_plan is not None:
    both = {f"A: {policy.name}": plan, f"B: {other.name}": other_plan}
    st.plotly_chart(figures.plan_timeline(both), key="policy_compare_plans")
    with ui.friendly():
        shares[f"B: {other.name}"] = policy_view.active_share(other, other_plan, token_counts_a, main, vace)
    shares = {f"A: {policy.name}" if k == policy.name else k: v for k, v in shares.items()}
else:
    st.info(f"No plan is known for `{other.name}` (see the note above).")
st.plotly_chart(figures.active_share(shares), key="policy_active")
all_fields = st.checkbox("Show all fields", key="policy_all_fields")
st.dataframe(
    pd.DataFrame(policy_view.policy_diff(policy, other, only_different=not all_fields)),
    hide_index=True,
    key="policy_diff",
)
