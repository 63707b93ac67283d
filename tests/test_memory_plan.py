"""The memory plan equals what the engine allocates, buffer kind by buffer kind, and sizes the real architectures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import (
    SOME,
    box_token_mask,
    model_inputs,
    pipeline_call,
    small_clip,
    tiny_pipeline,
    tiny_vace_model,
    tiny_wan_model,
)

from hetcache import apply_hetcache
from hetcache.dtypes import CACHE_DTYPES, CACHE_ONLY_DTYPES
from hetcache.engine.registry import model_token_mask
from hetcache.errors import InputError
from hetcache.memory import DEVICE, GIB, HOST, STORAGE_KINDS, cache_gib_of, plan_memory
from hetcache.policy import CacheSpec, Policy

pytestmark = pytest.mark.usefixtures("no_grad")


TIMES = (900.0, 800.0, 700.0, 600.0, 500.0)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def engine_bytes_by_kind(state) -> dict[str, int]:
    """Bytes of every buffer the engine holds for one transformer, by the plan's kind names (staging as one sum)."""
    out: dict[str, int] = {}

    def add(kind: str, nbytes: int) -> None:
        if nbytes:
            out[kind] = out.get(kind, 0) + nbytes

    for ctx in state.contexts.values():
        for layer in ctx.layers.values():
            for kind in ("key", "value", "skip", "skip_prev", "hint"):
                add(kind, _nbytes(getattr(layer, kind)))
            add("text_kv", sum(_nbytes(t) for t in layer.text or ()))
        for kind, tensor in (
            ("x_in", ctx.x_in),
            ("residual", ctx.residual),
            ("residual_prev", ctx.residual_prev),
            ("features", ctx.capture.features),
            ("scores", ctx.capture.scores),
            ("scratch", ctx.scratch),
            ("skipped_scratch", ctx.skipped_scratch),
            ("shared_key", ctx.shared_key),
            ("shared_value", ctx.shared_value),
            ("zero_hint", ctx.zero_hint),
        ):
            add(kind, _nbytes(tensor))
    add("staging", state.staging_bytes)
    return out


def plan_bytes_by_kind(memory) -> dict[str, int]:
    """The plan's bytes per kind, its staging buffers as one sum (as the engine reports them)."""
    out: dict[str, int] = {}
    for kind, nbytes in memory.by_kind().items():
        kind = "staging" if kind.startswith("staging.") else kind
        out[kind] = out.get(kind, 0) + nbytes
    return out


def _run_contexts(model, inputs_by_context, plan):
    for t in TIMES[: len(plan)]:
        for name, inputs in inputs_by_context.items():
            with model.cache_context(name):
                batch = inputs["hidden_states"].shape[0]
                model(timestep=torch.tensor([t] * batch), return_dict=False, **inputs)


