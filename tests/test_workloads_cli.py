"""Workloads (reference and real pipelines from a local folder) and the `hetcache` command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_pipeline
from safetensors.torch import save_file

from hetcache.cli import main
from hetcache.cli_common import add_workload_arguments, workload_from_args
from hetcache.errors import InputError, UnsupportedModelError
from hetcache.video import write_mask, write_video
from hetcache.workloads import CLIP_KINDS, MASK_KINDS, SMALL_MASK_KINDS, ClipSource, Workload, load_workload
from hetcache.workloads.clips import SMALL_MASK_AREA, synthetic_clip
from hetcache.workloads.execute import LoadedWorkload
from hetcache.workloads.pipelines import load_clips

SMALL = dict(weights="random", height=64, width=64, num_frames=9, steps=3, clips=(ClipSource("box", kind="box"),))
SMALL_FLAGS = [
    "--weights",
    "random",
    "--height",
    "64",
    "--width",
    "64",
    "--frames",
    "9",
    "--steps",
    "3",
    "--clips",
    "box",
]


def test_reference_workload_runs_deterministically():
    session = LoadedWorkload(Workload(**SMALL))
    first = session.generate(session.clips[0])
    second = session.generate(session.clips[0])
    assert first.frames.shape == (9, 64, 64, 3)
    assert first.latents.shape == (1, 16, 3, 8, 8)
    assert np.array_equal(first.frames, second.frames)
    assert first.denoise_seconds > 0 and first.total_seconds >= first.denoise_seconds


def test_reference_calibration_set_has_every_mask_kind_at_the_reference_size():
    workload = Workload()
    assert [s.kind for s in workload.clip_sources()] == ["box", "ellipse", "moving", "band", "two_regions"]
    assert workload.synthetic_size() == (17, 256, 256)
    tokens = 5 * (256 // 16) * (256 // 16)
    assert tokens >= 1000


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("kind", SMALL_MASK_KINDS)
def test_small_mask_kinds_cover_their_stated_share_of_every_frame(kind, size):
    low, high = SMALL_MASK_AREA[kind]
    assert 0.03 <= low < high <= 0.10
    shares = np.concatenate([synthetic_clip(kind, seed, 17, size, size).mask.mean(axis=(1, 2)) for seed in range(12)])
    assert shares.min() >= low and shares.max() <= high
    assert shares.max() - shares.min() > 0.01  # the size varies with the seed


@pytest.mark.parametrize("kind", SMALL_MASK_KINDS)
def test_small_mask_kinds_are_deterministic_per_seed_and_leave_the_training_kinds_alone(kind):
    first, again, other = (synthetic_clip(kind, seed, 9, 128, 128) for seed in (7001, 7001, 7002))
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.mask, other.mask)
    # same seed, same scene: only the mask differs from the calibration kind it is drawn after
    assert np.array_equal(first.frames, synthetic_clip("box", 7001, 9, 128, 128).frames)
    assert kind not in MASK_KINDS and kind in CLIP_KINDS
    if kind == "small_moving":  # it follows the first object: the mask moves between frames
        assert not np.array_equal(first.mask[0], first.mask[-1])


def test_small_mask_kinds_are_selectable_from_flags_and_workload_files(tmp_path):
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    workload = workload_from_args(parser.parse_args(["--clips", "small_box,small_moving,box"]))
    assert [s.kind for s in workload.clip_sources()] == ["small_box", "small_moving", "box"]
    path = tmp_path / "w.json"
    small = Workload(**{**SMALL, "clips": (ClipSource("s", kind="small_box", seed=7001),)})
    path.write_text(json.dumps(small.to_dict()))
    assert load_workload(path).clips[0].kind == "small_box"
    with pytest.raises(InputError, match="small_box, small_moving"):
        workload_from_args(parser.parse_args(["--clips", "tiny_box"]))


def test_clips_with_a_seed_are_other_clips_of_that_kind():
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    workload = workload_from_args(parser.parse_args(["--clips", "box-7001,small_moving-3,moving", "--frames", "9"]))
    box, small, moving = workload.clip_sources()
    assert (box.name, box.kind, box.seed) == ("box-7001", "box", 7001)
    assert (small.name, small.kind, small.seed) == ("small_moving-3", "small_moving", 3)
    assert moving == Workload().clip_sources()[2]  # a bare kind: the reference calibration clip (its seed)
    held_out, calibration = (
        load_clips(Workload(**{**SMALL, "clips": (s,)}))[0] for s in (box, Workload().clip_sources()[0])
    )
    assert not np.array_equal(held_out.mask, calibration.mask)
    for bad, match in (
        ("box-", "unknown clips box-"),
        ("hexagon-7", "unknown clips hexagon-7"),
        (",", "names no clip"),
    ):
        with pytest.raises(InputError, match=match):
            workload_from_args(parser.parse_args(["--clips", bad]))


@pytest.fixture
def saved_pipeline(tmp_path):
    pipe = tiny_pipeline()
    folder = tmp_path / "pipeline"
    pipe.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    embeds = tmp_path / "embeds.safetensors"
    save_file(
        {"prompt_embeds": torch.randn(1, 8, 32, generator=gen), "negative_prompt_embeds": torch.zeros(1, 8, 32)},
        str(embeds),
    )
    frames = (np.random.default_rng(0).random((10, 64, 80, 3)) * 255).astype(np.uint8)
    mask = np.zeros((10, 64, 80), dtype=bool)
    mask[:, 16:48, 16:48] = True
    video = write_video(tmp_path / "video.mp4", frames)
    mask_path = write_mask(tmp_path / "mask.mp4", mask)
    return folder, embeds, video, mask_path


def test_real_pipeline_from_a_save_pretrained_folder(saved_pipeline):
    folder, embeds, video, mask = saved_pipeline
    workload = Workload(
        name="local",
        pipeline=str(folder),
        prompt_embeds=str(embeds),
        steps=2,
        clips=(ClipSource("v", video=str(video), mask=str(mask)),),
    )
    session = LoadedWorkload(workload)
    assert type(session.transformer).__name__ == "WanVACETransformer3DModel"
    clip = session.clips[0]
    assert clip.frames.shape == (9, 64, 80, 3) and "trimmed from 10 to 9 frames (Wan needs 4k+1)" in clip.notes
    assert session.generate(clip).frames.shape == (9, 64, 80, 3)


def test_real_pipeline_needs_prompt_embeddings_and_a_vace_pipeline(saved_pipeline, tmp_path):
    folder, _, video, mask = saved_pipeline
    clips = (ClipSource("v", video=str(video), mask=str(mask)),)
    with pytest.raises(InputError, match=r"gives no prompt embeddings.*--prompt-embeds"):
        LoadedWorkload(Workload(pipeline=str(folder), clips=clips))
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "CogVideoXPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="is a CogVideoXPipeline"):
        LoadedWorkload(Workload(pipeline=str(folder), clips=clips))
    with pytest.raises(InputError, match="cannot load pipeline"):
        LoadedWorkload(Workload(pipeline=str(tmp_path / "nowhere"), clips=clips))


def test_workload_files_are_validated(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"schema": "hetcache.workload/v1", "steps": "many"}))
    with pytest.raises(InputError, match="steps must be a non-negative integer"):
        load_workload(path)
    path.write_text(json.dumps({"schema": "hetcache.workload/v1", "clips": [{"name": "x", "kind": "triangle"}]}))
    with pytest.raises(InputError, match=r"clips\[0\].kind must be one of"):
        load_workload(path)
    for good in (Workload(**SMALL), Workload()):  # sizes unset (null) read back as unset: the reference size
        path.write_text(json.dumps(good.to_dict()))
        assert load_workload(path) == good
    path.write_text(json.dumps({"schema": "hetcache.workload/v1", "seed": None}))
    with pytest.raises(InputError, match="seed must be a non-negative integer, got None"):
        load_workload(path)


def test_run_command_writes_clips_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", *SMALL_FLAGS, "--policy", "reference-psnr35", "--compare", "--reps", "1", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "run.json").read_text())
    assert record["schema"] == "hetcache.run/v1"
    clip = record["clips"][0]
    assert len(clip["stats"]["decisions"]) == 3 and clip["quality"]["psnr"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".hetcache-output",
        "box.mp4",
        "box.uncached.mp4",
        "inputs",
        "run.json",
    ]
    printed = capsys.readouterr().out
    assert "speedup:" in printed and "PSNR" in printed


def test_run_command_refuses_bad_input_without_writing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--pipeline",
            str(tmp_path),
            "--video",
            str(tmp_path / "missing.mp4"),
            "--mask",
            str(tmp_path / "m.mp4"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".run*"))
    out.mkdir()
    assert main(["run", *SMALL_FLAGS, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", *SMALL_FLAGS, "--policy", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["run", *SMALL_FLAGS, "--clips", "hexagon", "--out", str(tmp_path / "y")]) == 2


def test_policies_command(capsys, tmp_path):
    assert main(["policies", "list"]) == 0
    assert "wan21-vace-1.3b-paper" in capsys.readouterr().out
    assert main(["policies", "validate", "reference-psnr35"]) == 0
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["policies", "validate", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_console_script_reports_errors_with_exit_code_2(tmp_path):
    script = [sys.executable, "-m", "hetcache.cli", "policies", "show", str(tmp_path / "missing.json")]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_tuning_and_profiling_a_real_pipeline_folder_without_size_flags(saved_pipeline, tmp_path):
    """Sizes come from the clip when no flag gives them (the default for real pipelines)."""
    from hetcache.profiler.cli import main as profile_main
    from hetcache.tuner.cli import main as tune_main

    folder, embeds, video, mask = saved_pipeline
    source = ["--pipeline", str(folder), "--prompt-embeds", str(embeds), "--video", str(video), "--mask", str(mask)]
    assert profile_main([*source, "--steps", "4", "--out", str(tmp_path / "profile")]) == 0  # the study's workload
    code = tune_main(
        [
            *source,
            "--steps",
            "4",
            "--budget",
            "psnr=20",
            "--trials",
            "2",
            "--profile",
            str(tmp_path / "profile"),
            "--out",
            str(tmp_path / "tune"),
        ]
    )
    assert code == 0
    policy = json.loads((tmp_path / "tune" / "policy.json").read_text())
    assert policy["workload"]["height"] == 64 and policy["workload"]["width"] == 80
