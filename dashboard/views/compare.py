"""Compare page: the uncached and cached output of a run side by side, their difference and quality per region."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from hetcache.dashboard import figures, frames, ui

from hetcache.contracts import contract_note, parse_contract
from hetcache.metrics import REGIONS

st.title("Compare")
found, _ = ui.sidebar()
if not found.runs:
    ui.explain_missing(found, "run folders (run.json)")
    st.stop()

choices = {found.label(p): p for p in found.runs}
chosen = ui.persisted_selectbox("Run folder", list(choices), key="compare_run")
with ui.friendly():
    run = ui.load_run(choices[chosen])
record = run.record
summary = record.get("summary") or {}
policy_name = (record.get("policy") or {}).get("name")


def _time_text(row: dict) -> str:
    """The wall-clock speedup with its min–max over the timing rounds ('single run' in records without rounds)."""
    value = row.get("speedup_time")
    if not isinstance(value, (int, float)):
        return "n/a"
    low, high = row.get("speedup_time_min"), row.get("speedup_time_max")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{value:.2f}× ({low:.2f}–{high:.2f})"
    return f"{value:.2f}× (single run)"


rounds = (summary.get("timing") or {}).get("rounds")
cols = st.columns(4)
flops = summary.get("speedup_flops")
cols[0].metric("speedup (FLOPs)", f"{flops:.3f}×" if isinstance(flops, (int, float)) else "n/a")
cols[1].metric(
    "speedup (time, min–max)",
    _time_text(summary),
    help=f"median of {rounds} interleaved uncached/cached rounds, with their min–max"
    if rounds
    else "one uncached and one cached run: no spread recorded",
)
fraction = summary.get("flops_fraction")
cols[2].metric("FLOPs fraction", f"{fraction:.3f}" if isinstance(fraction, (int, float)) else "n/a")
contract = parse_contract((record.get("workload") or {}).get("contract") or summary.get("contract"))
headline = contract.headline_metrics[0]
psnr_mean = (summary.get("quality") or {}).get(headline)
label = "PSNR in the mask (mean)" if headline == "psnr_mask" else "PSNR (mean)"
cols[3].metric(label, f"{psnr_mean:.2f} dB" if isinstance(psnr_mean, (int, float)) else "n/a")
for warning in summary.get("warnings") or []:
    st.warning(f"Wall-clock figure not trustworthy: {warning}", icon=":material/timer_off:")
st.caption(
    f"Policy: `{policy_name or 'none (uncached run)'}` · editing contract `{contract}` · created "
    f"{record.get('created', '?')}"
)
if contract_note(contract):
    st.caption(contract_note(contract))
if not run.compared:
    st.warning(
        "This run holds no uncached/cached pair to compare. Re-run it with a policy and the comparison: "
        "`hetcache run --policy NAME --compare --out DIR`."
    )
    st.stop()

clip_names = [c["clip"] for c in run.clips]
clip = ui.persisted_selectbox("Clip", clip_names, key="compare_clip")
row = run.clip(clip)
paths = run.video_paths(clip)
with ui.friendly():
    uncached = ui.load_frames(paths["uncached"], "uncached output")
    cached = ui.load_frames(paths["cached"], "cached output")
if uncached.shape != cached.shape:
    st.error(
        f"The outputs of clip `{clip}` differ in size ({list(uncached.shape)} vs {list(cached.shape)}); "
        "the run folder is inconsistent. Re-create it with `hetcache run ... --compare`."
    )
    st.stop()
mask = None
if paths["mask"].is_file():
    with ui.friendly():
        mask = ui.load_mask(paths["mask"])
    if mask.shape != uncached.shape[:3]:
        mask = None

# -- frames ------------------------------------------------------------------------------------------------------------
count = uncached.shape[0]
c1, c2, c3 = st.columns([3, 2, 1])
frame = c1.slider("Frame", 0, count - 1, 0, key="compare_frame") if count > 1 else 0
gain = c2.slider("Difference gain", 1, 64, 8, key="compare_gain")
outline = c3.checkbox("Tint the mask", value=False, key="compare_tint", disabled=mask is None)
left, middle, right = st.columns(3)
shown_uncached, shown_cached = uncached[frame], cached[frame]
if outline and mask is not None:
    shown_uncached, shown_cached = frames.tint(shown_uncached, mask[frame]), frames.tint(shown_cached, mask[frame])
left.image(shown_uncached, caption=f"uncached, frame {frame}", width="stretch")
middle.image(shown_cached, caption=f"cached ({policy_name}), frame {frame}", width="stretch")
right.image(frames.difference(uncached[frame], cached[frame], gain), caption=f"|difference| × {gain}", width="stretch")


@st.cache_data(show_spinner=False, max_entries=16)
def _per_frame(folder: str, clip_name: str, stamp: str, _uncached, _cached, _mask):
    """Per-frame PSNR of one clip, cached per run folder, clip and run time (the arrays are not hashed)."""
    return frames.frame_psnr(_uncached, _cached, _mask)


series = _per_frame(str(run.folder), clip, str(record.get("created")), uncached, cached, mask)
st.plotly_chart(figures.frame_series(series, frame, "PSNR per frame and region", "PSNR (dB)"), key="compare_psnr")

# -- per-region metrics ------------------------------------------------------------------------------------------------
st.subheader("Quality per region (whole clip)")
quality = row.get("quality") or {}
table = []
for region in REGIONS:
    suffix = "" if region == "frame" else f"_{region}"
    table.append({"region": region, "psnr (dB)": quality.get(f"psnr{suffix}"), "ssim": quality.get(f"ssim{suffix}")})
st.dataframe(pd.DataFrame(table), hide_index=True, key="compare_regions")
extra = {k: quality[k] for k in ("latent_rel_l2", "lpips") if k in quality}
if extra:
    st.caption(" · ".join(f"{k}: {v if isinstance(v, str) else f'{v:.4g}'}" for k, v in extra.items()))

# -- what the engine did -----------------------------------------------------------------------------------------------
stats = row.get("stats") or {}
if isinstance(stats.get("decisions_by_context"), dict) and stats["decisions_by_context"]:
    st.plotly_chart(figures.plan_timeline(stats["decisions_by_context"]), key="compare_decisions")
elif isinstance(stats.get("decisions"), str) and stats["decisions"]:
    st.plotly_chart(figures.plan_timeline({"decisions": stats["decisions"]}), key="compare_decisions")
if isinstance(stats.get("trimmed_steps"), list) and stats["trimmed_steps"]:
    steps = ", ".join(str(step) for step in stats["trimmed_steps"])
    st.caption(
        f"Discard trim on FULL steps {steps}: the last block computed only the tokens the editing contract keeps "
        "(exact: the rest of its output is discarded)."
    )
rounds_of = row.get("timing") or {}
timing = {"uncached s (median)": row.get("uncached_denoise_s"), "cached s (median)": row.get("cached_denoise_s")}
for key, label in (("uncached_denoise_s", "uncached s"), ("cached_denoise_s", "cached s")):
    values = rounds_of.get(key) or {}
    timing[f"{label} min–max"] = f"{values['min']:.3f}–{values['max']:.3f}" if "min" in values else "n/a"
timing["speedup (time, min–max)"] = _time_text(row)
timing["speedup (FLOPs)"] = row.get("speedup_flops")
timing["rounds"] = rounds_of.get("rounds", 1)
st.dataframe(pd.DataFrame([timing]), hide_index=True, key="compare_timing")
