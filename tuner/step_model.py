"""The step-schedule model: one uncached pass per clip → a table of step-reuse errors → the best plans per cost.

Capture (`StepRecorder`): while the uncached run of a clip goes, hooks on the transformer record, for every
denoising step, the whole-stack residual R (head input − first main block input: what a REUSE step adds back to
its own first-block input) on a fixed subsample of tokens, combined over the guidance calls as the pipeline
combines their outputs, and the size of the latent update the step makes.

Table (`StepTable`): the Gram matrix of those residuals, a weight per step and the timesteps. Reusing at step j
the residual of the last computed step a (and, with the linear forecast, the one before it, p) errs in the head
input by R̂_j − R_j, with R̂_j = R_a, or R_a + f·(R_a − R_p) with f the engine's extrapolation factor
(t_j − t_a) / (t_a − t_p); scaled by w_j = ‖Δz_j‖ / ‖H_j‖ (the latent update of step j per unit of head input) it
is that step's share of the error of the final latents. A span of REUSE steps between two computed steps errs by
the norm of the sum of its steps' vectors — a quadratic form in the Gram matrix, so every span of every plan is
priced from the table alone. A plan's predicted error is the sum of its spans' errors (consecutive spans lag the
trajectory in much the same direction, so their norms add rather than their squares), averaged over clips,
relative to the final latents' norm: a first-order estimate of the `latent_rel_l2` of the plan that ignores the
drift a reused step causes in the inputs of later steps.

Search (`best_plans`): a shortest-path dynamic programme over the computed steps (nodes are steps, an edge a → b
reuses every step strictly between them, its weight the span's error), keeping the `keep` best plans for every
number of computed steps, under the policy's rules: the first `warmup` and the last `final` steps are FULL.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hetcache.engine.registry import block_adapter, family_of
from hetcache.steps import FULL, REUSE

MAX_TOKENS = 1024  # tokens a capture keeps per call (a fixed stride over the sequence): the error is a mean over them


@dataclass(frozen=True)
class StepTable:
    """What one clip's uncached pass leaves: timesteps, per-step weights and the Gram matrix of the residuals."""

    timesteps: np.ndarray  # [S] the value the engine reads per step (the noisiest token's timestep)
    weights: np.ndarray  # [S] ‖Δz_j‖ / ‖H_j‖: latent update per unit of head input
    gram: np.ndarray  # [S, S] inner products of the guided residuals (sampled tokens)
    scale: float  # ‖z_final‖: errors are reported relative to it

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def save(self, path: Path) -> None:
        """Written whole (a temporary file renamed), so a concurrent reader never sees a partial table."""
        from hetcache.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, timesteps=self.timesteps, weights=self.weights, gram=self.gram, scale=self.scale)

    @classmethod
    def load(cls, path: Path) -> StepTable | None:
        """The table at `path`, or None if it is missing or unreadable (then it is captured again)."""
        try:
            with np.load(path) as data:
                return cls(data["timesteps"], data["weights"], data["gram"], float(data["scale"]))
        except (OSError, KeyError, ValueError):
            return None


def guidance_weights(calls: int, batch: int, guidance_scale: float) -> list[float]:
    """How the pipeline combines the outputs of one step's items (calls × batch rows) into the one it steps with.

    Two items under guidance: cond + g·(cond − uncond). diffusers' Wan pipelines call the conditional pass first,
    in its own call; pipelines that batch both passes in one call (LTX-Video) put the unconditional one first.
    """
    items = calls * batch
    if items == 2 and guidance_scale != 1.0:
        g = float(guidance_scale)
        return [g, 1.0 - g] if calls == 2 else [1.0 - g, g]
    return [1.0 / items] * items


