"""A third family costs one adapter: a toy family registered from inside this file runs through apply_hetcache
(exact all-FULL, PARTIAL and REUSE steps), the memory plan and hetcache's tuner; an unknown family is refused with
the adapter to write.

The toy is a Wan-VACE variant whose main blocks scale their residual by a learned per-channel gain: its own block
class and block maths (which wrap Wan's), its own transformer class; everything else restated by its `Family`.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VACE, denoise, forward, small_clip
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from hetcache import apply_hetcache, reference
from hetcache.engine import wan
from hetcache.engine.registry import (
    MAIN,
    BlockAdapter,
    Family,
    TransformerAdapter,
    register_block,
    register_family,
    unregister_family,
)
from hetcache.engine.wan_blocks import block_body, block_kv, text_kv
from hetcache.errors import UnsupportedModelError
from hetcache.fingerprint import model_fingerprint
from hetcache.memory import plan_memory
from hetcache.policy import Policy
from hetcache.tokens import VaeStrides

pytestmark = pytest.mark.usefixtures("no_grad")
EVERYTHING = Policy(name="everything").replace(margin_ratio=1.0, context_ratio=1.0, selection="stride")
SOME = Policy(name="some").replace(margin_ratio=0.5, context_ratio=0.25, selection="stride")


# ---------------------------------------------------------------------------------------------------------
# the toy family's "adapter file"


class GainBlock(WanTransformerBlock):
    """A Wan block whose residual is scaled per channel: out = x + gain · (wan_block(x) − x)."""

    def __init__(self, dim: int, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.gain = torch.nn.Parameter(0.5 + torch.rand(dim))

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        out = super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        return hidden_states + self.gain * (out - hidden_states)


class ToyTransformer(WanVACETransformer3DModel):
    """Wan-VACE with `GainBlock` main blocks."""

    def __init__(self, **config):
        super().__init__(**config)
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        self.blocks = torch.nn.ModuleList(
            GainBlock(dim, self.config.ffn_dim, self.config.num_attention_heads, self.config.qk_norm,
                      self.config.cross_attn_norm, self.config.eps, self.config.added_kv_proj_dim)
            for _ in range(self.config.num_layers)
        )  # fmt: skip


def gain_body(block, hidden, temb, rope, text, active=None, **kwargs):
    """The block maths: Wan's body, then the gain on the residual of the rows computed."""
    out, key, value, scores = block_body(block, hidden, temb, rope, text, active=active, **kwargs)
    return hidden + block.gain * (out - hidden), key, value, scores


def register_toy() -> Family:
    register_block(
        GainBlock,
        BlockAdapter(kind=MAIN, arguments=wan.WAN_ARGUMENTS, body=gain_body, kv=block_kv,
                     text_kv=lambda block, prompt: text_kv(block.attn2, prompt)),
    )  # fmt: skip
    return register_family(
        Family(
            name="toy",
            classes=(ToyTransformer.__name__,),
            fields=wan.WAN_FIELDS,
            shape=wan.wan_shape,
            vae=lambda config: VaeStrides(temporal=4, spatial=8),
            call_grid=wan.wan_call_grid,
            timestep_modulation=wan.wan_timestep_modulation,
            layout=TransformerAdapter(
                main_blocks="blocks",
                vace_blocks="vace_blocks",
                head="norm_out",
                head_input_dtype=torch.float32,
                text_embedder="condition_embedder",
                text_output_index=2,
            ),
            processors=("WanAttnProcessor",),
            mask_from_inputs=wan.vace_mask,
        )
    )


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def toy_family():
    family = register_toy()
    yield family
    unregister_family(family)


def toy_model(seed: int = 0) -> ToyTransformer:
    torch.manual_seed(seed)
    return ToyTransformer(**TINY_VACE).eval()


def toy_inputs() -> dict:
    from conftest import box_token_mask, model_inputs

    return model_inputs(box_token_mask(1, 3, 8, 8))


def test_toy_family_runs_exactly_all_full_and_saves_on_partial_and_reuse_steps(toy_family):
    model = toy_model()
    inputs = toy_inputs()
    plain = [forward(model, inputs, t) for t in (900.0, 800.0)]
    with apply_hetcache(model, EVERYTHING, strict=False, plan="FF") as handle:
        cached = denoise(model, inputs, (900.0, 800.0))
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in zip(plain, cached, strict=True))
    assert handle.stats()["decisions"] == "FF"
    with apply_hetcache(model, EVERYTHING, strict=False, plan="FP"):
        full, partial = denoise(model, inputs, (500.0, 500.0 - 1e-3))
    assert (partial - full).abs().max().item() <= 1e-3 * full.abs().max().item()
    with apply_hetcache(model, SOME, strict=False, plan="FPR") as handle:
        denoise(model, inputs, (900.0, 800.0, 700.0))
    stats = handle.stats()
    assert stats["flops"] < 0.8 * stats["flops_uncached"]
    assert model_fingerprint(model)["family"] == "toy"


def test_toy_family_memory_plan_equals_what_the_engine_holds(toy_family):
    model = toy_model()
    with apply_hetcache(model, SOME, strict=False, plan="FPR") as handle:
        denoise(model, toy_inputs(), (900.0, 800.0, 700.0))
    mask = handle.state.run.clip.classes.generative.view(1, 3, 8, 8)
    plan = plan_memory(model, height=128, width=128, num_frames=9, policy=SOME, mask=mask, cfg=False, text_len=8)
    assert plan.architecture == "ToyTransformer (module)"
    assert plan.cache_bytes == handle.stats()["cache_bytes"]


@pytest.mark.slow
def test_toy_family_is_tuned_by_hetcache_tune(toy_family, tmp_path):
    from hetcache.tuner.budget import parse_budget
    from hetcache.tuner.study import TuneConfig, tune

    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import Workload

    pipe = WanVACEPipeline(
        vae=reference.random_vae(), transformer=toy_model(), scheduler=reference.scheduler(),
        text_encoder=None, tokenizer=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    clip = small_clip(frames=9, height=64, width=64)
    workload = Workload(name="toy", weights="random", steps=6, height=64, width=64, num_frames=9)
    session = LoadedWorkload(workload, pipe=pipe)
    session.clips = [clip]
    config = TuneConfig(workload=workload, budget=parse_budget("psnr=20"), out=tmp_path / "tune", trials=3,
                        storage=str(tmp_path / "study.db"), reference_dir=tmp_path / "references")  # fmt: skip
    result = tune(config, session)
    assert len(result.results) == 3
    assert result.info.attrs["model"]["family"] == "toy"
    assert any(r.attrs["speedup_flops"] > 1.0 for r in result.results)


def test_an_unknown_family_is_refused_naming_the_adapter_to_write():
    class Unregistered(WanVACETransformer3DModel):
        pass

    torch.manual_seed(0)
    model = Unregistered(**TINY_VACE).eval()
    with pytest.raises(UnsupportedModelError, match=r"model class Unregistered has no hetcache family adapter") as info:
        apply_hetcache(model, SOME, strict=False)
    assert "register_family" in str(info.value) and "BlockAdapter" in str(info.value)
    with pytest.raises(UnsupportedModelError, match="Unregistered has no hetcache family adapter"):
        plan_memory(model, height=64, width=64, num_frames=9)
