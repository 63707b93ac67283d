"""Context stationarity: how much a model's predicted velocity changes per step in the edit region vs far from it.

Under flow matching (x_t = (1-t)·x0 + t·ε) the ideal velocity ε - x0 is constant along the sampling path wherever x0
is known, i.e. in the context of an inpainting edit; only the hole's prediction has to change. How close a model comes
to that decides how much token-level caching (reusing context outputs, recomputing the hole) can save, so it is
measured here on any WanVACE pipeline: a forward hook on the transformer reads the output of the first call of each
step (the conditional branch) and compares it with the previous step's, region by region.

    relative change at step k = mean |v_k - v_{k-1}| / mean |v_{k-1}|   (over the region's latent cells and channels)

Regions come from the pixel edit mask (`reference.evaluate.mask_regions`): latent cells inside the mask, and latent
cells beyond the VAE's reach from it (their conditioning latents show nothing of the hole).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .errors import InputError
from .reference import VAE_REACH
from .reference.evaluate import mask_regions, reach_regions

# Steps whose position k/(N-1) falls in this range make up the "mid-run" ratio.
MID_RUN = (0.35, 0.65)


@dataclass(frozen=True)
class Stationarity:
    """Per-step relative output change inside the hole and in the far context (steps 1..N-1), and their ratios."""

    hole: tuple[float, ...]
    context: tuple[float, ...]
    mid_run: tuple[float, float] = MID_RUN

    @property
    def steps(self) -> int:
        return len(self.hole) + 1

    @property
    def ratio(self) -> tuple[float, ...]:
        """Context change / hole change at each step (NaN where the hole did not change)."""
        return tuple(c / h if h > 0 else math.nan for c, h in zip(self.context, self.hole, strict=True))

    def mid_run_steps(self) -> list[int]:
        """Indices into `hole` / `context` (step k is index k-1) of the mid-run steps."""
        low, high = self.mid_run
        last = self.steps - 1
        return [k - 1 for k in range(1, self.steps) if low <= k / last <= high]

    @property
    def mid_run_ratio(self) -> float:
        """Mean context change over the mid-run steps / mean hole change over them."""
        picked = self.mid_run_steps()
        hole = sum(self.hole[i] for i in picked)
        return sum(self.context[i] for i in picked) / hole if hole > 0 else math.nan

    @property
    def last_step_ratio(self) -> float:
        return self.ratio[-1]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stationarity:
        """The inverse of `to_dict` (profile files, result files)."""
        return cls(tuple(data["hole"]), tuple(data["context"]), tuple(data.get("mid_run", MID_RUN)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "hole": list(self.hole),
            "context": list(self.context),
            "ratio": list(self.ratio),
            "mid_run": list(self.mid_run),
            "mid_run_ratio": self.mid_run_ratio,
            "last_step_ratio": self.last_step_ratio,
        }


def region_change(previous: torch.Tensor, current: torch.Tensor, region: torch.Tensor) -> float:
    """mean |current - previous| / mean |previous| over `region` ([1, 1, T', h, w] bool, broadcast over channels)."""
    region = region.to(current.device).expand_as(current)
    previous, current = previous.float(), current.float()
    base = previous.abs()[region].mean()
    return float((current - previous).abs()[region].mean() / base) if base > 0 else math.nan


def _output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)


def _timestep(args: tuple, kwargs: dict) -> float:
    timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    return float(torch.as_tensor(timestep).flatten()[0])


class VelocityRecorder:
    """Forward hook on a transformer: the per-step, per-region output change of the first call of each step.

    A step starts when the timestep changes; later calls of the same step (the unconditional branch) are ignored.
    `regions(latent_shape)` gives the "hole" and "context" masks once the output's shape is known.
    """

    def __init__(self, transformer: torch.nn.Module, regions: Callable[[Sequence[int]], dict[str, torch.Tensor]]):
        self.regions_for = regions
        self.regions: dict[str, torch.Tensor] | None = None
        self.previous: torch.Tensor | None = None
        self.last_t: float | None = None
        self.changes: dict[str, list[float]] = {"hole": [], "context": []}
        self.handle = transformer.register_forward_hook(self._after, with_kwargs=True)

    def _after(self, module, args, kwargs, output) -> None:
        t = _timestep(args, kwargs)
        if self.last_t is not None and t == self.last_t:
            return
        self.last_t = t
        value = _output(output)[:1].detach()
        if self.regions is None:
            self.regions = self.regions_for(value.shape)
        if self.previous is not None:
            for name, changes in self.changes.items():
                changes.append(region_change(self.previous, value, self.regions[name]))
        self.previous = value.clone()

    def result(self, mid_run: tuple[float, float] = MID_RUN) -> Stationarity:
        return Stationarity(tuple(self.changes["hole"]), tuple(self.changes["context"]), mid_run)


def hole_and_context(mask: torch.Tensor, reach: tuple[int, int] = VAE_REACH, patch: tuple[int, int] = (2, 2)):
    """Region function for `VelocityRecorder`: latent cells inside the edit mask and beyond the VAE's `reach` from it.

    `mask`: the pixel mask [F, H, W], or a token mask [T', h, w] of a transformer with spatial patch `patch`.
    """

    def regions(latent_shape: Sequence[int]) -> dict[str, torch.Tensor]:
        frames, height, width = latent_shape[2:]
        if tuple(mask.shape) == (frames, height // patch[0], width // patch[1]):
            cells = mask.bool().repeat_interleave(patch[0], 1).repeat_interleave(patch[1], 2)
            split = reach_regions(cells[None, None], reach)
        else:
            split = mask_regions(mask, latent_shape, reach)
        return {"hole": split["inside"], "context": split["outside"]}

    return regions


@torch.no_grad()
def context_stationarity(
    transformer: torch.nn.Module,
    run: Callable[[], Any],
    mask: torch.Tensor,
    reach: tuple[int, int] = VAE_REACH,
    mid_run: tuple[float, float] = MID_RUN,
) -> Stationarity:
    """Context stationarity of `transformer` while `run()` calls the (uncached) pipeline once on a clip whose pixel
    edit mask is `mask` [F, H, W]; `reach` is the VAE's reach (latent frames, latent cells) from the hole."""
    recorder = VelocityRecorder(transformer, hole_and_context(torch.as_tensor(mask), reach))
    try:
        run()
    finally:
        recorder.handle.remove()
    if not recorder.changes["hole"]:
        raise ValueError("the transformer was called for fewer than two steps: no change to measure")
    return recorder.result(mid_run)


def session_stationarity(session, clip, mid_run: tuple[float, float] = MID_RUN) -> Stationarity:
    """Context stationarity of a LoadedWorkload's transformer on one of its clips (uncached run, its seed)."""
    return context_stationarity(
        session.transformer,
        lambda: session.generate(clip, decode=False),
        torch.from_numpy(clip.mask),
        mid_run=mid_run,
    )


HELD_OUT = (("box", 7001), ("ellipse", 7002), ("moving", 7003))  # clips no policy or training run has seen


def measure(
    weights: str,
    size: int,
    steps: int = 20,
    clips: Sequence[tuple[str, int]] = HELD_OUT,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Stationarity of the reference model (`weights` trained or random) on held-out clips of side `size`; with
    `checkpoint`, of the transformer weights in a training checkpoint (`hetcache.reference.train`), cast to fp16 as a
    finished run saves them."""
    from . import reference
    from .workloads import ClipSource, Workload
    from .workloads.execute import LoadedWorkload

    sources = tuple(ClipSource(f"{kind}-{seed}", kind=kind, seed=seed) for kind, seed in clips)
    session = LoadedWorkload(
        Workload(weights=weights, height=size, width=size, num_frames=17, steps=steps, clips=sources)
    )
    if checkpoint is not None:
        saved = torch.load(checkpoint, weights_only=False)
        session.transformer.load_state_dict(saved["model"])
        reference.cast_like_from_pretrained(session.transformer, torch.float16).float()
        weights = f"checkpoint at step {saved['step']}"
    rows = {clip.name: session_stationarity(session, clip).to_dict() for clip in session.clips}
    mid = [row["mid_run_ratio"] for row in rows.values()]
    last = [row["last_step_ratio"] for row in rows.values()]
    return {
        "weights": weights,
        "size": size,
        "steps": steps,
        "mid_run_ratio": {"median": statistics.median(mid), "min": min(mid), "max": max(mid)},
        "last_step_ratio": {"median": statistics.median(last), "min": min(last), "max": max(last)},
        "clips": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetcache.stationarity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="trained,random", help="reference weights, comma-separated")
    parser.add_argument("--sizes", default="128,256", help="clip sides, comma-separated")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, help="measure the weights of this training checkpoint instead")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise InputError(f"--checkpoint '{args.checkpoint}' does not exist.", "pass a <out>.checkpoint.pt file.")
    weights = ["trained"] if args.checkpoint is not None else args.weights.split(",")
    results = [
        measure(w, int(size), args.steps, checkpoint=args.checkpoint) for w in weights for size in args.sizes.split(",")
    ]
    if args.out is not None:
        write_json(args.out, {"what": "context stationarity of the reference model", "results": results})
    for row in results:
        print(
            f"{row['weights']:>8} {row['size']}²: mid-run context/hole {row['mid_run_ratio']['median']:.3f} "
            f"[{row['mid_run_ratio']['min']:.3f}, {row['mid_run_ratio']['max']:.3f}], last step "
            f"{row['last_step_ratio']['median']:.3f} [{row['last_step_ratio']['min']:.3f}, "
            f"{row['last_step_ratio']['max']:.3f}]"
        )
    return 0


if __name__ == "__main__":
    from .cli_common import run_cli

    raise SystemExit(run_cli(main, None, "python -m hetcache.stationarity"))