CASES = {
    "stride, every block": (SOME, "FPRPP", 1, True),
    "kmeans_attention, subset of blocks": (
        SOME.replace(selection="kmeans_attention", partial_blocks=[1, 3], partial_vace_blocks=[1]),
        "FPRPF",
        1,
        True,
    ),
    "offload, bf16 cache": (SOME.replace(offload=True, dtype="bfloat16"), "FPPRF", 1, True),
    "no VACE partial, no CFG": (SOME.replace(partial_vace_blocks=[]), "FPPPF", 1, False),
    "FULL-only blocks": (SOME.replace(partial_blocks=[], partial_vace_blocks=[]), "FRFRF", 1, True),
    "batch of two, attention": (SOME.replace(selection="attention", context_ratio=0.0), "FPP", 2, True),
    "skipped K/V refresh, offload": (SOME.replace(refresh_skipped_kv=True, offload=True), "FPRPF", 1, True),
    "forecast, offload": (SOME.replace(forecast="linear", offload=True), "FFRPF", 1, True),
    "forecast on REUSE only, offload": (
        SOME.replace(forecast="linear", forecast_skip_horizon=0.0, offload=True),
        "FFRPF",
        1,
        True,
    ),
    "forecast, kmeans_attention, no CFG": (
        SOME.replace(forecast="linear", selection="kmeans_attention"),
        "FFPR",
        1,
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_equals_engine_buffers(case):
    policy, plan, batch, cfg = CASES[case]
    mask = box_token_mask(batch, 3, 8, 8)
    cond = model_inputs(mask, seed=0)
    inputs = {"cond": cond}
    if cfg:
        inputs["uncond"] = {**cond, "encoder_hidden_states": -cond["encoder_hidden_states"]}
    model = tiny_vace_model()
    handle = apply_hetcache(model, policy, strict=False, plan=plan)
    _run_contexts(model, inputs, plan)
    size = dict(height=128, width=128, num_frames=9, text_len=8)
    memory = plan_memory(model, **size, policy=policy, mask=mask, batch=batch, cfg=cfg, steps=plan)
    assert handle.stats()["cache_bytes"] == memory.cache_bytes
    assert engine_bytes_by_kind(handle.state) == plan_bytes_by_kind(memory)
    storage_place = HOST if policy.cache.offload else DEVICE
    for buffer in memory.buffers:
        kind = buffer.kind
        assert buffer.place == (storage_place if kind in STORAGE_KINDS else DEVICE), kind
    if policy.layers.partial_blocks == ():
        assert not {"key", "value", "skip"} & set(memory.by_kind())  # FULL-only blocks keep no K/V


def test_plan_equals_engine_after_a_cfg_pipeline_run_and_without_cfg():
    clip = small_clip()
    token_mask = model_token_mask(tiny_pipeline().transformer, torch.as_tensor(clip.mask))
    for guidance, cfg in ((4.0, True), (1.0, False)):
        pipe = tiny_pipeline()
        handle = apply_hetcache(pipe, SOME, strict=False, plan="FPRP")
        pipe(**pipeline_call(clip, steps=4, guidance_scale=guidance), generator=torch.Generator().manual_seed(0))
        stats = handle.stats()
        assert len(stats["decisions_by_context"]) == (2 if cfg else 1)
        memory = plan_memory(
            pipe.transformer, height=64, width=64, num_frames=9, policy=SOME, mask=token_mask, cfg=cfg, text_len=8,
            steps="FPRP",
        )  # fmt: skip
        assert stats["cache_bytes"] == memory.cache_bytes


@pytest.mark.parametrize("dtype", [d for d in (*CACHE_DTYPES, *CACHE_ONLY_DTYPES) if d != "auto"])
def test_plan_follows_the_cache_dtype_of_a_bf16_wan_model(dtype):
    model = tiny_wan_model().to(torch.bfloat16)
    mask = box_token_mask(1, 3, 8, 8)
    inputs = {k: v for k, v in model_inputs(mask).items() if k != "control_hidden_states"}
    inputs = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    policy = dataclasses.replace(SOME, cache=CacheSpec(dtype=dtype, offload=True))  # fp8: not a policy choice yet
    handle = apply_hetcache(model, policy, strict=False, plan="FPP", mask=mask)
    _run_contexts(model, {"cond": inputs}, "FPP")
    memory = plan_memory(model, height=128, width=128, num_frames=9, policy=policy, mask=mask, cfg=False, text_len=8)
    assert memory.cache_dtype == getattr(torch, dtype)
    assert handle.stats()["cache_bytes"] == memory.cache_bytes
    assert engine_bytes_by_kind(handle.state) == plan_bytes_by_kind(memory)


def test_fp8_and_offload_shrink_exactly_what_they_should():
    # every block cached, with a forecast: every storage kind is there
    common = dict(height=480, width=832, num_frames=33, policy=Policy(name="every").replace(forecast="linear"))
    bf16 = plan_memory("wan2.1-vace-1.3b", **common)
    fp8 = plan_memory("wan2.1-vace-1.3b", cache_dtype="float8_e4m3fn", **common)
    for kind in STORAGE_KINDS:
        assert fp8.by_kind()[kind] * 2 == bf16.by_kind()[kind]
    for kind in ("hint", "x_in", "residual", "residual_prev", "text_kv"):  # not the cache dtype
        assert fp8.by_kind()[kind] == bf16.by_kind()[kind]
    offloaded = plan_memory("wan2.1-vace-1.3b", offload=True, **common)
    assert offloaded.host_bytes == sum(bf16.by_kind()[k] for k in STORAGE_KINDS)
    assert offloaded.device_bytes < bf16.device_bytes / 3
    assert bf16.tokens.total == 9 * 30 * 52


def test_the_kv_refresh_replaces_the_per_layer_kv_caches_by_one_shared_pair():
    """With the skipped-token K/V refresh every K/V row is rewritten on PARTIAL steps before it is read: per layer
    only the skip rows stay, plus one key/value pair per context and the skipped tokens' gathered inputs."""
    clip = dict(height=720, width=1280, num_frames=81)
    plain = plan_memory("wan2.1-vace-14b", **clip)
    refreshed = plan_memory("wan2.1-vace-14b", policy=Policy(name="every").replace(refresh_skipped_kv=True), **clip)
    kinds, before = refreshed.by_kind(), plain.by_kind()
    assert "key" not in kinds and "value" not in kinds and kinds["skip"] == before["skip"]
    layers = len(plain.partial_blocks) + len(plain.partial_vace_blocks)
    assert kinds["shared_key"] == kinds["shared_value"] == before["key"] // layers  # both contexts
    saved = before["key"] + before["value"] - kinds["shared_key"] - kinds["shared_value"] - kinds["skipped_scratch"]
    assert plain.device_bytes - refreshed.device_bytes == saved > 0.6 * plain.cache_bytes
    offloaded = plan_memory(
        "wan2.1-vace-14b", policy=Policy(name="r").replace(refresh_skipped_kv=True), offload=True, **clip
    )
    assert offloaded.host_bytes == kinds["skip"] and not {"staging.key", "staging.value"} & set(offloaded.by_kind())


def test_wan_14b_720p_81_frames_fits_80_gib_only_with_the_documented_setting():
    clip = dict(height=720, width=1280, num_frames=81)
    default = plan_memory("wan2.1-vace-14b", **clip)
    assert default.tokens.total == 75_600
    assert default.device_bytes > 150 * GIB and not default.fits(80)
    offload_fp8 = plan_memory("wan2.1-vace-14b", cache_dtype="float8_e4m3fn", offload=True, **clip)
    assert offload_fp8.fits(80)
    gib = cache_gib_of(None, "wan2.1-vace-14b", **clip, offload=True, cache_dtype="float8_e4m3fn")
    assert gib == offload_fp8.device_bytes / GIB


def test_bad_inputs_name_the_input():
    with pytest.raises(InputError, match="neither a shipped architecture"):
        plan_memory("wan9", height=480, width=832, num_frames=33)
    with pytest.raises(InputError, match="multiple of the 16x16-pixel"):
        plan_memory("wan2.1-vace-1.3b", height=480, width=830, num_frames=33)
    with pytest.raises(InputError, match="mask fraction"):
        plan_memory("wan2.1-vace-1.3b", height=480, width=832, num_frames=33, mask=1.5)
    with pytest.raises(InputError, match="cache dtype"):
        plan_memory("wan2.1-vace-1.3b", height=480, width=832, num_frames=33, cache_dtype="int3")
    with pytest.raises(InputError, match="partial blocks"):
        plan_memory("wan2.1-vace-1.3b", height=480, width=832, num_frames=33, partial_blocks=(30,))


def test_plan_memory_command(capsys):
    from hetcache.cli import main

    argv = ["plan-memory", "--model", "wan2.1-vace-14b", "--height", "720", "--width", "1280", "--frames", "81"]
    assert main([*argv, "--cache-dtype", "float8_e4m3fn", "--offload", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    plan = plan_memory(
        "wan2.1-vace-14b", height=720, width=1280, num_frames=81, cache_dtype="float8_e4m3fn", offload=True
    )
    assert summary["device_bytes"] == plan.device_bytes and summary["host_bytes"] == plan.host_bytes
    assert (
        main([*argv, "--cache-dtype", "float8_e4m3fn", "--partial-blocks", "0-9", "--partial-vace-blocks", "none"]) == 0
    )
    out = capsys.readouterr().out
    assert "10 main and 0 VACE blocks cached" in out and "fits in 80 GiB" in out
    assert main([*argv, "--cache-dtype", "int3"]) == 2
    assert "cache dtype 'int3'" in capsys.readouterr().err
    assert main([*argv, "--partial-blocks", "a-b"]) == 2
    assert "--partial-blocks 'a-b' is not a block list" in capsys.readouterr().err


def test_session_plans_match_the_engine_on_the_reference_workload():
    from hetcache.memory import session_cache_gib, session_plans
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import ClipSource, Workload

    session = LoadedWorkload(
        Workload(steps=4, clips=(ClipSource(name="box", kind="box"),), height=64, width=64, num_frames=9)
    )
    policy = SOME.replace(partial_blocks=[0, 2])
    handle = apply_hetcache(session.transformer, policy, strict=False, plan="FPRP")
    session.generate(session.clips[0], decode=False)
    (plan,) = session_plans(policy, session)
    assert handle.stats()["cache_bytes"] == plan.cache_bytes
    assert session_cache_gib(policy, session) == plan.device_bytes / GIB
