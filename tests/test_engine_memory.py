"""Cache memory knobs: which blocks hold caches, their bytes, a float8 cache dtype, host offload."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SOME, box_token_mask, denoise, model_inputs, tiny_vace_model

from hetcache import apply_hetcache, remove_hetcache
from hetcache.policy import Policy

pytestmark = pytest.mark.usefixtures("no_grad")

TIMES = (500.0, 499.0, 498.0, 497.0)


def _with_cache(policy: Policy, **cache) -> Policy:
    """`policy` with other cache settings (float8 is a cache-only dtype the policy schema may not list yet)."""
    return dataclasses.replace(policy, cache=dataclasses.replace(policy.cache, **cache))


def test_only_blocks_that_run_partially_hold_caches_and_bytes_add_up():
    model = tiny_vace_model()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    handle = apply_hetcache(model, SOME.replace(partial_blocks=(1,), partial_vace_blocks=()), strict=False, plan="FPP")
    denoise(model, inputs, TIMES[:3])
    layers = handle.state.contexts["cond"].layers
    assert sorted(layers) == ["block.1"]  # FULL-only blocks keep no keys, values or skip rows
    tokens, skippable, text_len, dim, heads, head_dim = 192, 192 - 48, 8, 32, 2, 16
    layer = layers["block.1"]
    assert tuple(layer.key.shape) == tuple(layer.value.shape) == (1, tokens, heads, head_dim)
    assert tuple(layer.skip.shape) == (1, skippable, dim) and layer.hint is None
    per_layer = 4 * (2 * tokens * dim + skippable * dim + 2 * text_len * dim)  # K, V, skip rows, prompt K/V
    stream = 4 * 2 * tokens * dim  # first-block input and whole-stack residual
    assert handle.stats()["cache_bytes"] == per_layer + stream


def test_float8_cache_is_stored_in_one_byte_and_stays_close():
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    model = tiny_vace_model()
    plain = [model(timestep=torch.tensor([t]), return_dict=False, **inputs)[0] for t in TIMES]
    results = {}
    for name in ("auto", "bfloat16", "float8_e4m3fn"):
        handle = apply_hetcache(model, _with_cache(SOME, dtype=name), strict=False, plan="FPPP")
        outs = denoise(model, inputs, TIMES)
        results[name] = handle.stats()["cache_bytes"]
        layer = handle.state.contexts["cond"].layers["block.0"]
        remove_hetcache(model)
        scale = plain[-1].abs().max().item()
        error = max((a - b).abs().max().item() for a, b in zip(outs, plain, strict=True))
        assert error < 0.1 * scale, name
        if name == "float8_e4m3fn":
            assert layer.key.dtype == layer.skip.dtype == torch.float8_e4m3fn
            assert error > 0  # the cache really is lossy
    assert results["float8_e4m3fn"] < results["bfloat16"] < results["auto"]


def test_offloaded_caches_give_the_resident_result():
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    model = tiny_vace_model()
    outs, cache_bytes = {}, {}
    for offload in (False, True):
        handle = apply_hetcache(model, _with_cache(SOME, offload=offload), strict=False, plan="FPPRP")
        outs[offload] = denoise(model, inputs, (500.0, 499.0, 498.0, 497.0, 496.0))
        assert handle.stats()["decisions"] == "FPPRP"
        cache_bytes[offload] = handle.stats()["cache_bytes"]
        remove_hetcache(model)
    assert all(torch.equal(a, b) for a, b in zip(outs[False], outs[True], strict=True))
    # two device slots (one computing, one prefetching the next layer), each a layer's keys, values and skip rows
    tokens, skippable, dim = 192, 192 - 48, 32
    assert cache_bytes[True] - cache_bytes[False] == 2 * 4 * (2 * tokens * dim + skippable * dim)
