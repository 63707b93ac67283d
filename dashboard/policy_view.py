"""Policies for display: where to pick them from, their step plan for a known step series, expected active tokens.

The plan comes from the policy itself (explicit plan), from `hetcache.plan.plan_from_changes` on a profile's recorded
modulation changes, or from the decisions a run recorded. The active-token share is the expectation the policy's
rules give for a clip's token-class counts (the engine's measured `active_fraction` per step is in run.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hetcache import policies as shipped
from hetcache.errors import HetCacheError
from hetcache.plan import plan_from_changes
from hetcache.policy import Policy, load_policy
from hetcache.steps import FULL, PARTIAL, REUSE

from .readers import DataError, ProfileView, RunView

SHIPPED_PREFIX = "shipped: "


def policy_options(files: list[Path], label) -> dict[str, str]:
    """Choices for a policy picker: shipped policies by name, then policy files found under the runs folder."""
    options = {f"{SHIPPED_PREFIX}{row['name']}": row["name"] for row in shipped.index()}
    options.update({f"file: {label(path)}": str(path) for path in files})
    return options


def load_choice(source: str | dict) -> Policy:
    """Load and validate a shipped name, a file path or a JSON dict; DataError carries the field-named message."""
    try:
        return load_policy(source)
    except HetCacheError as exc:
        raise DataError(exc.what, exc.fix) from None


def parse_upload(name: str, payload: bytes) -> dict[str, Any]:
    """The JSON object of an uploaded policy file."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"uploaded file '{name}' is not valid JSON ({exc}).", "upload a policy JSON file.") from None
    if not isinstance(data, dict):
        raise DataError(f"uploaded file '{name}' does not hold a JSON object.", "upload a policy JSON file.")
    return data


def summary_lines(policy: Policy) -> list[str]:
    """A short markdown list of what the policy does and what it was made for."""
    model = f"`{policy.model.class_name}` ({policy.model.fingerprint})" if policy.model else "any model"
    w = policy.workload
    size = f", {w.width}×{w.height}×{w.num_frames}" if w and w.width and w.height and w.num_frames else ""
    contract = f", editing contract `{w.contract}`" if w and w.contract else ""
    made_for = f"{w.steps} steps{size}{contract}" if w else "any workload"
    s, t, layers = policy.step_plan, policy.tokens, policy.layers
    if s.rule == "explicit":
        rule = f"explicit plan `{s.plan}`"
    else:
        rule = (
            f"accumulated change: reuse below {s.reuse_threshold:g}, full from {s.full_threshold:g}, "
            f"{s.warmup_steps} warm-up and {s.final_full_steps} final full steps"
            + (", rescaled by the profile's polynomial" if s.polynomial else "")
        )
    blocks = "all" if layers.partial_blocks is None else (", ".join(map(str, layers.partial_blocks)) or "none")
    vace = "all" if layers.partial_vace_blocks is None else (", ".join(map(str, layers.partial_vace_blocks)) or "none")
    return [
        f"- **Model:** {model}; **tuned for:** {made_for}",
        f"- **Step plan:** {rule}",
        f"- **Tokens on partial steps:** margin width {t.margin_width} at ratio {t.margin_ratio:g}; context ratio "
        f"{t.context_ratio:g} by {t.selection}" + (f" ({t.clusters} clusters)" if "kmeans" in t.selection else ""),
        f"- **Partial blocks:** {blocks}; **partial VACE blocks:** {vace}; **cache:** {policy.cache.dtype}"
        + (", offloaded" if policy.cache.offload else ""),
    ]


def plan_from_profile(policy: Policy, profile: ProfileView) -> str:
    """The plan the policy's rule gives on the profile's timesteps (its explicit plan when the rule is explicit)."""
    spec = policy.step_plan
    if spec.rule == "explicit" and spec.plan:
        return spec.plan
    changes = (profile.data.get("step_curve") or {}).get("modulation_change")
    if not isinstance(changes, list) or not all(isinstance(c, (int, float)) for c in changes):
        raise DataError(f"profile '{profile.folder}' records no modulation changes.", "re-run hetcache-profile.")
    return plan_from_changes([float(c) for c in changes], spec)


