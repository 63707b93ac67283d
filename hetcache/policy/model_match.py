"""Whether a policy suits a model: its fingerprint, and block indices within the model's depth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import FingerprintMismatchError, PolicyError
from .sections import LayerSpec, ModelSpec

if TYPE_CHECKING:
    from .core import Policy


def model_spec_from_fingerprint(fp: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from `fingerprint.model_fingerprint(model)`."""
    return ModelSpec(fp["family"], fp["class"], fp["fingerprint"], dict(fp["architecture"]))


def check_model(policy: Policy, model_fp: dict[str, Any], strict: bool = True, source: str = "policy") -> None:
    """Refuse to apply `policy` to the model of fingerprint `model_fp` (`fingerprint.model_fingerprint`).

    Always refused: block indices the model does not have. With `strict`: a policy made for another
    architecture, and a policy that names no model at all (it was tuned for nothing in particular).
    """
    check_blocks(policy.layers, model_fp["architecture"], f"{source} '{policy.name}'", "the model")
    if not strict:
        return
    if policy.model is None:
        raise FingerprintMismatchError(
            f"{source} '{policy.name}' names no model, so nothing says it suits this "
            f"{model_fp['class']} (its speed and quality were not measured on it).",
            "use a policy tuned for this model (hetcache-tune), or pass strict=False / --no-strict to apply it "
            "to any model.",
        )
    if policy.model.fingerprint == model_fp["fingerprint"]:
        return
    ours, theirs = policy.model.architecture, model_fp["architecture"]
    diffs = [f"{k}: policy {ours.get(k)!r} vs model {theirs.get(k)!r}" for k in ours if ours.get(k) != theirs.get(k)]
    if policy.model.class_name != model_fp["class"]:
        diffs.insert(0, f"class: policy {policy.model.class_name} vs model {model_fp['class']}")
    raise FingerprintMismatchError(
        f"{source} '{policy.name}' was made for a different model ({'; '.join(diffs) or 'fingerprint differs'}).",
        "use a policy tuned for this model (hetcache-tune), or pass strict=False / --no-strict to apply it anyway.",
    )


def check_blocks(layers: LayerSpec, architecture: dict[str, Any], where: str, what: str) -> None:
    """Refuse partial_blocks / partial_vace_blocks indices beyond the depth of `architecture`."""
    n_layers = architecture.get("num_layers")
    n_vace = len(architecture.get("vace_layers") or [])
    for key, values, limit in (
        ("partial_blocks", layers.partial_blocks, n_layers),
        ("partial_vace_blocks", layers.partial_vace_blocks, n_vace),
    ):
        if values and isinstance(limit, int) and max(values) >= limit:
            raise PolicyError(
                f"{where}: layers.{key} holds index {max(values)} but {what} has {limit} such blocks.",
                f"keep layers.{key} within the model's blocks, or use a policy tuned for this model.",
            )
