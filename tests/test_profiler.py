"""hetcache.profiler on a tiny Wan-VACE pipeline: exact drift and attention contribution, step-curve fit, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_clip, tiny_pipeline
from hetcache.profiler import Profile, fit_polynomial, profile
from hetcache.profiler.attention import generative_key_mass
from hetcache.profiler.store import SCHEMA
from torch.overrides import TorchFunctionMode

from hetcache import reference
from hetcache.atomic import MARKER as OUTPUT_MARKER
from hetcache.attention_mass import key_attention_mass
from hetcache.engine.registry import model_token_mask
from hetcache.errors import InputError, UnsupportedModelError
from hetcache.plan import relative_l1_changes, timestep_modulation
from hetcache.tokens import classify_tokens
from hetcache.workloads.execute import pipeline_inputs

STEPS = 4


def vace_inputs(steps: int = STEPS) -> dict:
    """WanVACEPipeline arguments for the small box clip, with the profiler's clip name."""
    video, mask = pipeline_inputs(small_clip())
    positive, negative = reference.random_prompt_embeds()
    return dict(
        name="box",
        video=video,
        mask=mask,
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )


def pipe_args(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("name", "edit_mask")}


class BlockCapture:
    """Plain forward hooks that keep every block's output (hint for VACE blocks) and input stream, per call."""

    def __init__(self, transformer):
        self.calls: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        self.handles = [transformer.register_forward_pre_hook(lambda m, a: self.calls.append({}))]
        for name, blocks in (("blocks", transformer.blocks), ("vace_blocks", transformer.vace_blocks)):
            for i, block in enumerate(blocks):
                self.handles.append(block.register_forward_hook(self._hook(f"{name}.{i}", name), with_kwargs=True))

    def _hook(self, key: str, kind: str):
        def hook(module, args, kwargs, output):
            if kind == "vace_blocks":
                self.calls[-1][key] = (output[0].clone(), (output[1] - args[2]).clone())
            else:
                self.calls[-1][key] = (output.clone(), (output - args[0]).clone())

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def rel_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    return (current - previous).abs().sum(-1) / previous.abs().sum(-1)


def module_state(model: torch.nn.Module) -> list:
    """Everything a hook could leave behind on any submodule."""
    return [
        (
            name,
            sorted(vars(m)),
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            getattr(getattr(m, "_diffusers_hook", None), "_hook_order", None),
            type(getattr(m, "processor", None)).__name__,
        )
        for name, m in model.named_modules()
    ]


@pytest.fixture(scope="module")
def profiled():
    """A profile of the tiny VACE pipeline (attention every step) and a plain recomputation of the same run."""
    pipe = tiny_pipeline()
    plain = BlockCapture(pipe.transformer)
    reference_latents = pipe(**pipe_args(vace_inputs())).frames
    plain.remove()
    before = module_state(pipe.transformer)
    result = profile(pipe, vace_inputs(), attention_every=1, layers=None)
    after = module_state(pipe.transformer)
    again = pipe(**pipe_args(vace_inputs())).frames
    return pipe, result, plain.calls, reference_latents, again, before, after


def test_drift_equals_direct_recomputation(profiled):
    _, result, calls, *_ = profiled
    layers = [layer["name"] for layer in result.data["layers"]]
    assert layers == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "vace_blocks.0", "vace_blocks.1"]
    assert result.data["branches"] == ["cond", "uncond"]
    drift = result.tensors("pt")["drift"].float()
    residual = result.tensors("pt")["residual_drift"].float()
    assert drift.shape == (2, STEPS, len(layers), 48)
    assert torch.equal(drift[:, 0], torch.zeros_like(drift[:, 0]))
    for branch in range(2):  # WanVACEPipeline calls cond, then uncond, at every step
        for step in range(1, STEPS):
            now, before = calls[2 * step + branch], calls[2 * (step - 1) + branch]
            for pos, name in enumerate(layers):
                expected = rel_l1(now[name][0][0], before[name][0][0])
                torch.testing.assert_close(drift[branch, step, pos], expected, rtol=2e-3, atol=1e-4)
                expected = rel_l1(now[name][1][0], before[name][1][0])
                torch.testing.assert_close(residual[branch, step, pos], expected, rtol=2e-3, atol=1e-4)


