"""The shipped reference model behaves like a real one where caching is concerned (orderings, not exact values)."""

from __future__ import annotations

import pytest

from hetcache import reference
from hetcache.reference.evaluate import TOKEN_REUSE, attention_concentration, caching_deviation
from hetcache.workloads import ClipSource, Workload
from hetcache.workloads.execute import Session

STEPS = 10
SMALL = dict(height=128, width=128, num_frames=13, steps=STEPS, clips=(ClipSource("box", kind="box"),))
PARTIAL = "FF" + "PF" * 3 + "PF"  # PARTIAL every other step after warm-up


@pytest.fixture(scope="module")
def trained():
    session = Session(Workload(weights="trained", **SMALL))
    return session, session.clips[0]


@pytest.fixture(scope="module")
def untrained():
    session = Session(Workload(weights="random", **SMALL))
    return session, session.clips[0]


def test_shipped_model_is_verified_small_and_documented():
    card = reference.verify()
    weights = reference.MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    assert card["steps"] >= 1000 and card["seed"] == 0
    assert "not an inpainting model" in card["what"]


def test_in_mask_error_from_stale_context_only_after_training(trained, untrained):
    # PARTIAL steps recompute the hole; its deviation comes only through the stale context it attends to.
    inside = caching_deviation(*trained, PARTIAL)["inside"]
    random_inside = caching_deviation(*untrained, PARTIAL)["inside"]
    assert inside >= 100 * random_inside


@pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 8): the random-init VAE barely changes its latents when the hole is painted grey, so "
    "the control states already show the hole's content and the model copies them everywhere; token-reuse error "
    "is as large outside the mask as inside (ratio 0.3-0.9 measured)",
)
def test_token_reuse_error_is_concentrated_inside_the_mask(trained):
    error = caching_deviation(*trained, PARTIAL)
    assert error["inside"] >= 10 * error["outside"]


def test_error_grows_with_reused_steps(trained):
    plans = ["F" * STEPS, "FFFRFFFFFF", "FFFRFRFFFF", "FFFRFRFRFF"]
    errors = [caching_deviation(*trained, plan)["inside"] for plan in plans]
    assert errors[0] == 0.0
    assert errors[0] < errors[1] < errors[2] < errors[3]


def test_error_shrinks_when_more_context_tokens_are_refreshed(trained):
    errors = [
        caching_deviation(*trained, PARTIAL, TOKEN_REUSE.replace(context_ratio=ratio))["inside"]
        for ratio in (0.0, 0.25, 0.5, 1.0)
    ]
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_in_mask_attention_is_more_concentrated_than_at_random_init(trained, untrained):
    assert attention_concentration(*trained) > attention_concentration(*untrained) + 0.05
