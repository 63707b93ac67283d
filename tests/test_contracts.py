"""Editing contracts on the tiny reference pipeline and on plain Wan pipelines: paste-back, feathering, latent
blending (against hand-written loops on FlowMatchEuler and UniPC), metrics, budgets, files and flags."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_wan_model
from safetensors.torch import save_file

from hetcache import blend, reference
from hetcache.contracts import RAW, Contract, parse_contract
from hetcache.engine import apply_hetcache, remove_hetcache
from hetcache.errors import InputError, PolicyError
from hetcache.metrics import clip_quality, regions
from hetcache.paste import composite, feather_alpha
from hetcache.policy import Policy, WorkloadSpec, policy_from_dict
from hetcache.workloads import Workload
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.spec import parse_clip_names, workload_from_dict

pytestmark = pytest.mark.usefixtures("no_grad")

SIZE = dict(height=64, width=64, num_frames=9, steps=5)


def session(contract: str, **changes) -> LoadedWorkload:
    workload = Workload(weights="random", clips=parse_clip_names("box"), contract=contract, **{**SIZE, **changes})
    return LoadedWorkload(workload)


@pytest.fixture(scope="module")
def raw():
    """The uncached raw output of the reference box clip (random weights), the clip and its session."""
    with torch.no_grad():
        s = session("none")
        return s, s.clips[0], s.generate(s.clips[0])


# -- names and parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("none", RAW),
        (" Paste ", Contract(paste=True)),
        ("feather", Contract(paste=True, feather=8)),
        ("feather:3", Contract(paste=True, feather=3)),
        ("blend", Contract(blend=True)),
        ("blend:soft+paste", Contract(blend=True, soft=True, paste=True)),
        ("feather:4+blend", Contract(blend=True, paste=True, feather=4)),
    ],
)
def test_contract_names_parse_to_one_canonical_spelling(text, expected):
    contract = parse_contract(text)
    assert contract == expected and parse_contract(contract.name) == contract
    assert contract.budget_metric == ("psnr" if contract.is_none else "psnr_mask")


@pytest.mark.parametrize(
    "text, message",
    [
        ("pasta", "names unknown contract 'pasta'"),
        ("feather:0", "feather width 0, outside 1–256 pixels"),
        ("feather:wide", "feather width 'wide', which is not a whole number"),
        ("paste+feather:4", "names paste-back twice"),
        ("blend:hard", "the only one is 'soft'"),
        ("none+paste", "combines none with another contract"),
    ],
)
def test_bad_contracts_are_one_clear_error(text, message):
    with pytest.raises(InputError) as info:
        parse_contract(text)
    assert message in info.value.what and "--contract paste" in info.value.fix


def run_cli(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("command", ["run", "tune", "profile"])
@pytest.mark.parametrize("contract", ["pastee", "feather:-2", "feather:999"])
def test_bad_contract_flags_exit_2_before_compute_and_write_nothing(tmp_path, command, contract):
    from hetcache.profiler.cli import main as profile_main
    from hetcache.tuner.cli import main as tune_main

    from hetcache.cli import main as hetcache_main

    out = tmp_path / "out"
    main, argv = {
        "run": (hetcache_main, ["run"]),
        "tune": (tune_main, ["--budget", "30"]),
        "profile": (profile_main, []),
    }[command]
    code, err = run_cli(main, [*argv, "--contract", contract, "--out", str(out)])
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "argument --contract:" in lines[0] and "Fix:" in lines[0]
    assert not out.exists()


def test_workload_and_policy_files_carry_the_contract(tmp_path):
    workload = Workload(contract="Blend+Feather:4")
    assert workload.contract == "blend+feather:4"
    assert workload_from_dict(json.loads(json.dumps(workload.to_dict()))).editing_contract == workload.editing_contract
    with pytest.raises(InputError, match=r"workload file 'w\.json': contract 'blend:x'"):
        workload_from_dict({"schema": "hetcache.workload/v1", "contract": "blend:x"}, "workload file 'w.json'")
    policy = Policy(name="p", workload=WorkloadSpec(steps=5, contract="paste")).to_dict()
    assert policy_from_dict(policy).workload.contract == "paste"
    policy["workload"]["contract"] = "feather:0"
    with pytest.raises(PolicyError, match=r"workload\.contract 'feather:0' gives feather width 0"):
        policy_from_dict(policy, "policy file 'p.json'")


# -- paste-back and feathering -------------------------------------------------------------------------


def test_paste_leaves_every_pixel_outside_the_mask_equal_to_the_source(raw):
    _, clip, none = raw
    pasted = session("paste").generate(clip)
    source = clip.frames.astype(np.float32) / 255.0
    outside = ~clip.mask
    assert np.array_equal(pasted.frames[outside], source[outside])
    assert np.array_equal(pasted.frames[clip.mask], none.frames[clip.mask])
    assert not np.array_equal(none.frames[outside], source[outside])  # the raw output does drift outside
    assert torch.equal(pasted.latents, none.latents)


def test_feather_never_changes_a_pixel_inside_the_mask(raw):
    _, clip, none = raw
    width = 5
    feathered = session(f"feather:{width}").generate(clip)
    assert np.array_equal(feathered.frames[clip.mask], none.frames[clip.mask])
    source = clip.frames.astype(np.float32) / 255.0
    far = ~regions(clip.mask, band=width)["margin"].numpy() & ~clip.mask
    assert np.array_equal(feathered.frames[far], source[far])  # beyond the feather: the source
    alpha = feather_alpha(clip.mask, width).numpy()
    ring = (alpha > 0) & (alpha < 1)
    assert ring.any() and not (ring & clip.mask).any()
    assert np.unique(np.round(alpha[ring], 6)).size == width  # a ramp of `width` steps outside the mask


def test_composite_with_uint8_and_float_sources_agrees():
    rng = np.random.default_rng(0)
    source = (rng.random((3, 16, 16, 3)) * 255).astype(np.uint8)
    output = rng.random((3, 16, 16, 3)).astype(np.float32)
    mask = np.zeros((3, 16, 16), dtype=bool)
    mask[:, 4:9, 4:9] = True
    assert np.array_equal(composite(output, source, mask, 3), composite(output, source / np.float32(255), mask, 3))


# -- latent blending -----------------------------------------------------------------------------------


def test_the_measured_vae_reach_is_the_reference_vaes():
    s = session("blend")
    assert blend.vae_reach(s.pipe) == reference.VAE_REACH


def test_blend_leaves_the_final_latents_outside_the_edit_equal_to_the_source(raw):
    _, clip, none = raw
    s = session("blend")
    blended = s.generate(clip)
    source, weights = s.blend_inputs(clip)
    keep = (weights < 0.5).expand_as(source)
    assert 0.2 < float(keep.float().mean()) < 0.9
    assert torch.equal(blended.latents[keep], source[keep])
    assert not torch.equal(blended.latents[~keep], none.latents[~keep])
    # the edit region covers every latent cell a masked pixel touches, and the VAE's reach beyond it
    inside = blend.edit_mask(clip.mask, (0, 0))
    assert bool((weights >= inside).all()) and float(weights.sum()) > float(inside.sum())


def test_blend_is_exact_with_all_full_caching(raw):
    _, clip, _ = raw
    s = session("blend")
    uncached = s.generate(clip)
    apply_hetcache(s.pipe, Policy(name="full"), strict=False, plan="F" * SIZE["steps"])
    try:
        cached = s.generate(clip)
    finally:
        remove_hetcache(s.pipe)
    assert torch.equal(cached.latents, uncached.latents) and np.array_equal(cached.frames, uncached.frames)


def test_soft_blend_releases_the_ramp_step_by_step(raw):
    _, clip, _ = raw
    s = session("blend:soft", height=128, width=128)
    clip = s.clips[0]
    generation = s.generate(clip)
    source, weights = s.blend_inputs(clip)
    hard = blend.edit_mask(clip.mask, reference.VAE_REACH)
    ramp = (weights > 0) & (weights < 1)
    assert ramp.any() and torch.equal(weights >= 1, hard >= 1)
    never = (weights == 0).expand_as(source)
    assert torch.equal(generation.latents[never], source[never])
    assert not torch.equal(generation.latents[ramp.expand_as(source)], source[ramp.expand_as(source)])


def _flow_unipc():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def _t2v_pipeline(scheduler):
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, transformer=tiny_wan_model(), vae=reference.random_vae(), scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hand_written_blend(pipe, embeds, source, keep, steps, guidance, seed):
    """diffusers' inpainting loop, written out: step, then `(1 − m)·noised source + m·latents` at the next sigma."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed))
    noise, m = latents.clone(), (~keep).float()
    for i, t in enumerate(scheduler.timesteps):
        cond = pipe.transformer(latents, t.expand(1), embeds, return_dict=False)[0]
        uncond = pipe.transformer(latents, t.expand(1), -embeds, return_dict=False)[0]
        velocity = uncond + guidance * (cond - uncond)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if i + 1 < steps:
            after = scheduler.timesteps[i + 1 : i + 2]
            if hasattr(scheduler, "scale_noise"):
                proper = scheduler.scale_noise(source, after, noise)
            else:
                proper = scheduler.add_noise(source, noise, after)
        else:
            proper = source
        latents = (1 - m) * proper + m * latents
    return latents


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_blending_matches_a_hand_written_loop(scheduler):
    make = {"euler": reference.scheduler, "unipc": _flow_unipc}[scheduler]
    pipe = _t2v_pipeline(make())
    steps, guidance, seed = 6, 4.0, 3
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 8, 32, generator=gen)
    source = torch.randn(1, 16, 3, 8, 8, generator=gen)
    pixel_mask = np.zeros((9, 64, 64), dtype=bool)
    pixel_mask[:, 16:40, 20:44] = True
    weights = blend.edit_mask(pixel_mask, (1, 1))
    keep = weights < 0.5
    expected = _hand_written_blend(pipe, embeds, source, keep, steps, guidance, seed)
    pipe.scheduler = make()
    with blend.blended(pipe, source, weights) as blending:
        latents = pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=-embeds,
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).frames
    assert blending.calls == steps
    assert torch.equal(latents, expected)
    assert torch.equal(latents[keep.expand_as(latents)], source[keep.expand_as(source)])
    if scheduler == "unipc":  # the multistep history outside the edit is the source's trajectory, not the model's
        x0 = pipe.scheduler.model_outputs[-1]
        assert torch.allclose(x0[keep.expand_as(x0)], source[keep.expand_as(source)], atol=1e-5)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_the_noised_source_is_the_schedulers_own(scheduler):
    sched = {"euler": reference.scheduler, "unipc": _flow_unipc}[scheduler]()
    sched.set_timesteps(7)
    gen = torch.Generator().manual_seed(1)
    source, noise = torch.randn(1, 4, 2, 3, 3, generator=gen), torch.randn(1, 4, 2, 3, 3, generator=gen)
    blending = blend.LatentBlend(sched, source, torch.zeros(1, 1, 2, 3, 3))
    blending.sigmas = torch.cat([sched.sigmas[:7].float(), torch.zeros(1)])
    blending.noise = noise
    for index in range(1, 7):
        t = sched.timesteps[index : index + 1]
        own = sched.scale_noise(source, t, noise) if scheduler == "euler" else sched.add_noise(source, noise, t)
        assert torch.equal(blending.noised_source(index, torch.float32), own)
    assert torch.equal(blending.noised_source(7, torch.float32), source)


