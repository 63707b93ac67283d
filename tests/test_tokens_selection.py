"""Token classes from masks, and the selection of margin / context tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from hetcache.attention_mass import key_attention_mass
from hetcache.engine.wan import WAN_VAE, token_mask_from_control
from hetcache.selection import evenly_spaced, kmeans, proportional_quotas, ranked_within_groups, select_context
from hetcache.tokens import classify_tokens, pool_frames_to_latent
from hetcache.tokens import pixel_mask_to_token_mask as to_tokens

PATCH = (1, 2, 2)


def pixel_mask_to_token_mask(mask, threshold=0.0):
    """At Wan's strides and patch (the mapping the reference model uses)."""
    return to_tokens(mask, WAN_VAE, PATCH, threshold)


def test_latent_frames_take_the_max_over_their_source_frames():
    mask = torch.zeros(1, 9, 16, 16)
    mask[0, 0, 0, 0] = 1  # frame 0 → latent 0
    mask[0, 4, 5, 5] = 1  # frames 1..4 → latent 1
    mask[0, 5, 9, 9] = 1  # frames 5..8 → latent 2
    latent = pool_frames_to_latent(mask, WAN_VAE.temporal)
    assert latent.shape == (1, 3, 16, 16)
    assert latent[0, 0, 0, 0] == 1 and latent[0, 1, 5, 5] == 1 and latent[0, 2, 9, 9] == 1
    assert latent.sum() == 3


def test_any_masked_pixel_marks_its_token_and_threshold_raises_the_bar():
    mask = torch.zeros(1, 1, 32, 48)
    mask[0, 0, 31, 47] = 1  # one pixel in the bottom-right corner of the last token
    tokens = pixel_mask_to_token_mask(mask)
    assert tokens.shape == (1, 1, 2, 3)
    assert tokens[0, 0, 1, 2] and tokens.sum() == 1
    assert pixel_mask_to_token_mask(mask, threshold=0.5).sum() == 0


def test_margin_is_euclidean_within_each_frame_and_empty_frames_get_none():
    gen = torch.zeros(1, 2, 11, 11, dtype=torch.bool)
    gen[0, 0, 5, 5] = True  # frame 1 has no generative token
    classes = classify_tokens(gen, margin_width=3)
    margin = classes.margin.view(2, 11, 11).numpy()
    expected = (distance_transform_edt(~gen[0, 0].numpy()) <= 3) & ~gen[0, 0].numpy()
    assert (margin[0] == expected).all()
    assert not margin[1].any()
    assert classes.counts() == {
        "generative": [1],
        "margin": [int(expected.sum())],
        "context": [242 - 1 - int(expected.sum())],
    }
    widened = classify_tokens(gen, margin_width=1, margin_frames=1)
    assert widened.margin.view(2, 11, 11)[1].sum() == 5  # the frame-0 disk (with its centre) reaches frame 1


def test_mask_from_control_states_agrees_with_the_pixel_mask():
    from diffusers import WanVACEPipeline

    from hetcache import reference

    pipe = WanVACEPipeline(
        vae=reference.random_vae(),
        transformer=reference.random_transformer(),
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
    )
    pixel = torch.zeros(1, 3, 9, 64, 64)
    pixel[..., 20:37, 8:30] = 1.0  # static, not aligned to the 16-pixel token grid
    control_mask = pipe.prepare_masks(pixel, [[]], None)
    control = torch.cat([torch.zeros(1, 32, *control_mask.shape[2:]), control_mask], dim=1)
    from_control = token_mask_from_control(control)
    from_pixels = pixel_mask_to_token_mask(pixel[:, 0])
    assert torch.equal(from_control, from_pixels)
    moving = torch.zeros(1, 3, 9, 64, 64)
    for frame in range(9):
        moving[..., frame, 4 * frame : 4 * frame + 8, 0:16] = 1.0
    control_mask = pipe.prepare_masks(moving, [[]], None)
    control = torch.cat([torch.zeros(1, 32, *control_mask.shape[2:]), control_mask], dim=1)
    subset, union = token_mask_from_control(control), pixel_mask_to_token_mask(moving[:, 0])
    assert (subset <= union).all() and union.sum() > subset.sum()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_evenly_spaced_picks_the_rounded_share_per_frame(ratio):
    candidates = torch.zeros(1, 3 * 20, dtype=torch.bool)
    candidates[0, :13] = True
    candidates[0, 20:27] = True
    picked = evenly_spaced(candidates, ratio, frames=3)
    assert not (picked & ~candidates).any()
    per_frame = picked.view(3, 20).sum(1).tolist()
    assert per_frame == [int(np.floor(ratio * 13 + 0.5)), int(np.floor(ratio * 7 + 0.5)), 0]
    if 0 < ratio < 1:
        positions = picked[0, :13].nonzero().squeeze(1)
        gaps = positions.diff()
        assert gaps.max() - gaps.min() <= 1  # evenly spaced, no clustering at the start


def test_quotas_are_proportional_and_sum_to_the_total():
    quotas = proportional_quotas(torch.tensor([10, 5, 1, 0, 4]), 7)
    assert quotas.sum() == 7 and quotas.tolist()[3] == 0
    assert quotas[0] >= quotas[1] >= quotas[2]
    groups = torch.tensor([0, 0, 1, 1, 1, 0])
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    chosen = ranked_within_groups(groups, score, torch.tensor([2, 1]))
    assert chosen.nonzero().squeeze(1).tolist() == [1, 3, 5]


def test_kmeans_is_seeded_and_separates_clear_clusters():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(50, 4, generator=gen) + 10, torch.randn(50, 4, generator=gen) - 10])
    labels, _centres = kmeans(points, 2, seed=3)
    again, _ = kmeans(points, 2, seed=3)
    assert torch.equal(labels, again)
    assert len(set(labels[:50].tolist())) == 1 and len(set(labels[50:].tolist())) == 1
    assert labels[0] != labels[-1]


def test_chunked_attention_mass_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    query, key = torch.randn(37, 3, 8, generator=gen), torch.randn(50, 3, 8, generator=gen)
    chunked = key_attention_mass(query, key, chunk=5)
    probs = torch.softmax(torch.einsum("qhd,nhd->hqn", query, key) / 8**0.5, dim=-1)
    assert torch.allclose(chunked, probs.sum(1).mean(0), atol=1e-5)
    assert chunked.sum().item() == pytest.approx(37.0, rel=1e-5)


def test_attention_selection_prefers_the_keys_generative_queries_attend_to():
    classes = classify_tokens(torch.zeros(1, 1, 4, 4, dtype=torch.bool).index_fill_(2, torch.tensor([0]), True), 0)
    scores = torch.arange(16, dtype=torch.float32).unsqueeze(0)
    chosen = select_context(classes, 0.25, "attention", scores=scores)
    assert chosen[0].nonzero().squeeze(1).tolist() == [13, 14, 15]  # 12 context tokens → 3 best
    fallback = select_context(classes, 0.25, "kmeans_attention")  # nothing captured yet → stride
    assert fallback.sum() == 3
