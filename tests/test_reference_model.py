"""The shipped reference model behaves like a real one where caching is concerned (orderings, not exact values)."""

from __future__ import annotations

import pytest

from hetcache import reference
from hetcache.reference.evaluate import TOKEN_REUSE, attention_concentration, caching_deviation, token_reuse_plan
from hetcache.workloads import ClipSource, Workload
from hetcache.workloads.execute import LoadedWorkload

STEPS = 10
SMALL = dict(height=128, width=128, num_frames=13, steps=STEPS, clips=(ClipSource("box", kind="box"),))
PARTIAL = token_reuse_plan(STEPS)


@pytest.fixture(scope="module")
def trained():
    session = LoadedWorkload(Workload(weights="trained", **SMALL))
    return session, session.clips[0]


@pytest.fixture(scope="module")
def untrained():
    session = LoadedWorkload(Workload(weights="random", **SMALL))
    return session, session.clips[0]


def test_token_reuse_plan_keeps_the_first_and_last_steps_full():
    assert PARTIAL == "FFFPFPFFFF"
    assert token_reuse_plan(20) == "FFFPFPFPFPFPFFFFFFFF"


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


def test_token_reuse_error_is_concentrated_inside_the_mask(trained, untrained):
    # Outside = latent cells beyond the VAE's reach from the hole: their control latents show no grey.
    error = caching_deviation(*trained, PARTIAL)
    assert error["inside"] >= 10 * error["outside"]
    assert error["inside"] > error["near"] > error["outside"]
    random = caching_deviation(*untrained, PARTIAL)
    assert random["inside"] < 10 * random["outside"]


def test_error_grows_with_reused_steps(trained):
    plans = ["F" * STEPS, "FFFRFFFFFF", "FFFRFRFFFF", "FFFRFRFRFF"]
    deviations = [caching_deviation(*trained, plan) for plan in plans]
    errors = [d["inside"] for d in deviations]
    assert errors[0] == 0.0
    assert errors[0] < errors[1] < errors[2] < errors[3]
    assert all(d["inside"] >= 10 * d["outside"] for d in deviations[1:])  # step reuse costs the hole most, too


def test_error_shrinks_when_more_context_tokens_are_refreshed(trained):
    errors = [
        caching_deviation(*trained, PARTIAL, TOKEN_REUSE.replace(context_ratio=ratio))["inside"]
        for ratio in (0.0, 0.25, 0.5, 1.0)
    ]
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_in_mask_attention_is_more_concentrated_than_at_random_init(trained, untrained):
    assert attention_concentration(*trained) > attention_concentration(*untrained) + 0.05