def test_blend_refuses_a_scheduler_it_cannot_follow():
    from diffusers import DDIMScheduler

    with pytest.raises(InputError, match="not a flow-matching scheduler"):
        blend.check_scheduler(DDIMScheduler())


# -- plain Wan pipelines as masked editors -------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_folders(tmp_path_factory):
    from diffusers import WanVideoToVideoPipeline

    root = tmp_path_factory.mktemp("wan")
    t2v = _t2v_pipeline(reference.scheduler())
    t2v.save_pretrained(root / "t2v")
    parts = {name: getattr(t2v, name) for name in ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")}
    WanVideoToVideoPipeline(**parts).save_pretrained(root / "v2v")
    embeds = root / "embeds.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({"prompt_embeds": torch.randn(1, 8, 32, generator=gen)}, str(embeds))
    return root, embeds


@pytest.mark.parametrize("kind", ["t2v", "v2v"])
def test_plain_wan_pipelines_edit_under_blend(wan_folders, kind):
    root, embeds = wan_folders
    workload = Workload(
        pipeline=str(root / kind), prompt_embeds=str(embeds), clips=parse_clip_names("box"), contract="blend+paste"
    ).replace(**SIZE)
    s = LoadedWorkload(workload)
    clip = s.clips[0]
    uncached = s.generate(clip)
    source, weights = s.blend_inputs(clip)
    keep = (weights < 0.5).expand_as(source)
    assert torch.equal(uncached.latents[keep], source[keep])
    outside = ~clip.mask
    assert np.array_equal(uncached.frames[outside], clip.frames[outside].astype(np.float32) / 255.0)
    if kind == "t2v":  # WanVideoToVideoPipeline calls its transformer outside cache contexts: no engine run yet
        policy = Policy(name="reuse").replace(warmup_steps=1)
        handle = apply_hetcache(s.pipe, policy, mask=s.engine_mask(clip), strict=False, plan="FFRFF")
        try:
            cached = s.generate(clip)
            assert handle.stats()["decisions"] == "FFRFF"
        finally:
            remove_hetcache(s.pipe)
        quality = clip_quality(uncached.frames, cached.frames, clip.mask, uncached.latents, cached.latents)
        assert 10 < quality["psnr_mask"] < 100 and quality["psnr_background"] == 100.0
    with pytest.raises(InputError, match="edits a masked video only by latent blending"):
        LoadedWorkload(workload.replace(contract="paste"))


# -- metrics and budgets -------------------------------------------------------------------------------


def test_the_seam_band_straddles_the_mask_edge(raw):
    _, clip, none = raw
    parts = regions(clip.mask, seam=4)
    seam, mask = parts["seam"], torch.from_numpy(clip.mask)
    assert (seam & mask).any() and (seam & ~mask).any() and not (seam & parts["background"]).any()
    pasted = composite(none.frames, clip.frames, clip.mask)
    quality = clip_quality(pasted, composite(none.frames * 0.98, clip.frames, clip.mask), clip.mask)
    assert quality["psnr_background"] == 100.0 and quality["psnr_seam"] > quality["psnr_mask"]
    assert quality["psnr"] > quality["psnr_mask"]  # whole frame: the pasted area hides the error


def test_a_bare_budget_reads_the_contracts_metric():
    from hetcache.tuner.budget import parse_budget

    assert parse_budget("30", default_metric=parse_contract("paste").budget_metric).as_dict() == {"psnr_mask": 30.0}
    assert parse_budget("30,ssim=0.9").as_dict() == {"psnr": 30.0, "ssim": 0.9}


def test_the_tuners_budget_under_paste_reads_the_in_mask_metric(tmp_path):
    import optuna
    from hetcache.tuner.cli import main

    out = tmp_path / "tune"
    argv = ["--budget", "30", "--contract", "paste", "--weights", "random", "--clips", "box", "--trials", "3"]
    argv += ["--height", "64", "--width", "64", "--frames", "9", "--steps", "6", "--out", str(out)]
    code, err = run_cli(main, argv)
    assert code in (0, 3), err
    study = optuna.load_study(study_name="reference-paste-psnr_mask30", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["budget"] == {"psnr_mask": 30.0} and study.user_attrs["workload"]["contract"] == "paste"
    scored = [t for t in study.trials if t.constraints and "quality" in t.user_attrs]
    assert scored
    for trial in scored:
        quality = trial.user_attrs["quality"]
        assert quality["psnr_background"] == 100.0  # every trial and its reference were pasted back
        assert set(trial.constraints) == {"psnr_mask", "min_speedup"}
        assert trial.constraints["psnr_mask"] == pytest.approx(30.0 - quality["psnr_mask"])
    (folder,) = (out / "references").iterdir()
    assert folder.name.startswith("paste-")
    code, err = run_cli(main, ["--budget", "psnr=40", *argv[2:], "--study-name", "whole", "--trials", "1"])
    assert "whole-frame PSNR after paste-back is a function of the mask's area" in err


# -- the benchmarks' contract plumbing -----------------------------------------------------------------


def test_the_overhead_benchmark_times_every_contract(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import contracts as bench

    out = tmp_path / "contracts"
    argv = ["--weights", "random", "--height", "64", "--width", "64", "--frames", "9", "--steps", "4"]
    assert bench.main([*argv, "--clips", "box", "--reps", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["contracts"]) == set(bench.CONTRACTS)
    assert report["contracts"]["none"]["paste_s"]["median"] < report["contracts"]["paste"]["paste_s"]["median"]
    step = report["step"]
    assert step["later_blended_step_s"] > 0 and report["provenance"]["command"].startswith("python benchmarks/")
    assert "| blend+paste |" in out.with_suffix(".md").read_text()


def test_a_text_to_video_pipeline_is_profiled_as_a_masked_editor_under_blend(wan_folders, tmp_path):
    from hetcache.profiler import Profile
    from hetcache.profiler.cli import main

    root, embeds = wan_folders
    out = tmp_path / "profile"
    argv = ["--pipeline", str(root / "t2v"), "--prompt-embeds", str(embeds), "--clips", "box", "--steps", "3"]
    argv += ["--height", "64", "--width", "64", "--frames", "9", "--attention-every", "0", "--out", str(out)]
    code, err = run_cli(main, [*argv, "--contract", "blend"])
    assert code == 0, err
    data = Profile.load(out).data
    assert data["workload"]["contract"] == "blend" and data["clips"][0]["token_classes"] is not None
    code, _ = run_cli(main, [*argv[:-1], str(tmp_path / "raw")])  # no blending: profiled as text-to-video
    assert Profile.load(tmp_path / "raw").data["clips"][0]["token_classes"] is None


def test_reference_policies_are_named_by_contract():
    from hetcache.tuner.budget import parse_budget
    from hetcache.tuner.ship import reference_policy_name

    budget = parse_budget("35", default_metric="psnr_mask")
    assert reference_policy_name(budget, parse_contract("paste")) == "reference-paste-psnr_mask35"
    assert reference_policy_name(parse_budget("psnr=35")) == "reference-psnr35"
