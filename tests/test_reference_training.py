"""The reference-model training script (smoke run) and the checks that guard the shipped weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hetcache import reference
from hetcache.errors import InputError
from hetcache.reference import train


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "model"
    record = train.train(
        out,
        steps=3,
        batch=2,
        pool_size=6,
        seed=0,
        threads=None,
        progress=False,
        frames=(9,),
        sides=(64,),
        calibration_clips=4,
    )
    return out, record


def test_training_writes_a_loadable_pipeline_with_a_training_record(trained_folder):
    from diffusers import WanVACEPipeline

    out, record = trained_folder
    assert record["steps"] == 3 and record["seed"] == 0
    assert set(record["final_loss"]) >= {"loss", "loss_in_mask", "loss_outside"}
    assert record["data"]["frames"] == [9] and "prepare_video_latents" in record["data"]["preprocessing"]
    assert set(record["checksums"]) == {
        "model_index.json",
        "prompt_embeds.safetensors",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    }
    pipe = WanVACEPipeline.from_pretrained(out, text_encoder=None, tokenizer=None, dtype=torch.float16)
    transformer = pipe.transformer
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.float16
    assert transformer.blocks[0].scale_shift_table.dtype == torch.float32  # kept in fp32 by diffusers
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size < 10 * 2**20
    assert reference.verify(out)["steps"] == 3
    card = (out / "MODEL_CARD.md").read_text()
    assert "not** an inpainting model" in card and record["checksums"]["transformer/config.json"] in card


def test_training_is_deterministic_for_a_fixed_seed_and_step_count(trained_folder, tmp_path):
    _, record = trained_folder
    again = train.train(
        tmp_path / "again",
        steps=3,
        batch=2,
        pool_size=6,
        seed=0,
        progress=False,
        frames=(9,),
        sides=(64,),
        calibration_clips=4,
    )
    assert again["checksums"] == record["checksums"]


def test_a_stopped_run_resumes_to_the_same_weights(trained_folder, tmp_path):
    _, record = trained_folder
    small = dict(steps=3, batch=2, pool_size=6, seed=0, progress=False, frames=(9,), sides=(64,), calibration_clips=4)
    out = tmp_path / "split"
    assert train.train(out, **small, checkpoint_every=1, stop_after=2) is None
    assert train.checkpoint_path(out).is_file() and not out.exists()
    with pytest.raises(InputError, match=r"other settings \(batch 2 vs 4\)"):
        train.train(out, **{**small, "batch": 4}, resume=True)
    resumed = train.train(out, **small, resume=True)
    assert resumed["checksums"] == record["checksums"]
    assert not train.checkpoint_path(out).exists()
    with pytest.raises(InputError, match="no checkpoint"):
        train.train(out, **small, resume=True)


def test_training_continues_from_a_pipeline_folder_with_a_low_noise_share(trained_folder, tmp_path):
    out, record = trained_folder
    small = dict(steps=2, batch=2, pool_size=6, seed=0, progress=False, frames=(9,), sides=(64,), calibration_clips=4)
    continued = train.train(tmp_path / "continued", **small, init=out, low_sigma_share=0.5)
    assert continued["continued_from"]["steps"] == 3 and continued["continued_from"]["seed"] == 0
    assert continued["data"]["init"]["transformer"] == record["checksums"][train.INIT_WEIGHTS]
    assert continued["data"]["low_sigma_share"] == 0.5 and "log-uniform" in continued["data"]["objective"]
    fresh = train.train(tmp_path / "fresh", **small)
    assert continued["checksums"][train.INIT_WEIGHTS] != fresh["checksums"][train.INIT_WEIGHTS]
    again = train.train(tmp_path / "again", **small, init=out, low_sigma_share=0.5)
    assert again["checksums"] == continued["checksums"]


def test_verify_catches_modified_weights_and_unknown_config_keys(trained_folder, tmp_path):
    out, _ = trained_folder
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        reference.verify(copy)
    shutil.copy(out / "transformer" / "diffusion_pytorch_model.safetensors", weights)
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["future_option"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"transformer/config\.json' has checksum"):
        reference.verify(copy)
    card = json.loads((copy / reference.CARD_FILE).read_text())
    card["checksums"]["transformer/config.json"] = reference.file_checksum(config_path)
    (copy / reference.CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(InputError, match="does not accept: future_option"):
        reference.verify(copy)
    with pytest.raises(InputError, match="is missing"):
        reference.verify(tmp_path / "nothing")


def test_the_hetcache_command_hands_every_flag_to_the_training_script(tmp_path, capsys):
    from hetcache.cli import main

    assert main(["reference-train", "--out", str(tmp_path / "m"), "--steps", "5", "--resume"]) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def _latent_change(vae, clip) -> torch.Tensor:
    """Per-cell latent change [T', h, w] from painting the clip's hole grey, relative to the latents' variance."""
    with torch.no_grad():
        original = vae.encode(train.vae_input(clip.frames)).latent_dist.mode()
        painted = vae.encode(train.vae_input(clip.painted())).latent_dist.mode()
    return ((original - painted) ** 2).mean(1)[0] / original.var(dim=(0, 2, 3, 4)).mean()


def test_reference_vae_encodes_local_pixel_content(monkeypatch):
    # Random init hides the grey hole from the latents; the localised VAE shows it there and only within VAE_REACH.
    from diffusers import AutoencoderKLWan

    from hetcache.reference import evaluate
    from hetcache.workloads.clips import MASK_KINDS, synthetic_clip

    torch.manual_seed(0)
    raw, vae = AutoencoderKLWan(**reference.VAE_CONFIG).eval(), reference.random_vae()
    missed_by_a_smaller_reach = 0
    for kind in MASK_KINDS:
        clip = synthetic_clip(kind, 3, 13, 128, 128)
        change = _latent_change(vae, clip)
        regions = {k: v[0, 0] for k, v in evaluate.latent_regions(clip, (1, 16, *change.shape)).items()}
        inside = float(change[regions["inside"]].mean())
        assert inside > 0.5 and float(_latent_change(raw, clip)[regions["inside"]].mean()) < 0.1 * inside
        assert 0 < float(change[regions["near"]].mean()) < inside
        assert float(change[regions["outside"]].abs().max()) == 0.0
        for smaller in ((0, 2), (1, 1)):
            monkeypatch.setattr(evaluate, "VAE_REACH", smaller)
            outside = evaluate.latent_regions(clip, (1, 16, *change.shape))["outside"][0, 0]
            missed_by_a_smaller_reach += int((change[outside] > 0).sum())
        monkeypatch.undo()
    assert missed_by_a_smaller_reach > 0
