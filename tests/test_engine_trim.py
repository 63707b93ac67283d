"""The discard trim (`tokens.trim_discarded`): on FULL steps whose output outside the contract's latent mask is
discarded, the last block computes only the tokens inside it. Exact under blend and paste, bit-identical when off,
FLOPs counted as FlopCounterMode counts them, the steps it ran on recorded."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import SOME, box_token_mask, denoise, model_inputs, tiny_vace_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hetcache import apply_hetcache, remove_hetcache
from hetcache.cost import CostModel
from hetcache.engine.trim import Discarded
from hetcache.errors import InputError
from hetcache.policy import Policy
from hetcache.reference import TEXT_LEN
from hetcache.workloads import Workload
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import parse_clip_names

pytestmark = pytest.mark.usefixtures("no_grad")

TIMES = (900.0, 800.0, 700.0)
FULL = Policy(name="full")
TRIM = FULL.replace(trim_discarded=True)


def box_weights(frames: int = 3, cells: int = 16, box: tuple[int, int] = (3, 11)) -> torch.Tensor:
    """Latent edit weights [1, 1, T', H', W'] of a static box of cells (tokens 1–5 of 8 touch it: patch 2×2)."""
    weights = torch.zeros(1, 1, frames, cells, cells)
    weights[..., box[0] : box[1], box[0] : box[1]] = 1.0
    return weights


def every_step(weights: torch.Tensor | None = None) -> Discarded:
    return Discarded(box_weights() if weights is None else weights, every_step=True)


def run(model, policy, plan, discarded, inputs, times=TIMES):
    handle = apply_hetcache(model, policy, strict=False, plan=plan, discarded=discarded)
    try:
        return denoise(model, inputs, times), handle.stats(), handle.state
    finally:
        remove_hetcache(model)


def test_a_token_is_inside_when_any_of_its_cells_is():
    model = tiny_vace_model()
    weights = torch.zeros(1, 1, 3, 16, 16)
    weights[0, 0, 1, 5, 9] = 0.25  # one cell of a soft ramp: token (1, 2, 4)
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    _, stats, state = run(model, TRIM, "F", every_step(weights), inputs, TIMES[:1])
    assert state.run.trim.active.tolist() == [64 + 2 * 8 + 4]
    assert stats["trimmed_steps"] == [0]


@pytest.mark.parametrize("vace_layers", [[0, 2], [0, 3]])  # [0, 3]: a VACE hint is added after the last block
def test_trimmed_steps_equal_the_full_ones_inside_and_leave_the_input_outside(vace_layers):
    model = tiny_vace_model(vace_layers=vace_layers)
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    plain = denoise(model, inputs, TIMES)
    trimmed, stats, _ = run(model, TRIM, "FFF", every_step(), inputs)
    assert stats["decisions"] == "FFF" and stats["trimmed_steps"] == [0, 1, 2]
    inside = torch.zeros(3, 16, 16, dtype=torch.bool)
    inside[:, 2:12, 2:12] = True  # the cells of every token that touches the box
    inside = inside.expand_as(plain[0])
    for full, cut in zip(plain, trimmed, strict=True):
        torch.testing.assert_close(cut[inside], full[inside], rtol=0, atol=1e-5)
        assert (cut[~inside] - full[~inside]).abs().max() > 1e-3  # the outside rows are not the block output


def test_off_is_bit_identical_and_nothing_is_trimmed_without_discarded():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    reference, _, _ = run(model, SOME, "FPF", None, inputs)
    for policy, discarded in ((SOME, every_step()), (SOME.replace(trim_discarded=True), None)):
        outs, stats, state = run(model, policy, "FPF", discarded, inputs)
        assert stats["trimmed_steps"] == [] and state.run.trim is None
        assert all(torch.equal(a, b) for a, b in zip(outs, reference, strict=True))


@pytest.mark.parametrize(
    ("policy", "plan", "every", "expected"),
    [
        (SOME, "FPFF", True, [2, 3]),  # the last block leaves caches a PARTIAL step reads: not before one
        (SOME.replace(partial_blocks=(0, 1, 2)), "FPFF", True, [0, 2, 3]),  # it leaves none
        (SOME, "FRFF", True, [0, 2, 3]),  # REUSE steps read only the whole-stack residual
        (SOME, "FPFF", False, [3]),  # paste-back: the final step only
    ],
)
def test_which_full_steps_are_trimmed(policy, plan, every, expected):
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    times = (900.0, 800.0, 700.0, 600.0)
    _, stats, _ = run(model, policy.replace(trim_discarded=True), plan, Discarded(box_weights(), every), inputs, times)
    assert stats["decisions"] == plan and stats["trimmed_steps"] == expected


def test_a_discarded_mask_of_another_size_is_one_clear_error():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"discarded= covers latent grid \(3, 8, 8\)"):
        run(model, TRIM, "F", every_step(torch.ones(1, 1, 3, 8, 8)), inputs, TIMES[:1])