class StepRecorder:
    """Hooks on a transformer that record each call's sampled residual, head input and latent input.

    One host read per call (its timestep, as the engine reads one per step); the samples stay on the device until
    `table` assembles them after the run.
    """

    def __init__(self, transformer: torch.nn.Module, guidance_scale: float, tokens: int = MAX_TOKENS) -> None:
        layout = family_of(transformer).layout
        first = getattr(transformer, layout.main_blocks)[0]
        self._adapter = block_adapter(type(first))
        self.guidance_scale = guidance_scale
        self.tokens = tokens
        self.calls: list[dict] = []  # per call: t, x_in, head, latent update into this call (None: same step)
        self._pending: dict = {}
        self._last_latent: torch.Tensor | None = None
        self._handles = [
            transformer.register_forward_pre_hook(self._on_call, with_kwargs=True),
            first.register_forward_pre_hook(self._on_first_block, with_kwargs=True),
            getattr(transformer, layout.head).register_forward_pre_hook(self._on_head),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _sample(self, stream: torch.Tensor) -> torch.Tensor:
        count = stream.shape[1]
        if count <= self.tokens:
            return stream.detach().float().clone()
        index = torch.linspace(0, count - 1, self.tokens, device=stream.device).long()
        return stream.detach().index_select(1, index).float()

    def _on_call(self, module, args, kwargs) -> None:
        timestep = kwargs.get("timestep")
        latent = kwargs.get("hidden_states", args[0] if args else None)
        t = float(timestep.amax())
        update = None
        if not self.calls or self.calls[-1]["t"] != t:  # the first call of a step: the latent moved since
            if self._last_latent is not None:
                update = torch.linalg.vector_norm((latent.float() - self._last_latent).flatten())
            self._last_latent = latent.detach().float().clone()
        self._pending = {"t": t, "update": update, "batch": latent.shape[0]}

    def _on_first_block(self, module, args, kwargs) -> None:
        self._pending["x_in"] = self._sample(self._adapter.argument("hidden", args, kwargs))

    def _on_head(self, module, args) -> None:
        self._pending["head"] = self._sample(args[0])
        self.calls.append(self._pending)
        self._pending = {}

    def table(self, final_latents: torch.Tensor) -> StepTable:
        """Group the calls into steps, combine them as the guidance does, and build the clip's table."""
        steps: list[list[dict]] = []
        for call in self.calls:
            if not steps or steps[-1][0]["t"] != call["t"]:
                steps.append([])
            steps[-1].append(call)
        residuals, heads, updates = [], [], []
        for group in steps:
            batch = group[0]["batch"]
            weights = guidance_weights(len(group), batch, self.guidance_scale)
            rows = [(c["head"][i], c["x_in"][i]) for c in group for i in range(batch)]
            residuals.append(sum(w * (h - x) for w, (h, x) in zip(weights, rows, strict=True)).cpu())
            head = sum(w * h for w, (h, _) in zip(weights, rows, strict=True))
            heads.append(float(torch.linalg.vector_norm(head - head.mean(dim=-1, keepdim=True))))
        for group in steps[1:]:
            updates.append(float(group[0]["update"]))
        last = self._last_latent.cpu()
        final = final_latents.float().cpu()
        tail = float(torch.linalg.vector_norm((final - last).flatten())) if final.numel() == last.numel() else None
        updates.append(tail if tail is not None else (updates[-1] if updates else 1.0))
        stacked = torch.stack([r.flatten() for r in residuals]).double()
        return StepTable(
            timesteps=np.asarray([g[0]["t"] for g in steps], dtype=np.float64),
            weights=np.asarray([u / max(h, 1e-12) for u, h in zip(updates, heads, strict=True)], dtype=np.float64),
            gram=(stacked @ stacked.T).numpy(),
            scale=max(float(torch.linalg.vector_norm(final.flatten())), 1e-12),
        )


def _factor(timesteps: np.ndarray, p: int, a: int, j: int) -> float:
    """The engine's forecast factor at step j from computed steps p < a (0 without a step before a)."""
    if p < 0 or timesteps[a] == timesteps[p]:
        return 0.0
    return float((timesteps[j] - timesteps[a]) / (timesteps[a] - timesteps[p]))


def span_error(table: StepTable, p: int, a: int, b: int, forecast: bool) -> float:
    """Predicted error (relative to ‖z_final‖) of reusing every step strictly between computed steps a < b,
    the computed step before a being p (−1: none)."""
    coefficients = np.zeros(table.steps)
    for j in range(a + 1, b):
        f = _factor(table.timesteps, p, a, j) if forecast else 0.0
        w = table.weights[j]
        coefficients[a] += w * (1.0 + f)
        if f:
            coefficients[p] -= w * f
        coefficients[j] -= w
    return math.sqrt(max(float(coefficients @ table.gram @ coefficients), 0.0)) / table.scale


class StepModel:
    """The span errors of a set of clips' tables, averaged over the clips, for both forecast settings.

    `first_span` weighs the spans that start at the first step (flat reuse of the noisiest step's residual): the
    first-order estimate overprices them on a trained model, whose later steps damp an early error, so a schedule
    study fits the weight to its measured trials (`fit_first_span`) and plans again with it.
    """

    def __init__(self, tables: list[StepTable], first_span: float = 1.0) -> None:
        if not tables or len({t.steps for t in tables}) != 1:
            raise ValueError("a step model needs at least one table, all of the same step count")
        self.tables = tables
        self.steps = tables[0].steps
        self.first_span = first_span
        self._raw: dict[bool, np.ndarray] = {}
        self._costs: dict[bool, np.ndarray] = {}

    def with_first_span(self, weight: float) -> StepModel:
        """The same model with another first-span weight (the span errors are shared, not recomputed)."""
        other = StepModel(self.tables, weight)
        other._raw = self._raw
        return other

    def _span_errors(self, forecast: bool) -> np.ndarray:
        if forecast not in self._raw:
            s = self.steps
            cube = np.zeros((s + 1, s, s))
            for a in range(s):
                for b in range(a + 1, s):
                    for p in range(-1, a) if forecast else (-1,):
                        cube[p + 1, a, b] = np.mean([span_error(t, p, a, b, forecast) for t in self.tables])
                    if not forecast:
                        cube[:, a, b] = cube[0, a, b]
            self._raw[forecast] = cube
        return self._raw[forecast]

    def costs(self, forecast: bool) -> np.ndarray:
        """[p + 1, a, b] → the mean span error over the clips (p = −1 at index 0), the spans from the first step
        weighed by `first_span`; computed once per setting."""
        if forecast not in self._costs:
            cube = self._span_errors(forecast).copy()
            cube[:, 0, :] *= self.first_span
            self._costs[forecast] = cube
        return self._costs[forecast]

    def plan_error(self, plan: str, forecast: bool) -> float:
        """The predicted error of a plan (every step not REUSE counts as computed; PARTIAL's token error is not
        modelled)."""
        if len(plan) != self.steps:
            raise ValueError(f"plan {plan!r} has {len(plan)} steps; the model has {self.steps}")
        computed = [i for i, letter in enumerate(plan) if letter != REUSE]
        cube = self.costs(forecast)
        total, previous = 0.0, -1
        for a, b in itertools.pairwise(computed):
            total += cube[previous + 1, a, b]
            previous = a
        return float(total)


FIRST_SPAN_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 16))  # the weights `fit_first_span` chooses from
MIN_FIT_POINTS = 4  # measured plans a first-span fit needs (fewer: the weight stays 1)


