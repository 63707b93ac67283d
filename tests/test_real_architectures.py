"""The real Wan and LTX-Video architectures (diffusers classes, random weights, reduced depth): exact all-FULL runs,
cache bytes equal to the memory plan, the benchmark's efficiency rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import real_architectures as ra

from hetcache.architectures import ARCHITECTURES, load_architecture, size_overrides
from hetcache.errors import InputError
from hetcache.reference import WAN21_VACE_1_3B

CASES = {
    "1.3B width, VACE": ("wan2.1-vace-1.3b", dict(num_layers=1, vace_layers=[0]), (64, 128, 5)),
    "14B width, A14B expert": ("wan2.2-t2v-a14b", dict(num_layers=1), (64, 64, 5)),
    "LTX-Video 2B width": ("ltx-video-2b", dict(num_layers=1), (64, 128, 9)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name, overrides, size = CASES[request.param]
    return ra.build(name, **overrides), size


@pytest.mark.slow
def test_all_full_equals_the_stock_model_and_partial_caches_match_the_plan(case):
    model, size = case
    assert model.config.num_attention_heads * model.config.attention_head_dim in (1536, 5120, 2048)
    inputs, mask = ra.clip_inputs(model, size, 0.25, text_len=8)
    exact = ra.exactness(model, inputs, mask)
    assert exact["max_abs_diff"] <= 1e-5 * exact["output_scale"]
    (row,) = ra.partial_efficiency(model, size, text_len=8, fractions=(0.5,), reps=1)
    assert row["cache_bytes"] == row["plan_cache_bytes"] > 0
    assert 0 < row["active_fraction"] < 1 and row["flops_speedup"] > 1


def test_shipped_architectures_are_the_released_configs(tmp_path):
    assert ARCHITECTURES["wan2.1-vace-14b"].config["vace_layers"] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert ARCHITECTURES["wan2.1-vace-1.3b"].dim == 1536 and ARCHITECTURES["wan2.2-t2v-a14b"].experts == 2
    assert size_overrides("wan2.1-vace-1.3b") == WAN21_VACE_1_3B  # the benchmarks' constant is read from here
    assert 2.0e9 < ARCHITECTURES["wan2.1-vace-1.3b"].parameters() < 2.3e9
    config = tmp_path / "transformer" / "config.json"
    config.parent.mkdir()
    ra.build("wan2.1-vace-1.3b", num_layers=1, vace_layers=[0], num_attention_heads=2, attention_head_dim=8,
             ffn_dim=16, text_dim=8).save_config(config.parent)  # fmt: skip
    loaded = load_architecture(tmp_path)
    assert loaded.class_name == "WanVACETransformer3DModel" and loaded.config["num_layers"] == 1
    config.write_text('{"_class_name": "UNet3DConditionModel"}')
    with pytest.raises(InputError, match="which no hetcache engine family runs"):
        load_architecture(config)


def test_a_shipped_architecture_builds_on_the_meta_device():
    with torch.device("meta"):
        model = ARCHITECTURES["wan2.2-ti2v-5b"].build()
    assert type(model).__name__ == "WanTransformer3DModel" and model.config.in_channels == 48
