"""The three kinds of denoising step and their plan letters, defined once for every part of hetcache."""

from __future__ import annotations

FULL, PARTIAL, REUSE = "F", "P", "R"
PLAN_LETTERS = frozenset((FULL, PARTIAL, REUSE))
STEP_NAMES = {FULL: "FULL", PARTIAL: "PARTIAL", REUSE: "REUSE"}
