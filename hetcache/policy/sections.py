"""The sections of a policy file and their fields: the schema itself, declared once as rule-carrying dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dtypes import CACHE_DTYPES, CACHE_ONLY_DTYPES
from .rules import Rule, spec

SCHEMA = "hetcache.policy/v1"
SCHEMA_PREFIX = "hetcache.policy/v"
SCHEMA_VERSION = 1
FORMAT_DOC = "docs/policy-format.md"

SELECTIONS = ("stride", "kmeans", "attention", "kmeans_attention")
FEATURE_SELECTIONS = frozenset({"kmeans", "kmeans_attention"})  # cluster hidden states of the last FULL step
SCORE_SELECTIONS = frozenset({"attention", "kmeans_attention"})  # rank by the generative queries' attention mass
SKIP_FILLS = ("residual", "output")
FORECASTS = ("none", "linear")  # how cached residuals are carried to a later step: as they are, or extrapolated
PLAN_RULES = ("accumulated_change", "explicit")
CACHE_DTYPE_CHOICES = (*CACHE_DTYPES, *CACHE_ONLY_DTYPES)  # float8: stored in one byte, computed in the model dtype
MAX_STEPS = 1000  # the most denoising steps any field counts (samplers of video DiTs take 4 to 100)
# the largest magnitude of a step-curve coefficient (TeaCache's fits for Wan reach 3e5; 1e308 overflows at once)
POLYNOMIAL_BOUND = 1e9


@dataclass(frozen=True)
class StepPlanSpec:
    """How each denoising step is classified FULL / PARTIAL / REUSE (docs/method.md, "Step plan")."""

    rule: str = spec("accumulated_change", kind="choice", choices=PLAN_RULES, doc="how steps are classified")
    reuse_threshold: float = spec(
        0.1, kind="float", ge=0.0, doc="accumulated (rescaled) change below which a step is REUSE"
    )
    full_threshold: float = spec(
        0.15, kind="float", ge=0.0, doc="accumulated change from which a step is FULL (≥ reuse_threshold)"
    )
    warmup_steps: int = spec(
        2, kind="int", ge=1, le=MAX_STEPS, doc="first steps that are always FULL (at most workload.steps)"
    )
    final_full_steps: int = spec(
        1, kind="int", ge=0, le=MAX_STEPS, doc="last steps that are always FULL (the last one is anyway)"
    )
    polynomial: tuple[float, ...] | None = spec(
        None,
        kind="floats",
        ge=-POLYNOMIAL_BOUND,
        le=POLYNOMIAL_BOUND,
        nullable=True,
        doc="rescaling polynomial of the modulation change (highest power first)",
    )
    plan: str | None = spec(
        None, kind="str", nullable=True, doc="explicit per-step plan over F/P/R (one letter per step), or null"
    )
    max_partial_run: int | None = spec(
        None,
        kind="int",
        ge=1,
        le=MAX_STEPS,
        nullable=True,
        optional=True,
        doc="rule only: the most PARTIAL steps since the last FULL one; the next would-be PARTIAL step is FULL "
        "(bounds how stale the skipped tokens' cached residuals get; null: no bound)",
    )


@dataclass(frozen=True)
class TokenSpec:
    """Token classes and which margin/context tokens are recomputed on PARTIAL steps."""

    mask_threshold: float = spec(0.0, kind="float", ge=0.0, le=0.999, doc="mask value above which a token is edited")
    margin_width: int = spec(2, kind="int", ge=0, doc="width in latent tokens of the margin ring around the mask")
    margin_frames: int = spec(0, kind="int", ge=0, doc="latent frames the margin extends over in time")
    margin_ratio: float = spec(0.5, kind="float", ge=0.0, le=1.0, doc="share of margin tokens recomputed")
    context_ratio: float = spec(0.1, kind="float", ge=0.0, le=1.0, doc="share of context tokens recomputed")
    selection: str = spec("kmeans_attention", kind="choice", choices=SELECTIONS, doc="how context tokens are chosen")
    clusters: int = spec(16, kind="int", ge=1, doc="k-means clusters (k-means selections only)")
    selection_layer: int = spec(-1, kind="int", doc="block whose features / attention drive the selection")
    skip_fill: str = spec("residual", kind="choice", choices=SKIP_FILLS, doc="what skipped tokens take from cache")
    seed: int = spec(0, kind="int", doc="seed of the k-means initialisation")
    refresh_skipped_kv: bool = spec(
        False,
        kind="bool",
        optional=True,
        doc="skipped tokens' keys/values recomputed from their approximated inputs (projections only)",
    )
    trim_discarded: bool = spec(
        False,
        kind="bool",
        optional=True,
        doc="on FULL steps whose output outside the contract's latent mask is discarded (blend: every step; paste: "
        "the last), the last block computes only the tokens inside it (exact; needs the caller's `discarded=`)",
    )

    @property
    def needs_features(self) -> bool:
        """Whether the selection clusters hidden-state features (captured on FULL steps)."""
        return self.selection in FEATURE_SELECTIONS and self.context_ratio > 0

    @property
    def needs_scores(self) -> bool:
        """Whether the selection ranks context tokens by attention mass (captured on FULL steps)."""
        return self.selection in SCORE_SELECTIONS and self.context_ratio > 0


@dataclass(frozen=True)
class LayerSpec:
    """Which main blocks and VACE blocks run partial on PARTIAL steps (null = all of them, [] = none)."""

    partial_blocks: tuple[int, ...] | None = spec(
        None, kind="ints", nullable=True, doc="main blocks run partial (null: all, []: none)"
    )
    partial_vace_blocks: tuple[int, ...] | None = spec(
        None, kind="ints", nullable=True, doc="VACE blocks run partial (null: all, []: none)"
    )

    @property
    def has_partial_block(self) -> bool:
        """Whether a PARTIAL step computes anything partially (else it is a FULL step in all but name)."""
        return self.partial_blocks != () or self.partial_vace_blocks != ()


@dataclass(frozen=True)
class CacheSpec:
    """Storage of the per-layer caches."""

    dtype: str = spec("auto", kind="choice", choices=CACHE_DTYPE_CHOICES, doc='cache dtype ("auto": the model\'s own)')
    offload: bool = spec(False, kind="bool", doc="keep caches in host memory between steps")
    forecast: str = spec(
        "none",
        kind="choice",
        choices=FORECASTS,
        optional=True,
        doc="cached residuals extrapolated in time from the last two computed steps (REUSE, skipped tokens)",
    )
    forecast_skip_horizon: float | None = spec(
        None,
        kind="float",
        ge=0.0,
        nullable=True,
        optional=True,
        doc="with the forecast: the most FULL-step intervals a PARTIAL step extrapolates skip rows over "
        "(null: no limit; 0: none, the forecast is for REUSE steps only)",
    )


@dataclass(frozen=True)
class ModelSpec:
    """The architecture a policy was made for (`hetcache.fingerprint.model_fingerprint`)."""

    family: str = spec(kind="str", nonempty=True, doc='hetcache model family ("wan", "wan-vace", "ltx")')
    class_name: str = spec(kind="str", nonempty=True, key="class", doc="diffusers transformer class")
    fingerprint: str = spec(kind="str", nonempty=True, doc="hash of the class and architecture fields")
    architecture: dict[str, Any] = field(
        metadata={"rule": Rule("dict", "the architecture fields (num_layers, vace_layers, …)")}
    )


@dataclass(frozen=True)
class WorkloadSpec:
    """The workload a policy was tuned for; the resolved plan is valid for exactly `steps` steps."""

    steps: int = spec(kind="int", ge=1, le=MAX_STEPS, doc="denoising steps")
    height: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frame height in pixels")
    width: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frame width in pixels")
    num_frames: int | None = spec(None, kind="int", ge=1, nullable=True, optional=True, doc="frames per clip")
    guidance_scale: float | None = spec(
        None, kind="float", ge=0.0, nullable=True, optional=True, doc="classifier-free guidance scale"
    )
    scheduler: str | None = spec(None, kind="str", nullable=True, optional=True, doc="scheduler class (and shift)")
    name: str | None = spec(None, kind="str", nullable=True, optional=True, doc="workload name")
    contract: str | None = spec(
        None,
        kind="str",
        nullable=True,
        optional=True,
        doc="the editing contract its quality was measured under: none, paste, feather:N, blend, blend+paste, …",
    )


@dataclass(frozen=True)
class Section:
    """A nested object of a policy file: its JSON name, dataclass and whether every policy must hold it."""

    name: str
    cls: type
    required: bool
    doc: str


SECTIONS = (
    Section("model", ModelSpec, False, "the architecture it was made for; without it, applying needs strict=False"),
    Section("workload", WorkloadSpec, False, "the workload it was tuned for (an explicit plan must match its steps)"),
    Section("step_plan", StepPlanSpec, True, "which steps are FULL, PARTIAL or REUSE"),
    Section("tokens", TokenSpec, True, "which tokens a PARTIAL step computes"),
    Section("layers", LayerSpec, True, "which blocks a PARTIAL step runs partially"),
    Section("cache", CacheSpec, True, "how caches are stored"),
)
REQUIRED_SECTIONS = tuple(s.name for s in SECTIONS if s.required)
TOP_LEVEL = {
    "schema": Rule("str", "the format and its version", choices=(SCHEMA,)),
    "name": Rule("str", "the policy's name", nonempty=True),
    "description": Rule("str", "what it is for, in a sentence", optional=True),
    "provenance": Rule("dict", "where it came from (tool, study, trial, measured speed and quality)", optional=True),
}
