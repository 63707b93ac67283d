"""`Policy`: a complete cache policy, its JSON form and the checks made before it is applied to a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from . import model_match
from .rules import section_to_dict
from .sections import SCHEMA, SECTIONS, CacheSpec, LayerSpec, ModelSpec, StepPlanSpec, TokenSpec, WorkloadSpec


@dataclass(frozen=True)
class Policy:
    """A complete cache policy; `to_dict()` gives the JSON form back."""

    name: str
    step_plan: StepPlanSpec = field(default_factory=StepPlanSpec)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    layers: LayerSpec = field(default_factory=LayerSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    model: ModelSpec | None = None
    workload: WorkloadSpec | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- conversions ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of the policy (schema `hetcache.policy/v1`)."""
        out: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "description": self.description}
        for section in SECTIONS:
            value = getattr(self, section.name)
            if value is not None:
                out[section.name] = section_to_dict(value)
        out["provenance"] = dict(self.provenance)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy as JSON, atomically."""
        return atomic.write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> Policy:
        """A copy with top-level fields or nested fields (`reuse_threshold=...`) changed."""
        from .edits import policy_with

        return policy_with(self, **changes)

    # -- checks --------------------------------------------------------------------------------------------
    def check_model(self, model_fp: dict[str, Any], strict: bool = True, source: str = "policy") -> None:
        """Refuse to apply this policy to the model of fingerprint `model_fp` (see `model_match.check_model`)."""
        model_match.check_model(self, model_fp, strict=strict, source=source)

    def check_blocks(self, architecture: dict[str, Any], where: str, what: str) -> None:
        """Refuse partial_blocks / partial_vace_blocks indices beyond the depth of `architecture`."""
        model_match.check_blocks(self.layers, architecture, where, what)
