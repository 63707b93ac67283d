"""Context stationarity is a measured property: the trained reference model's context changes less than its hole."""

from __future__ import annotations

import math

import pytest
import torch

from hetcache.stationarity import Stationarity, hole_and_context, session_stationarity
from hetcache.workloads import ClipSource, Workload
from hetcache.workloads.execute import LoadedWorkload

STEPS = 10
SMALL = dict(height=128, width=128, num_frames=13, steps=STEPS, clips=(ClipSource("box", kind="box", seed=7001),))


@pytest.fixture(scope="module")
def measured() -> dict[str, Stationarity]:
    out = {}
    for weights in ("trained", "random"):
        session = LoadedWorkload(Workload(weights=weights, **SMALL))
        out[weights] = session_stationarity(session, session.clips[0])
    return out


def test_one_change_per_step_from_the_conditional_call_only(measured):
    # guidance 5 calls the transformer twice per step; the second (unconditional) call is not a step of its own
    for result in measured.values():
        assert len(result.hole) == len(result.context) == STEPS - 1
        assert all(math.isfinite(v) and v > 0 for v in result.hole + result.context)
        assert math.isfinite(result.mid_run_ratio) and math.isfinite(result.last_step_ratio)


def test_trained_context_is_more_stationary_than_its_hole_and_than_at_random_init(measured):
    trained, random = measured["trained"], measured["random"]
    # random init ignores the mask: context and hole change alike
    assert 0.8 < random.mid_run_ratio < 1.25
    # trained: context outputs change markedly less than the hole's in the middle of the run
    assert trained.mid_run_ratio < 0.7 * random.mid_run_ratio
    middle = trained.mid_run_steps()
    assert all(trained.context[i] < trained.hole[i] for i in middle)
    # and the hole's change is the trained model's own, not the random one's
    trained_hole = sum(trained.hole[i] for i in middle)
    random_hole = sum(random.hole[i] for i in middle)
    assert not 0.5 < trained_hole / random_hole < 2.0


def test_mid_run_steps_and_ratios_follow_their_definitions():
    result = Stationarity(hole=(1.0, 2.0, 4.0, 4.0), context=(1.0, 1.0, 1.0, 8.0), mid_run=(0.3, 0.8))
    assert result.steps == 5 and result.mid_run_steps() == [1, 2]  # changes at steps 2 and 3 of 0..4
    assert result.mid_run_ratio == pytest.approx(2.0 / 6.0)
    assert result.last_step_ratio == pytest.approx(2.0)
    assert result.to_dict()["ratio"] == pytest.approx([1.0, 0.5, 0.25, 2.0])
    assert Stationarity.from_dict(result.to_dict()) == result


def test_recorder_regions_split_the_latent_grid_by_the_pixel_mask():
    mask = torch.zeros(9, 128, 128, dtype=torch.bool)
    mask[:, 32:64, 32:64] = True
    regions = hole_and_context(mask)((1, 16, 3, 16, 16))
    assert regions["hole"].sum() == 3 * 4 * 4  # latent cells 4..7 in each of 3 latent frames
    assert not (regions["hole"] & regions["context"]).any()
    assert regions["context"][0, 0, :, 0, 0].all() and not regions["context"][0, 0, :, 5, 5].any()
    tokens = torch.zeros(3, 8, 8, dtype=torch.bool)
    tokens[:, 2:4, 2:4] = True  # the same hole as a token mask (2x2 latent cells per token)
    from_tokens = hole_and_context(tokens)((1, 16, 3, 16, 16))
    assert all(torch.equal(from_tokens[name], regions[name]) for name in regions)
