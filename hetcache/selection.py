"""Which margin and context tokens a PARTIAL step recomputes (docs/method.md, "Token classes").

All selection runs on the device with tensor ops (no Python loop over tokens). Margin tokens are evenly spaced per
latent frame; context tokens by `stride`, `kmeans` (nearest to their cluster centre), `attention` (largest
attention mass from the generative queries) or `kmeans_attention` (per-cluster quotas, best scores inside).
"""

from __future__ import annotations

import torch

from .policy import FEATURE_SELECTIONS, SCORE_SELECTIONS
from .tokens import TokenClasses


def evenly_spaced(candidates: torch.Tensor, ratio: float, frames: int) -> torch.Tensor:
    """Pick round(ratio·n_f) of the n_f candidates of each frame, evenly spaced in token order.

    `candidates` is [B, N] bool with N = frames · tokens_per_frame; returns a [B, N] bool selection.
    """
    if ratio >= 1.0:
        return candidates.clone()
    if ratio <= 0.0:
        return torch.zeros_like(candidates)
    per_frame = candidates.view(candidates.shape[0], frames, -1)
    n = per_frame.sum(dim=-1, keepdim=True).float()
    k = torch.floor(ratio * n + 0.5)
    rank = per_frame.cumsum(dim=-1).float() - 1.0  # rank of each candidate inside its frame
    step = k / n.clamp(min=1.0)
    chosen = per_frame & (torch.floor((rank + 1.0) * step) > torch.floor(rank * step))
    return chosen.view_as(candidates)


def kmeans(
    features: torch.Tensor, clusters: int, seed: int = 0, iterations: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded Lloyd k-means on the device: features [n, D] → (labels [n], centres [k, D]).

    k-means++ initialisation with a fixed generator; a fixed number of iterations (no host sync for convergence).
    """
    n = features.shape[0]
    k = max(1, min(clusters, n))
    x = features.float()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    first = torch.randint(n, (1,), generator=gen, device=x.device)
    centres = [x[first]]
    closest = torch.cdist(x, centres[0]).squeeze(1) ** 2
    for _ in range(1, k):
        weights = closest.clamp(min=0) + 1e-12
        pick = torch.multinomial(weights, 1, generator=gen)
        centres.append(x[pick])
        closest = torch.minimum(closest, torch.cdist(x, centres[-1]).squeeze(1) ** 2)
    c = torch.cat(centres)
    labels = torch.cdist(x, c).argmin(dim=1)
    for _ in range(iterations):
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, labels, torch.ones_like(x[:, 0]))
        c = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), c)
        labels = torch.cdist(x, c).argmin(dim=1)
    return labels, c


def proportional_quotas(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Split `total` picks over groups proportionally to `sizes` (largest remainder), capped at each size."""
    share = sizes.float() * total / sizes.sum().clamp(min=1).float()
    base = torch.floor(share)
    missing = total - base.sum()
    order = torch.argsort(share - base, descending=True, stable=True)
    bonus = torch.zeros_like(base)
    bonus[order] = (torch.arange(len(order), device=sizes.device) < missing).float()
    return torch.minimum(base + bonus, sizes.float()).long()


def ranked_within_groups(groups: torch.Tensor, score: torch.Tensor, quotas: torch.Tensor) -> torch.Tensor:
    """Bool mask of the `quotas[g]` highest-scoring members of each group g (ties broken by position)."""
    by_score = torch.argsort(score, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    sorted_groups = groups[order]
    sizes = torch.bincount(groups, minlength=len(quotas))
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(len(order), device=groups.device) - starts[sorted_groups]
    chosen = torch.zeros_like(groups, dtype=torch.bool)
    chosen[order] = rank < quotas[sorted_groups]
    return chosen


def select_context(
    classes: TokenClasses,
    ratio: float,
    strategy: str,
    features: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    clusters: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Context tokens a PARTIAL step recomputes, [B, N] bool.

    `features` [B, N, D] are hidden states of the last FULL step (for k-means), `scores` [B, N] the attention
    mass of generative queries per key (for attention-based choices). Falls back to `stride` while neither exists
    (e.g. before the first FULL step has produced them).
    """
    context = classes.context
    frames = classes.grid[0]
    needs_features = strategy in FEATURE_SELECTIONS
    needs_scores = strategy in SCORE_SELECTIONS
    if ratio <= 0.0:
        return torch.zeros_like(context)
    if strategy == "stride" or (needs_features and features is None) or (needs_scores and scores is None):
        return evenly_spaced(context, ratio, frames)
    chosen = torch.zeros_like(context)
    for b in range(context.shape[0]):
        idx = context[b].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        want = round(ratio * idx.numel())
        if want == 0:
            continue
        if strategy == "attention":
            top = torch.topk(scores[b, idx].float(), want).indices
            chosen[b, idx[top]] = True
            continue
        labels, centres = kmeans(features[b, idx], clusters, seed=seed)
        sizes = torch.bincount(labels, minlength=centres.shape[0])
        quotas = proportional_quotas(sizes, want)
        if strategy == "kmeans":
            score = -(features[b, idx].float() - centres[labels]).norm(dim=1)
        else:
            score = scores[b, idx].float()
        chosen[b, idx[ranked_within_groups(labels, score, quotas)]] = True
    return chosen


def active_tokens(classes: TokenClasses, margin_ratio: float, context_choice: torch.Tensor) -> torch.Tensor:
    """Tokens computed on a PARTIAL step, [B, N] bool: generative ∪ sampled margin ∪ chosen context."""
    margin = evenly_spaced(classes.margin, margin_ratio, classes.grid[0])
    return classes.generative | margin | context_choice