def plan_sources(policy: Policy, profiles: list[ProfileView], runs: list[RunView], label) -> dict[str, str]:
    """Every plan known for this policy: stored in it, resolved on each profile, recorded by runs that used it."""
    plans: dict[str, str] = {}
    if policy.step_plan.plan:
        plans["stored in the policy"] = policy.step_plan.plan
    for profile in profiles:
        try:
            plans[f"rule on profile {label(profile.folder)}"] = plan_from_profile(policy, profile)
        except DataError:
            continue
    for run in runs:
        used = (run.record.get("policy") or {}).get("name")
        if used != policy.name:
            continue
        for clip in run.clips:
            recorded = (clip.get("stats") or {}).get("plan")
            if isinstance(recorded, str) and recorded:
                plans[f"run {label(run.folder)} ({clip['clip']})"] = recorded
                break
    return plans


def block_names(policy: Policy, profile: ProfileView | None = None) -> tuple[list[int], list[int]]:
    """Main and VACE block indices, from the policy's model architecture or else a profile's layers."""
    arch = policy.model.architecture if policy.model is not None else {}
    if isinstance(arch.get("num_layers"), int):
        return list(range(arch["num_layers"])), list(range(len(arch.get("vace_layers") or [])))
    if profile is not None:
        layers = profile.data.get("layers", [])
        main = [int(x["index"]) for x in layers if x.get("kind") == "main" and isinstance(x.get("index"), int)]
        vace = [int(x["index"]) for x in layers if x.get("kind") == "vace" and isinstance(x.get("index"), int)]
        return sorted(main), sorted(vace)
    return [], []


def partial_share(policy: Policy, counts: dict[str, int]) -> float:
    """Expected share of tokens a partial block computes: all generative, margin and context at the policy's ratios."""
    gen, margin, context = (int(counts.get(k, 0)) for k in ("generative", "margin", "context"))
    total = gen + margin + context
    if total <= 0:
        raise DataError("token-class counts are all zero.", "pick a profile or run with a non-empty clip.")
    tokens = policy.tokens
    return (gen + round(tokens.margin_ratio * margin) + round(tokens.context_ratio * context)) / total


def active_share(
    policy: Policy, plan: str, counts: dict[str, int], main: list[int], vace: list[int]
) -> dict[str, float]:
    """Mean share of tokens each block computes over the plan (FULL 1, REUSE 0, PARTIAL the partial share)."""
    share = partial_share(policy, counts)
    out: dict[str, float] = {}
    for prefix, indices, chosen in (
        ("blocks", main, policy.layers.partial_blocks),
        ("vace_blocks", vace, policy.layers.partial_vace_blocks),
    ):
        for i in indices:
            partial = share if chosen is None or i in chosen else 1.0
            per_step = [
                1.0 if c == FULL else 0.0 if c == REUSE else partial for c in plan if c in (FULL, PARTIAL, REUSE)
            ]
            out[f"{prefix}.{i}"] = sum(per_step) / max(len(per_step), 1)
    return out


def counts_from_profile(profile: ProfileView) -> dict[str, int] | None:
    """Token-class counts summed over the profile's clips."""
    clips = profile.data.get("clips") or []
    total = {"generative": 0, "margin": 0, "context": 0}
    for clip in clips:
        for key in total:
            total[key] += int((clip.get("token_classes") or {}).get(key) or 0)
    return total if sum(total.values()) else None


def counts_from_run(run: RunView) -> dict[str, int] | None:
    """Token-class counts summed over a run's clips (engine stats)."""
    total = {"generative": 0, "margin": 0, "context": 0}
    for clip in run.clips:
        classes = (clip.get("stats") or {}).get("token_classes") or {}
        for key in total:
            value = classes.get(key)
            total[key] += int(sum(value) if isinstance(value, list) else value or 0)
    return total if sum(total.values()) else None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b.c": value}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def policy_diff(a: Policy, b: Policy, only_different: bool = True) -> list[dict[str, str]]:
    """Field-by-field comparison of two policies (JSON forms)."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    rows = []
    for key in list(dict.fromkeys([*fa, *fb])):
        va, vb = fa.get(key), fb.get(key)
        if only_different and va == vb:
            continue
        rows.append({"field": key, "A": json.dumps(va), "B": json.dumps(vb), "same": va == vb})
    return rows