def fit_first_span(model: StepModel, measured: list[tuple[str, bool, float]]) -> float:
    """The first-span weight under which the model's predicted errors of `measured` (plan, forecast, measured
    latent_rel_l2) match the measured ones best, up to a common scale (least squares on the log ratio)."""
    points = [(plan, forecast, error) for plan, forecast, error in measured if error > 0]
    if len(points) < MIN_FIT_POINTS:
        return 1.0
    scores = []
    for weight in FIRST_SPAN_WEIGHTS:
        weighed = model.with_first_span(weight)
        ratios = [math.log(error / max(weighed.plan_error(plan, forecast), 1e-12)) for plan, forecast, error in points]
        scores.append((float(np.var(ratios)), abs(weight - 1.0), weight))
    return min(scores)[2]


def plan_string(computed: tuple[int, ...], steps: int) -> str:
    """F at the computed steps, R elsewhere."""
    chosen = set(computed)
    return "".join(FULL if i in chosen else REUSE for i in range(steps))


def best_plans(
    model: StepModel, forecast: bool, warmup: int = 1, final: int = 1, keep: int = 3
) -> dict[int, list[tuple[float, str]]]:
    """For each number of computed steps k, the `keep` plans of least predicted error (least first), each
    (error, plan); the first `warmup` (≥ 1) and last `final` (≥ 1) steps FULL, as the engine's rules require.

    A dynamic programme over states (p, a) — the last two computed steps — that keeps, per state and count, the
    `keep` cheapest prefixes: exact for the span costs, which depend on p only through the forecast.
    """
    steps = model.steps
    warmup, final = max(1, warmup), max(1, final)
    forced = set(range(min(warmup, steps))) | set(range(max(0, steps - final), steps))
    cube = model.costs(forecast)
    states: dict[tuple[int, int], dict[int, list[tuple[float, tuple[int, ...]]]]] = {(-1, 0): {1: [(0.0, (0,))]}}
    done: dict[int, list[tuple[float, tuple[int, ...]]]] = {}
    for a in range(steps):
        for p in range(-1, a):
            entries = states.pop((p, a), None)
            if not entries:
                continue
            if a == steps - 1:
                for k, items in entries.items():
                    done.setdefault(k, []).extend(items)
                continue
            for b in range(a + 1, steps):
                if b - 1 > a and (b - 1) in forced:  # a forced step cannot be reused: no longer span either
                    break
                cost = cube[p + 1, a, b]
                target = states.setdefault((a, b), {})
                for k, items in entries.items():
                    merged = target.setdefault(k + 1, [])
                    merged.extend((c + cost, (*path, b)) for c, path in items)
                    if len(merged) > keep:
                        merged.sort()
                        del merged[keep:]
    return {
        k: [(float(c), plan_string(path, steps)) for c, path in sorted(items)[:keep]]
        for k, items in sorted(done.items())
    }