def test_class_summaries_match_tensors(profiled):
    _, result, *_ = profiled
    tensors = result.tensors()
    labels = tensors["token_class"]
    drift = tensors["drift"].astype(np.float64)[:, 1:]  # steps > 0
    counts = result.data["clips"][0]["token_classes"]
    assert counts == {"generative": int((labels == 2).sum()), "margin": int((labels == 1).sum()), "context": 0}
    for pos, layer in enumerate(result.data["layers"]):
        assert layer["drift"]["generative"] == pytest.approx(drift[:, :, pos, labels == 2].mean(), rel=1e-3)
        assert layer["drift"]["all"] == pytest.approx(drift[:, :, pos].mean(), rel=1e-3)
        assert layer["drift"]["context"] is None  # the box plus a 2-token margin leaves no context on 4x4 tokens


def test_profiling_leaves_model_and_output_unchanged(profiled):
    _, _, _, reference_latents, again, before, after = profiled
    assert before == after
    assert torch.equal(reference_latents, again)


def test_profiled_run_output_is_bit_exact():
    pipe = tiny_pipeline()
    inputs = pipe_args(vace_inputs())
    plain = pipe(**inputs).frames
    seen = {}
    pipe.set_progress_bar_config(disable=True)

    def keep(p, step, t, tensors):
        seen[step] = tensors["latents"].clone()
        return {}

    profile(pipe, {**vace_inputs(), "callback_on_step_end": keep}, attention_every=1)
    assert torch.equal(seen[STEPS - 1], plain)


