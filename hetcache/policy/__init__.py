"""Policy files (schema `hetcache.policy/v1`): what a cached run does, for which model, and where it came from.

A policy is plain JSON so that teams can ship it next to a model. The schema is declared once (`sections`): every
field of the section dataclasses carries its rule (`rules.Rule`: kind, bounds, choices, whether it may be null or
left out) as dataclass metadata, `SECTIONS` says which sections a file must hold, and one generic reader
(`reader.policy_from_dict`) checks a file against them, naming the offending field. docs/policy-format.md is
generated from the same rules (`doc`). Applying a policy to a model whose fingerprint differs, or to any model when
the policy names none, is refused unless the caller opts out (`strict=False`, `model_match`).

Modules, one job each: `rules` (the rule machinery), `sections` (the schema), `core` (`Policy`), `model_match`
(fingerprint and block checks), `reader` (validation), `files` (the one file reader, `load_policy`), `edits`
(`policy_with`, `field_value`), `doc` (the schema as markdown).
"""

from __future__ import annotations

from .core import Policy
from .doc import schema_markdown
from .edits import field_value, policy_with
from .files import is_policy_file, load_policy, load_policy_file, read_policy_json
from .model_match import check_blocks, check_model, model_spec_from_fingerprint
from .reader import check_plan_steps, check_plan_string, policy_from_dict
from .rules import Rule, json_key, rule_of, section_to_dict, spec
from .sections import (
    CACHE_DTYPE_CHOICES,
    FEATURE_SELECTIONS,
    FORECASTS,
    FORMAT_DOC,
    PLAN_RULES,
    REQUIRED_SECTIONS,
    SCHEMA,
    SCHEMA_PREFIX,
    SCHEMA_VERSION,
    SCORE_SELECTIONS,
    SECTIONS,
    SELECTIONS,
    SKIP_FILLS,
    TOP_LEVEL,
    CacheSpec,
    LayerSpec,
    ModelSpec,
    Section,
    StepPlanSpec,
    TokenSpec,
    WorkloadSpec,
)

__all__ = [
    "CACHE_DTYPE_CHOICES",
    "FEATURE_SELECTIONS",
    "FORECASTS",
    "FORMAT_DOC",
    "PLAN_RULES",
    "REQUIRED_SECTIONS",
    "SCHEMA",
    "SCHEMA_PREFIX",
    "SCHEMA_VERSION",
    "SCORE_SELECTIONS",
    "SECTIONS",
    "SELECTIONS",
    "SKIP_FILLS",
    "TOP_LEVEL",
    "CacheSpec",
    "LayerSpec",
    "ModelSpec",
    "Policy",
    "Rule",
    "Section",
    "StepPlanSpec",
    "TokenSpec",
    "WorkloadSpec",
    "check_blocks",
    "check_model",
    "check_plan_steps",
    "check_plan_string",
    "field_value",
    "is_policy_file",
    "json_key",
    "load_policy",
    "load_policy_file",
    "model_spec_from_fingerprint",
    "policy_from_dict",
    "policy_with",
    "read_policy_json",
    "rule_of",
    "schema_markdown",
    "section_to_dict",
    "spec",
]