@contextlib.contextmanager
def counted():
    """FlopCounterMode with attention on the math kernel (the fused CPU kernel is not counted by torch)."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        yield counter


def test_trim_flops_match_the_flop_counter():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8), text_len=8)
    measured = {}
    for policy in (SOME, SOME.replace(trim_discarded=True)):
        handle = apply_hetcache(model, policy, strict=False, plan="FPF", discarded=every_step())
        counts = []
        with model.cache_context("cond"):
            for t in TIMES:
                with counted() as counter:
                    model(timestep=torch.tensor([t]), return_dict=False, **inputs)
                counts.append(counter.get_total_flops())
        calls = handle.state.run.calls
        for count, call in zip(counts, calls, strict=True):
            assert call.flops == pytest.approx(count, rel=0.02)
        measured[policy.tokens.trim_discarded] = (counts, calls, handle.state)
        remove_hetcache(model)
    (off, off_calls, _), (on, on_calls, state) = measured[False], measured[True]
    assert [c.trimmed for c in on_calls] == [False, False, True]
    assert on[:2] == off[:2] and on[2] < off[2]
    cost, inside = state.config.cost, state.run.trim.active.numel()
    assert 0 < inside < 192
    saved = sum(cost.block(192 - inside, 192, 8, False).values()) - cost.skipped_kv(192 - inside)
    assert off[2] - on[2] == pytest.approx(saved, rel=1e-6)  # the outside tokens' queries, attention, FFN
    assert off_calls[2].flops - on_calls[2].flops == pytest.approx(saved, rel=1e-9)


# -- under the editing contracts, on the tiny reference pipeline ----------------------------------------------

SIZE = dict(height=128, width=128, num_frames=9, steps=4)


def session(contract: str) -> LoadedWorkload:
    workload = Workload(weights="random", clips=parse_clip_names("box"), contract=contract, **SIZE)
    return LoadedWorkload(workload)


@pytest.mark.parametrize("contract", ["blend", "blend:soft+paste"])
def test_all_full_with_the_trim_under_blend_equals_the_uncached_blended_run(contract):
    s = session(contract)
    clip = s.clips[0]
    uncached = s.generate(clip)
    cached, stats = s.generate_cached(clip, TRIM, strict=False, plan="FFFF")
    assert stats["trimmed_steps"] == [0, 1, 2, 3]
    inside = (s.discarded(clip).weights > 0).expand_as(uncached.latents)
    assert 0.2 < float(inside.float().mean()) < 0.9
    torch.testing.assert_close(cached.latents[inside], uncached.latents[inside], rtol=0, atol=1e-5)
    assert torch.equal(cached.latents[~inside], uncached.latents[~inside])
    np.testing.assert_allclose(cached.frames, uncached.frames, rtol=0, atol=1e-5)
    untrimmed, off = s.generate_cached(clip, FULL, strict=False, plan="FFFF")
    assert off["trimmed_steps"] == [] and torch.equal(untrimmed.latents, uncached.latents)
    # lower by the counted amount: per call, the outside tokens' block work less their keys/values
    cost, tokens = CostModel.from_model(s.pipe.transformer), stats["tokens"]
    outside = tokens - int(torch.nn.functional.max_pool3d(inside[:1, :1].float(), (1, 2, 2)).sum())
    per_call = sum(cost.block(outside, tokens, TEXT_LEN, False).values()) - cost.skipped_kv(outside)
    calls = 4 * len(stats["decisions_by_context"])
    assert off["flops"] - stats["flops"] == pytest.approx(calls * per_call, rel=1e-9)


def test_a_token_level_plan_under_blend_is_unchanged_by_the_trim():
    s = session("blend")
    clip = s.clips[0]
    policy = SOME.replace(refresh_skipped_kv=True)
    untrimmed, off = s.generate_cached(clip, policy, strict=False, plan="FPFF")
    trimmed, on = s.generate_cached(clip, policy.replace(trim_discarded=True), strict=False, plan="FPFF")
    assert on["trimmed_steps"] == [2, 3] and on["flops"] < off["flops"]
    torch.testing.assert_close(trimmed.latents, untrimmed.latents, rtol=0, atol=1e-5)


def test_the_final_step_trim_under_paste_leaves_the_pasted_output():
    s = session("paste")
    clip = s.clips[0]
    uncached = s.generate(clip)
    cached, stats = s.generate_cached(clip, TRIM, strict=False, plan="FFFF")
    assert stats["trimmed_steps"] == [3]
    assert not torch.allclose(cached.latents, uncached.latents, atol=1e-4)  # the discarded latents do differ
    np.testing.assert_allclose(cached.frames, uncached.frames, rtol=0, atol=1e-5)
    outside = ~clip.mask
    assert np.array_equal(cached.frames[outside], uncached.frames[outside])


def test_the_memory_plan_counts_the_trims_prompt_keys_and_scratch():
    from hetcache.memory import plan_memory

    model = tiny_vace_model()
    policy = SOME.replace(partial_blocks=(0, 1), trim_discarded=True)  # the last block caches nothing else
    _, stats, _ = run(model, policy, "FPF", every_step(), model_inputs(box_token_mask(1, 3, 8, 8)))
    size = dict(height=128, width=128, num_frames=9, text_len=8, cfg=False, steps="FPF")
    memory = plan_memory(model, **size, policy=policy, mask=box_token_mask(1, 3, 8, 8))
    untrimmed = plan_memory(model, **size, policy=policy.replace(trim_discarded=False), mask=box_token_mask(1, 3, 8, 8))
    assert stats["cache_bytes"] == memory.cache_bytes > untrimmed.cache_bytes  # the last block's prompt K/V
    scratch = {"trim_scratch", "trim_key", "trim_value"}
    assert scratch <= set(memory.by_kind()) and not scratch & set(untrimmed.by_kind())


def test_under_paste_a_moving_mask_is_grown_by_the_decoders_reach():
    """The reference VAE's causal decoder reaches further in time than its encoder: the paste mask is grown by the
    decoder's reach, so the final-step trim leaves every pasted pixel as the untrimmed run's."""
    from hetcache import blend

    workload = Workload(
        weights="random", clips=parse_clip_names("moving"), contract="paste", **{**SIZE, "num_frames": 17}
    )
    s = LoadedWorkload(workload)
    clip = s.clips[0]
    assert blend.decoder_reach(s.pipe)[0] > blend.vae_reach(s.pipe)[0]
    uncached = s.generate(clip)
    cached, stats = s.generate_cached(clip, TRIM, strict=False, plan="FFFF")
    assert stats["trimmed_steps"] == [3]
    assert np.array_equal(cached.frames, uncached.frames)


def test_hetcache_run_records_and_prints_the_trimmed_steps(tmp_path, capsys):
    import json

    from hetcache.cli import main

    policy = tmp_path / "trim.json"
    TRIM.replace(rule="explicit", plan="FFF").save(policy)
    out = tmp_path / "run"
    flags = ["--weights", "random", "--height", "128", "--width", "128", "--frames", "9", "--steps", "3"]
    flags += ["--clips", "box", "--contract", "blend", "--policy", str(policy), "--no-strict", "--out", str(out)]
    assert main(["run", *flags]) == 0
    stats = json.loads((out / "run.json").read_text())["clips"][0]["stats"]
    assert stats["decisions"] == "FFF" and stats["trimmed_steps"] == [0, 1, 2]
    printed = capsys.readouterr().out
    assert "last block trimmed" in printed and "3 of 3 steps" in printed