class SDPACapture(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            kwargs = kwargs or {}
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            self.calls.append((query.clone(), key.clone()))
        return func(*args, **(kwargs or {}))


def test_attention_contribution_equals_brute_force():
    """The recorded per-key mass (cond branch, every step) equals a full softmax over the same Q/K."""
    pipe = tiny_pipeline()
    attn = pipe.transformer.blocks[1].attn1
    capture = SDPACapture()

    def enter(module, args) -> None:
        capture.__enter__()

    def leave(module, args, output) -> None:
        capture.__exit__(None, None, None)

    pre = attn.register_forward_pre_hook(enter)
    post = attn.register_forward_hook(leave)
    pipe(**pipe_args(vace_inputs()))
    pre.remove()
    post.remove()
    captured = capture.calls
    result = profile(pipe, vace_inputs(), attention_every=1, attention_chunk=5)
    labels = torch.from_numpy(result.tensors()["token_class"]).long()
    generative = labels == 2
    attention = result.tensors("pt")["attention"].float()
    pos = [layer["name"] for layer in result.data["layers"]].index("blocks.1")
    for step in range(STEPS):
        query, key = captured[2 * step]  # cond call of this step
        q, k = query[0][:, generative], key[0]  # [H, Nq, d], [H, N, d]
        probs = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)  # [H, Nq, N]: brute force
        expected = probs.sum(dim=1).mean(dim=0) * (48 / int(generative.sum()))
        torch.testing.assert_close(attention[step, pos], expected, rtol=2e-3, atol=2e-3)
        assert attention[step, pos].sum().item() == pytest.approx(48, rel=1e-2)
    shares = result.data["layers"][pos]["attention_to"]
    assert shares["generative"] + shares["margin"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_key_mass_equals_brute_force(chunk):
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(2, 4, 7 + 20, 8, generator=gen)  # [B, H, text 7 + video 20, d]
    key = torch.randn(2, 2, 27, 8, generator=gen)  # grouped-query: 2 key heads serve 4 query heads
    index = torch.tensor([0, 3, 4, 11, 19])
    mass = generative_key_mass(query, key, 1, 7, index, chunk, scale=0.3)
    q = query[1, :, 7:][:, index]
    k = key[1].repeat_interleave(2, dim=0)
    expected = torch.softmax(q @ k.transpose(1, 2) * 0.3, dim=-1).sum(dim=1).mean(dim=0)
    torch.testing.assert_close(mass, expected, rtol=1e-5, atol=1e-6)
    assert mass.sum().item() == pytest.approx(len(index), rel=1e-5)
    torch.testing.assert_close(mass, key_attention_mass(q.transpose(0, 1), k.transpose(0, 1), chunk, 0.3))


def test_polynomial_fit_recovers_known_coefficients():
    truth = [-120.0, 35.0, -1.5, 0.9, 0.002]
    x = np.linspace(0.005, 0.3, 40)
    fit = fit_polynomial(x, np.polyval(truth, x), 4)
    np.testing.assert_allclose(fit.coefficients, truth, rtol=1e-6, atol=1e-9)
    assert fit.degree == 4 and fit.r2 == pytest.approx(1.0) and fit.points == 40 and fit.note is None
    noisy = np.polyval(truth, x) + np.random.default_rng(0).normal(0, 0.02, x.shape)
    fit = fit_polynomial(x, noisy, 4)
    assert 0.5 < fit.r2 < 1.0
    linear = fit_polynomial([0.1, 0.2, 0.1, 0.2], [0.3, 0.5, 0.3, 0.5], 4)  # two distinct x: degree drops to 1
    assert linear.degree == 1 and "degree lowered" in linear.note
    np.testing.assert_allclose(linear.coefficients, [2.0, 0.1], atol=1e-12)
    assert np.polyval(fit_polynomial(x, 3 * x, 2).coefficients, 0.5) == pytest.approx(1.5)


def test_step_curve_uses_the_engine_modulation(profiled):
    pipe, result, *_ = profiled
    curve = result.data["step_curve"]
    expected = relative_l1_changes(timestep_modulation(pipe.transformer, torch.tensor(result.data["timesteps"])))
    assert curve["modulation_source"] == "timestep_proj"
    np.testing.assert_allclose(curve["modulation_change"], expected, rtol=1e-6)
    assert len(curve["output_change"]) == STEPS - 1 and all(c > 0 for c in curve["output_change"])
    predicted = np.polyval(curve["polynomial"], curve["modulation_change"])
    np.testing.assert_allclose(predicted, curve["output_change"], rtol=1e-4, atol=1e-6)  # 3 points, degree ≤ 2
    assert curve["degree"] == 2 and curve["points"] == STEPS - 1
    assert curve["fit_range"] == [min(curve["modulation_change"]), max(curve["modulation_change"])]


def test_cost_and_headroom(profiled):
    _, result, *_ = profiled
    data = result.data
    layer = data["layers"][0]
    assert set(layer["flops"]) >= {"self_attention", "cross_attention", "ffn", "vace"}
    assert layer["flops"]["self_attention"] > 0 and layer["flops"]["vace"] == 0
    assert data["layers"][-1]["flops"]["vace"] > 0
    assert layer["time_ms"] > 0 and layer["memory_bytes"] == 3 * 48 * 32 * 4
    assert data["memory"]["attention_transient_bytes"] == 3 * 2 * 256 * 48 * 4
    assert data["memory"]["profiler_bytes"] > 0
    headroom = data["headroom"]
    assert headroom["context_token_share"] == 0.0
    assert any("little context" in w for w in headroom["warnings"])
    assert any(f"only {STEPS} denoising steps" in w for w in headroom["warnings"])
    assert headroom["least_drifting_layers"] and headroom["verdict"].endswith(".")


def test_save_load_round_trip(profiled, tmp_path):
    _, result, *_ = profiled
    folder = result.save(tmp_path / "profile")
    assert sorted(p.name for p in folder.iterdir()) == [OUTPUT_MARKER, "profile.json", "tensors.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["profile"]  # no temporary folder left behind
    loaded = Profile.load(folder)
    assert loaded.data["schema"] == SCHEMA
    assert json.loads(json.dumps(loaded.data)) == loaded.data
    assert loaded.data["layers"] == json.loads(json.dumps(result.data["layers"]))
    assert set(loaded.tensors()) == set(result.tensors())
    for name, array in result.tensors().items():
        np.testing.assert_array_equal(loaded.tensors()[name], array)
        assert loaded.tensors()[name].dtype in (np.float16, np.int8)
    assert loaded.polynomial == result.data["step_curve"]["polynomial"]
    with pytest.raises(InputError, match=r"already exists.*--overwrite"):
        result.save(folder)
    loaded.save(folder, overwrite=True)
    assert Profile.load(folder).data == loaded.data


def test_load_refuses_bad_folders(tmp_path):
    with pytest.raises(InputError, match="not a profile folder"):
        Profile.load(tmp_path)
    (tmp_path / "profile.json").write_text(json.dumps({"schema": "hetcache.profile/v9"}))
    with pytest.raises(InputError, match=r"hetcache\.profile/v9"):
        Profile.load(tmp_path)
    (tmp_path / "profile.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        Profile.load(tmp_path)


def test_pixel_mask_layers_and_pooling():
    """An explicit pixel mask, a layer subset, attention every 2nd step and pooling of the token axis."""
    pipe = tiny_pipeline()
    subset = profile(pipe, vace_inputs(), layers="0,vace.1", attention_every=0)
    assert [layer["name"] for layer in subset.data["layers"]] == ["blocks.0", "vace_blocks.1"]
    assert "attention" not in subset.tensors()
    pixels = torch.from_numpy(small_clip().mask).float()
    expected = classify_tokens(model_token_mask(pipe.transformer, pixels), margin_width=0)
    explicit = profile(
        pipe,
        {**vace_inputs(), "edit_mask": pixels},
        layers=[1],
        attention_every=2,
        margin_width=0,
        max_tokens=16,
    )
    data = explicit.data
    assert data["clips"][0]["token_classes"] == {
        "generative": int(expected.generative.sum()),
        "margin": 0,
        "context": int(expected.context.sum()),
    }
    assert data["tensors"]["pooled"] and data["tensors"]["pool"] == [1, 2, 2]
    assert data["tensors"]["token_grid"] == [3, 2, 2]
    assert explicit.tensors()["drift"].shape == (2, STEPS, 1, 12)
    assert explicit.tensors()["attention"].shape == (2, 1, 12)
    assert data["tensors"]["attention_steps"] == [0, 2]
    assert data["layers"][0]["drift"]["context"] is not None
    # pooled drift = mean of the full-resolution drift over each 1x2x2 patch of tokens
    full = profile(pipe, {**vace_inputs(), "edit_mask": pixels}, layers=[1], attention_every=0, margin_width=0)
    grid = full.tensors("pt")["drift"].float().reshape(2, STEPS, 1, 3, 4, 4)
    pooled = grid.unflatten(-1, (2, 2)).unflatten(-3, (2, 2)).mean(dim=(-1, -3)).flatten(-3)
    torch.testing.assert_close(explicit.tensors("pt")["drift"].float(), pooled, rtol=2e-3, atol=1e-3)


def test_bad_inputs():
    pipe = tiny_pipeline()
    with pytest.raises(InputError, match=r"main block 9, but the transformer has 4 main blocks \(0–3\)"):
        profile(pipe, vace_inputs(), layers="9")
    with pytest.raises(InputError, match="VACE block 5"):
        profile(pipe, vace_inputs(), layers="vace.5")
    with pytest.raises(InputError, match="'x' is not a layer index"):
        profile(pipe, vace_inputs(), layers="x")
    empty = np.zeros((9, 64, 64), dtype=bool)
    with pytest.raises(InputError, match=r"edit_mask of input 'box' is empty.*profile without a mask"):
        profile(pipe, {**vace_inputs(), "edit_mask": empty})
    with pytest.raises(InputError, match="unknown profile option attention_evry"):
        profile(pipe, vace_inputs(), attention_evry=2)
    with pytest.raises(InputError, match="attention_every=-1"):
        profile(pipe, vace_inputs(), attention_every=-1)

    class NoTransformer:
        unet = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedModelError, match=r"has no transformer.*Fix: pass a diffusers video pipeline"):
        profile(NoTransformer(), vace_inputs())
