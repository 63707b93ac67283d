"""Overview page: what the dashboard found under the runs folder, and where to look next."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from hetcache.dashboard import ui

st.title("hetcache dashboard")
found, storage = ui.sidebar()
st.markdown(
    "Look at a model's redundancy (**Profile**), pick a point on the speed/quality front of a tuning study "
    "(**Study**), inspect and compare cache policies (**Policy**), and see cached output next to the uncached "
    "one (**Compare**)."
)
st.caption(f"Runs folder: `{found.root}`" + (f" · storage: `{storage}`" if storage else ""))

if found.empty:
    ui.explain_missing(found, "profiles, studies, run folders or policy files")
else:
    counts = {
        "profiles": len(found.profiles),
        "studies": len(found.studies) + (1 if storage else 0),
        "run folders": len(found.runs),
        "policy files": len(found.policies),
    }
    for col, (name, count) in zip(st.columns(len(counts)), counts.items(), strict=True):
        col.metric(name, count)
    rows = [{"kind": "profile", "path": found.label(p)} for p in found.profiles]
    rows += [{"kind": "study storage", "path": found.label(s)} for s in found.studies]
    rows += [{"kind": "run folder", "path": found.label(r)} for r in found.runs]
    rows += [{"kind": "policy file", "path": found.label(p)} for p in found.policies]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

st.subheader("Pages")
st.page_link(
    "views/profile.py",
    label="Profile: drift, attention contribution, step-change curve, cost",
    icon=":material/insights:",
)
st.page_link("views/study.py", label="Study: Pareto front, trials, importance, export a policy", icon=":material/tune:")
st.page_link(
    "views/policy.py", label="Policy: validate, step plan, active tokens, compare two", icon=":material/description:"
)
st.page_link(
    "views/compare.py", label="Compare: uncached vs cached frames and per-region quality", icon=":material/compare:"
)
