"""The policy the token-level benchmarks start from, frozen in `benchmarks/policies/` so results stay reproducible.

It is `reference-psnr30` as first shipped (a timestep-only plan, bf16 cache): the shipped policies are re-tuned as the
engine gains options, and the benchmarks' published figures must not move with them.
"""

from pathlib import Path

BENCHMARK_BASE = Path(__file__).with_name("policies") / "benchmark-base.json"
