"""torch.compile of a hooked transformer: decisions stay eager, one graph per step type, output as eager."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import box_token_mask, model_inputs, tiny_vace_model

from hetcache import apply_hetcache
from hetcache.policy import Policy

SOME = Policy(name="some").replace(margin_ratio=0.5, context_ratio=0.25, selection="kmeans_attention", clusters=4)
PLAN = "FPRFPR"
SMALL = dict(num_layers=2, vace_layers=[0])
TIMES = [900.0 - 50.0 * i for i in range(len(PLAN))]


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and compiles them with `aot_eager`.

    aot_eager runs AOTAutograd's functionalisation (the in-place cache writes included) without inductor's codegen,
    which takes minutes per graph on a small shared CPU.
    """

    def __init__(self) -> None:
        self.graphs = 0
        self.compile = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return self.compile(graph, example_inputs)


def _denoise(model, inputs, backend=None, plan=PLAN, times=TIMES, **changes):
    """Cond and uncond calls per step, like a pipeline with guidance; returns outputs and graphs added per step."""
    apply_hetcache(model, SOME.replace(**changes), strict=False, plan=plan)
    runner = torch.compile(model, backend=backend) if backend is not None else model
    uncond = {**inputs, "encoder_hidden_states": -inputs["encoder_hidden_states"]}
    outs, added = [], []
    with torch.no_grad():
        for t in times:
            before = getattr(backend, "graphs", 0)
            for name, kwargs in (("cond", inputs), ("uncond", uncond)):
                with runner.cache_context(name):
                    outs.append(runner(timestep=torch.tensor([t]), return_dict=False, **kwargs)[0])
            added.append(getattr(backend, "graphs", 0) - before)
    return outs, added


@pytest.mark.parametrize(
    "options", [{}, {"refresh_skipped_kv": True, "forecast": "linear"}], ids=["plain", "kv-refresh-and-forecast"]
)
def test_compiled_engine_adds_no_graph_after_the_first_step_of_each_type(options):
    torch._dynamo.reset()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    eager, _ = _denoise(tiny_vace_model(**SMALL), inputs, **options)
    counter = GraphCounter()
    compiled, added = _denoise(tiny_vace_model(**SMALL), inputs, counter, **options)
    first_of_type = {PLAN.index(letter) for letter in set(PLAN)}
    assert all(added[step] == 0 for step in range(len(PLAN)) if step not in first_of_type), added
    assert all(added[step] > 0 for step in first_of_type), added
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HETCACHE_TEST_INDUCTOR"),
    reason="inductor compiles for minutes on a small CPU: set HETCACHE_TEST_INDUCTOR=1 (benchmarks/engine.py runs it)",
)
def test_inductor_output_is_within_tolerance_of_eager():
    torch._dynamo.reset()
    inputs = model_inputs(box_token_mask(1, 3, 8, 8))
    eager, _ = _denoise(tiny_vace_model(**SMALL), inputs, plan="FPR", times=TIMES[:3])
    compiled, _ = _denoise(tiny_vace_model(**SMALL), inputs, "inductor", plan="FPR", times=TIMES[:3])
    for a, b in zip(eager, compiled, strict=True):
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item()
