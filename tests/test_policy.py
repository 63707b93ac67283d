"""Policy files: round trip, validation messages that name the field, shipped policies, fingerprints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from hetcache import load_policy, policies
from hetcache.errors import FingerprintMismatchError, PolicyError
from hetcache.fingerprint import model_fingerprint
from hetcache.policy import SCHEMA, Policy, WorkloadSpec


def test_round_trip_through_json(tmp_path):
    policy = load_policy("reference-psnr35")
    path = policy.save(tmp_path / "p.json")
    again = load_policy(path)
    assert again == policy
    assert again.to_dict() == json.loads(path.read_text())


def test_fields_are_reachable_by_name_wherever_they_sit():
    policy = Policy(name="x").replace(
        plan="FFPR", reuse_threshold=0.2, full_threshold=0.3, warmup_steps=1, final_full_steps=0, margin_width=3
    )
    data = policy.to_dict()
    assert data["step_plan"]["plan"] == "FFPR"
    assert data["step_plan"]["reuse_threshold"] == 0.2
    assert data["tokens"]["margin_width"] == 3
    policy = policy.replace(margin_ratio=0.3, context_ratio=0.4, selection="kmeans")
    assert (policy.tokens.margin_ratio, policy.tokens.context_ratio, policy.tokens.selection) == (0.3, 0.4, "kmeans")
    shipped = load_policy("reference-psnr35")
    retuned = shipped.replace(workload=WorkloadSpec(steps=4), plan=None, name="retuned", model=None)
    assert retuned.workload == WorkloadSpec(steps=4) and retuned.model is None and retuned.name == "retuned"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("step_plan", "reuse_threshold", "abc"), "step_plan.reuse_threshold must be a number"),
        (("tokens", "selection", "random"), "tokens.selection must be one of"),
        (("tokens", "margin_ratio", 1.5), "tokens.margin_ratio must be ≤ 1.0"),
        (("step_plan", "plan", "FFXP"), "holds letters other than F, P, R"),
        (("step_plan", "plan", "PFF"), "the first step must be F"),
        (("tokens", "margn_width", 3), "unknown field(s) margn_width"),
        (("layers", "partial_blocks", [0, 99]), "partial_blocks holds index 99"),
        (("step_plan", "full_threshold", 0.01), "full_threshold 0.01 below reuse_threshold"),
    ],
)
def test_invalid_fields_are_named(change, message):
    data = load_policy("reference-psnr35").to_dict()
    section, key, value = change
    data[section][key] = value
    if key == "plan":
        data.pop("workload")
    with pytest.raises(PolicyError) as info:
        load_policy(data)
    assert message in str(info.value)
    assert "Fix:" in str(info.value)


def test_corrupt_future_and_unknown_policies(tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "hetcache.policy/v1", "name": ')
    with pytest.raises(PolicyError, match=r"corrupt.json' is not valid JSON \(line 1"):
        load_policy(corrupt)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema": "hetcache.policy/v2", "name": "f"}))
    with pytest.raises(PolicyError, match="newer than this hetcache reads"):
        load_policy(future)
    with pytest.raises(PolicyError, match="not a hetcache policy"):
        load_policy({"schema": "something/v1", "name": "x"})
    with pytest.raises(PolicyError, match=r"unknown policy 'no-such-policy'.*reference-psnr35"):
        load_policy("no-such-policy")
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.json")


def test_one_policy_file_reader_names_the_file_and_tells_policies_from_other_json(tmp_path):
    from hetcache.policy import is_policy_file, read_policy_json

    shipped = policies.policy_path("reference-psnr35")
    assert read_policy_json(shipped)["name"] == "reference-psnr35"
    assert is_policy_file(shipped)
    saved = load_policy("reference-psnr35").save(tmp_path / "copy.json")
    assert is_policy_file(saved) and load_policy(saved).to_dict() == load_policy("reference-psnr35").to_dict()
    other = tmp_path / "index.json"
    other.write_text(json.dumps({"study": "s", "ladder": [], "note": "hetcache.policy/v1 is only named here"}))
    assert not is_policy_file(other)
    assert not is_policy_file(tmp_path / "missing.json")
    text = tmp_path / "policy.txt"
    text.write_text(shipped.read_text())
    assert not is_policy_file(text)
    with pytest.raises(PolicyError, match=r"missing.json' cannot be read"):
        read_policy_json(tmp_path / "missing.json")


def test_shipped_policies_load_and_the_paper_one_says_it_was_not_tuned():
    names = policies.names()
    assert "wan21-vace-1.3b-paper" in names
    for name in names:
        assert load_policy(name).name == name
    paper = load_policy("wan21-vace-1.3b-paper")
    assert paper.provenance["tuned_by_hetcache"] is False
    assert "NOT tuned by this project" in paper.provenance["note"]
    rows = {row["name"]: row for row in policies.index()}
    assert rows["wan21-vace-1.3b-paper"]["source"] == "paper"


def test_paper_policy_fingerprint_matches_the_real_1_3b_architecture():
    from diffusers import WanVACETransformer3DModel

    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=12,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=8960,
        num_layers=30,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        vace_layers=list(range(0, 30, 2)),
        vace_in_channels=96,
    )
    with torch.device("meta"):
        model = WanVACETransformer3DModel(**config)
    paper = load_policy("wan21-vace-1.3b-paper")
    paper.check_model(model_fingerprint(model))
    with torch.device("meta"):
        bigger = WanVACETransformer3DModel(
            **{
                **config,
                "num_attention_heads": 40,
                "num_layers": 40,
                "ffn_dim": 13824,
                "vace_layers": list(range(0, 40, 5)),
            }
        )
    with pytest.raises(FingerprintMismatchError, match="num_layers: policy 30 vs model 40"):
        paper.check_model(model_fingerprint(bigger))


def test_schema_constant_is_what_files_carry():
    assert load_policy("reference-psnr35").to_dict()["schema"] == SCHEMA == "hetcache.policy/v1"


# -- strict policies: complete, finite, for a named model ----------------------------------------------------


@pytest.mark.parametrize("section", ["step_plan", "tokens", "layers", "cache"])
def test_a_policy_without_a_required_section_is_refused(section):
    data = load_policy("reference-psnr35").to_dict()
    data.pop(section)
    with pytest.raises(PolicyError) as info:
        load_policy(data)
    message = str(info.value)
    assert f"has no {section} section" in message
    assert "re-export it with hetcache-tune" in message and "docs/policy-format.md" in message


def test_a_policy_missing_a_field_names_it_instead_of_filling_a_default():
    data = load_policy("reference-psnr35").to_dict()
    data["step_plan"].pop("reuse_threshold")
    with pytest.raises(PolicyError, match=r"step_plan\.reuse_threshold is missing.*Fix: add it"):
        load_policy(data)
    data = load_policy("reference-psnr35").to_dict()
    data["tokens"]["selection"] = None
    with pytest.raises(PolicyError, match=r"tokens\.selection is null; it must be one of stride"):
        load_policy(data)


def test_non_finite_numbers_are_refused(tmp_path):
    data = load_policy("reference-psnr35").to_dict()
    data["step_plan"]["full_threshold"] = float("inf")
    path = tmp_path / "inf.json"
    path.write_text(json.dumps(data))  # json writes Infinity, which json.loads reads back as inf
    assert "Infinity" in path.read_text()
    with pytest.raises(PolicyError, match=r"step_plan\.full_threshold must be a finite number, got inf"):
        load_policy(path)
    data["step_plan"]["full_threshold"] = 0.2
    data["step_plan"]["polynomial"] = [1.0, float("nan")]
    with pytest.raises(PolicyError, match=r"step_plan\.polynomial must be a non-empty list of finite numbers"):
        load_policy(data)


@pytest.mark.parametrize("source", [None, 3, ["policy.json"]])
def test_a_policy_source_of_the_wrong_kind_is_a_policy_error(source):
    with pytest.raises(PolicyError, match=rf"got {type(source).__name__}\..*Fix: pass e\.g\. 'policy\.json'"):
        load_policy(source)


def test_a_policy_naming_no_model_needs_strict_false():
    from conftest import tiny_vace_model

    from hetcache import apply_hetcache

    model = tiny_vace_model()
    anonymous = Policy(name="anonymous")
    with pytest.raises(FingerprintMismatchError, match=r"names no model.*strict=False"):
        anonymous.check_model(model_fingerprint(model))
    with pytest.raises(FingerprintMismatchError, match="policy 'anonymous' names no model"):
        apply_hetcache(model, anonymous)
    apply_hetcache(model, anonymous, strict=False).remove()


def test_partial_blocks_beyond_the_model_are_refused_even_when_not_strict():
    from conftest import tiny_vace_model

    from hetcache import apply_hetcache

    model = tiny_vace_model()  # 4 main blocks, 2 VACE blocks
    deep = Policy(name="deep").replace(partial_blocks=(0, 5))
    with pytest.raises(PolicyError, match=r"layers\.partial_blocks holds index 5 but the model has 4 such blocks"):
        apply_hetcache(model, deep, strict=False)
    vace = Policy(name="vace").replace(partial_vace_blocks=(2,))
    with pytest.raises(PolicyError, match=r"layers\.partial_vace_blocks holds index 2 but the model has 2"):
        vace.check_model(model_fingerprint(model), strict=False)
    assert not hasattr(model, "_diffusers_hook") or not model._diffusers_hook.hooks  # nothing was attached


def test_the_format_document_holds_the_schema_tables():
    from pathlib import Path

    from hetcache.policy import schema_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "policy-format.md").read_text(encoding="utf-8")
    assert schema_markdown() in doc, "docs/policy-format.md is out of step with the schema: paste schema_markdown()"


def test_selection_needs_follow_the_schema_constants():
    from hetcache.policy import FEATURE_SELECTIONS, SCORE_SELECTIONS, SELECTIONS, TokenSpec

    assert set(SELECTIONS) >= FEATURE_SELECTIONS | SCORE_SELECTIONS
    for selection in SELECTIONS:
        tokens = TokenSpec(selection=selection, context_ratio=0.1)
        assert tokens.needs_features == (selection in FEATURE_SELECTIONS)
        assert tokens.needs_scores == (selection in SCORE_SELECTIONS)
        assert not TokenSpec(selection=selection, context_ratio=0.0).needs_features


def test_shipped_reference_policies_plan_what_they_compute():
    """A stored plan is the rule's plan on the reference workload, and no policy without a partial block plans P."""
    from hetcache.plan import resolve_plan
    from hetcache.workloads.execute import LoadedWorkload
    from hetcache.workloads.spec import ClipSource, Workload

    session = LoadedWorkload(
        Workload(clips=(ClipSource("box", kind="box"),), height=64, width=64, num_frames=9, steps=20)
    )
    fingerprint = model_fingerprint(session.transformer)["fingerprint"]
    checked = 0
    for name in policies.names():
        policy = load_policy(name)
        if not policy.layers.has_partial_block:
            assert "P" not in (policy.step_plan.plan or ""), name
            assert policy.step_plan.full_threshold == policy.step_plan.reuse_threshold, name
        if policy.model.fingerprint != fingerprint or policy.step_plan.plan is None:
            continue
        spec = policy.step_plan
        by_rule = resolve_plan(session.transformer, session.timesteps(), dataclasses.replace(spec, plan=None))
        assert by_rule == spec.plan == next(iter(policy.provenance["decisions"].values())), name
        checked += 1
    assert checked >= 2


def test_the_cache_only_float8_dtype_is_a_valid_cache_dtype():
    from hetcache.dtypes import CACHE_ONLY_DTYPES

    policy = load_policy("reference-psnr35").replace(dtype="float8_e4m3fn")
    assert policy.cache.dtype == "float8_e4m3fn" and "float8_e4m3fn" in CACHE_ONLY_DTYPES
    assert load_policy(policy.to_dict()) == policy
    with pytest.raises(PolicyError, match=r"cache\.dtype must be one of auto, .*, float8_e4m3fn, got"):
        policy.replace(dtype="float8")
