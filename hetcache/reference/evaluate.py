"""Does the reference model behave like a real one where caching is concerned? Measure it.

(a) attention of in-mask queries: share of mass on the top 10 % of keys; (b) caching deviation from the uncached
output of the same seed, inside the mask, near it and beyond the VAE's reach; (c) how the deviation moves with reused
steps and with the share of refreshed context tokens. Scores are always against the uncached run, never against
ground truth.

    python -m hetcache.reference.evaluate [--weights trained|random] [--clips box,moving]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..engine.registry import model_token_mask
from ..engine.wan_blocks import _modulation, _self_qkv, apply_rope
from ..policy import Policy
from ..tokens import pixel_mask_to_latent_mask
from ..workloads.clips import Clip
from ..workloads.execute import LoadedWorkload
from ..workloads.spec import ClipSource, Workload
from . import VAE_REACH, VAE_STRIDES

# PARTIAL steps recompute the generative tokens and half the margin; context tokens come from cache.
TOKEN_REUSE = Policy(name="evaluation").replace(margin_width=2, margin_ratio=0.5, context_ratio=0.0, selection="stride")


def token_reuse_plan(steps: int) -> str:
    """PARTIAL on every other step from step 3 to 60 % of the run, FULL elsewhere: late steps stay FULL, as every
    plan rule keeps them (a stale context at the last steps costs the whole frame, not the hole)."""
    return "".join("P" if 3 <= i < 0.6 * steps and i % 2 else "F" for i in range(steps))


def mask_regions(
    mask: torch.Tensor, latent_shape: Sequence[int], reach: tuple[int, int] = VAE_REACH
) -> dict[str, torch.Tensor]:
    """Masks [1, 1, T', H/8, W/8] of the latent cells inside the pixel edit mask [F, H, W] (conservative mapping),
    near it (within the VAE's `reach` (latent frames, latent cells), so their control latents show part of the grey
    hole) and outside (beyond it)."""
    inside = pixel_mask_to_latent_mask(mask, VAE_STRIDES)
    assert tuple(inside.shape[2:]) == tuple(latent_shape[2:])
    return reach_regions(inside, reach)


def reach_regions(inside: torch.Tensor, reach: tuple[int, int] = VAE_REACH) -> dict[str, torch.Tensor]:
    """Inside / near / outside masks from the latent cells inside the edit mask [1, 1, T', H', W']."""
    inside = inside.float()
    frames, cells = reach
    near = F.max_pool3d(inside, (2 * frames + 1, 2 * cells + 1, 2 * cells + 1), 1, (frames, cells, cells)) > 0.5
    inside = inside > 0.5
    return {"inside": inside, "near": near & ~inside, "outside": ~near}


def latent_regions(clip: Clip, latent_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """`mask_regions` of a clip's mask with the reference VAE's reach."""
    return mask_regions(torch.from_numpy(clip.mask), latent_shape, VAE_REACH)


def deviation(reference: torch.Tensor, cached: torch.Tensor, clip: Clip) -> dict[str, float]:
    """Mean squared deviation of the final latents in each region of `latent_regions` (NaN for an empty one)."""
    err = (cached - reference) ** 2
    return {name: float(err[mask.expand_as(err)].mean()) for name, mask in latent_regions(clip, err.shape).items()}


def caching_deviation(session: LoadedWorkload, clip: Clip, plan: str, policy: Policy = TOKEN_REUSE) -> dict[str, float]:
    """Deviation of a run with an explicit plan from the uncached run (same seed)."""
    reference = session.generate(clip, decode=False).latents
    cached, _ = session.generate_cached(clip, policy, strict=False, plan=plan, decode=False)
    return deviation(reference, cached.latents, clip)


@torch.no_grad()
def attention_concentration(session: LoadedWorkload, clip: Clip, step: int | None = None) -> float:
    """Mean share of attention mass on the top 10 % of keys, for in-mask queries, over main blocks and heads."""
    transformer = session.transformer
    calls_per_step = 2 if session.workload.guidance_scale > 1 else 1
    target = calls_per_step * ((session.workload.steps - 1) if step is None else step)  # the cond call of that step
    inside = model_token_mask(transformer, torch.from_numpy(clip.mask).float())[0].flatten()
    state = {"call": -1}
    shares: list[float] = []

    def on_call(module, args):
        state["call"] += 1

    def on_block(block, args):
        if state["call"] != target:
            return
        hidden, _, temb, rope = args[:4]
        shift, scale, *_ = _modulation(block, temb)
        normed = (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        query, key, _ = _self_qkv(block.attn1, normed)
        query, key = apply_rope(query, *rope), apply_rope(key, *rope)
        q, k = query[0, inside].float().transpose(0, 1), key[0].float().transpose(0, 1)  # [H, n, d]
        probs = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        top = max(1, round(0.1 * probs.shape[-1]))
        shares.append(float(probs.topk(top, dim=-1).values.sum(-1).mean()))

    handles = [transformer.register_forward_pre_hook(on_call)]
    handles += [block.register_forward_pre_hook(on_block) for block in transformer.blocks]
    try:
        session.generate(clip, decode=False)
    finally:
        for handle in handles:
            handle.remove()
    return sum(shares) / len(shares)


def evaluate(weights: str, clips: Sequence[str], steps: int = 20) -> dict:
    """All three measurements on the reference workload's clips."""
    workload = Workload(
        weights=weights, steps=steps, clips=tuple(ClipSource(k, kind=k, seed=101 * i) for i, k in enumerate(clips))
    )
    session = LoadedWorkload(workload)
    rows = []
    for clip in session.clips:
        reuse_plans = {0: "F" * steps}
        for reused in (2, 4, 6):
            plan = ["F"] * steps
            for i in range(reused):
                plan[3 + 2 * i] = "R"
            reuse_plans[reused] = "".join(plan)
        partial_plan = token_reuse_plan(steps)
        rows.append(
            {
                "clip": clip.name,
                "attention_top10": attention_concentration(session, clip),
                "token_reuse": caching_deviation(session, clip, partial_plan),
                "reused_steps": {
                    n: caching_deviation(session, clip, plan)["inside"] for n, plan in reuse_plans.items()
                },
                "context_refreshed": {
                    ratio: caching_deviation(session, clip, partial_plan, TOKEN_REUSE.replace(context_ratio=ratio))[
                        "inside"
                    ]
                    for ratio in (0.0, 0.25, 0.5)
                },
            }
        )
    return {"weights": weights, "steps": steps, "clips": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetcache.reference.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", choices=("trained", "random"), default="trained")
    parser.add_argument("--clips", default="box,ellipse,moving,band,two_regions")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.weights, args.clips.split(","), args.steps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
