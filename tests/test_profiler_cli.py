"""`hetcache-profile` end to end: the reference workload, a saved text-to-video pipeline, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_wan_model
from hetcache.profiler import Profile
from hetcache.profiler.cli import main
from safetensors.torch import save_file

from hetcache import reference
from hetcache.video import write_mask, write_video

SMALL = ["--weights", "random", "--steps", "4", "--clips", "box", "--height", "64", "--width", "64", "--frames", "9"]


def test_reference_workload_end_to_end(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main([*SMALL, "--attention-every", "2", "--degree", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "drift G" in printed and "blocks.5" in printed and "vace_blocks.1" in printed
    assert "step curve (timestep_proj): polynomial [" in printed and "headroom:" in printed
    assert f"wrote {out}/" in printed
    profile = Profile.load(out)
    data = profile.data
    assert data["workload"]["steps"] == 4 and [c["name"] for c in data["clips"]] == ["box"]
    assert data["workload"]["weights"] == "random"
    assert data["model"]["family"] == "wan-vace"
    assert len(data["layers"]) == 8 and data["step_curve"]["degree"] == 2
    assert data["tensors"]["attention_steps"] == [0, 2]
    assert profile.tensors()["drift"].shape == (2, 4, 8, 3 * 4 * 4)
    assert any("random weights" in w for w in data["headroom"]["warnings"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile"]

    before = (out / "profile.json").read_text()
    assert main([*SMALL, "--out", str(out)]) == 2
    assert "profile folder" in capsys.readouterr().err
    assert (out / "profile.json").read_text() == before  # refused before anything ran
    assert main([*SMALL, "--layers", "1", "--attention-every", "0", "--out", str(out), "--overwrite"]) == 0
    assert [layer["name"] for layer in Profile.load(out).data["layers"]] == ["blocks.1"]


def test_bad_layer_and_empty_mask(tmp_path, capsys):
    out = tmp_path / "profile"
    assert main([*SMALL, "--layers", "0,99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetcache-profile: error: --layers names main block 99, but the transformer has 6")
    assert "Fix: use main block indices 0–5 or VACE blocks vace.0–vace.1" in err
    assert not out.exists()

    frames = (np.random.default_rng(0).random((9, 64, 64, 3)) * 255).astype(np.uint8)
    write_video(tmp_path / "in.mp4", frames)
    write_mask(tmp_path / "mask.mp4", np.zeros((9, 64, 64), dtype=bool))
    args = ["--weights", "random", "--steps", "2", "--height", "64", "--width", "64", "--frames", "9"]
    files = ["--video", str(tmp_path / "in.mp4"), "--mask", str(tmp_path / "mask.mp4")]
    assert main([*args, *files, "--out", str(out)]) == 2
    assert "the mask of clip 'in' is empty" in capsys.readouterr().err
    assert not out.exists()


def test_saved_text_to_video_pipeline(tmp_path, capsys):
    """--pipeline with a WanPipeline folder (no text encoder) and prompt embeddings: profiled without a mask."""
    from diffusers import WanPipeline

    folder = tmp_path / "wan-t2v"
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=tiny_wan_model(),
        vae=reference.random_vae(),
        scheduler=reference.scheduler(),
    )
    pipe.save_pretrained(folder)
    embeds = tmp_path / "embeds.safetensors"
    save_file({"prompt_embeds": torch.randn(1, 8, 32), "negative_prompt_embeds": torch.randn(1, 8, 32)}, str(embeds))
    out = tmp_path / "profile"
    args = ["--pipeline", str(folder), "--prompt-embeds", str(embeds), "--steps", "3", "--frames", "5"]
    assert main([*args, "--height", "64", "--width", "64", "--out", str(out)]) == 0
    data = Profile.load(out).data
    assert data["model"]["class"] == "WanTransformer3DModel"
    assert data["clips"][0]["token_classes"] is None and data["clips"][0]["tokens"] == 2 * 4 * 4
    assert any("no edit mask" in w for w in data["headroom"]["warnings"])
    assert "blocks.3" in capsys.readouterr().out

    assert main([*args[:2], "--out", str(tmp_path / "other")]) == 2
    assert "needs prompt embeddings" in capsys.readouterr().err


def test_pipeline_without_transformer(tmp_path, capsys):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = tmp_path / "unet"
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    embeds = tmp_path / "embeds.pt"
    torch.save({"prompt_embeds": torch.randn(1, 4, 8)}, embeds)
    code = main(["--pipeline", str(folder), "--prompt-embeds", str(embeds), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pipeline DDPMPipeline has no transformer" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--attention-every=-1", "argument --attention-every: must be an integer ≥ 0, got -1"),
        ("--num-clips=0", "argument --num-clips: must be an integer ≥ 1, got 0"),
        ("--degree=0", "argument --degree: must be an integer in [1, 10], got 0"),
        ("--small-change=nan", "argument --small-change: must be a finite number, got 'nan'"),
    ],
)
def test_bad_numbers(tmp_path, capsys, flag, message):
    assert main([*SMALL, flag, "--out", str(tmp_path / "p")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
