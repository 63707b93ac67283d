"""Video and mask IO with PyAV, reconciliation rules, and quality metrics checked against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hetcache import metrics
from hetcache.errors import InputError
from hetcache.lpips import LPIPS, load_lpips
from hetcache.video import Constraints, load_clip, read_mask, read_video, reconcile, write_mask, write_video
from hetcache.workloads.clips import Clip, synthetic_clip


def _frames(count=9, height=48, width=64):
    t = np.arange(count).reshape(-1, 1, 1)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 3 + t * 8) % 256
    g = (y * 4 + t * 4) % 256
    b = np.full_like(r, 90)
    return np.stack([r, g, b + 0 * r], axis=-1).astype(np.uint8)


def test_mp4_round_trip_keeps_frames_and_quality(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(8)
    assert peak_signal_noise_ratio(frames, back) > 35
    assert not list(tmp_path.glob("*.part"))


def test_png_folder_and_mask_binarisation(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_frames(5)):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    frames, _ = read_video(folder)
    assert frames.shape == (5, 48, 64, 3)
    mask = np.zeros((5, 48, 64), dtype=bool)
    mask[:, 10:30, 20:40] = True
    back = read_mask(write_mask(tmp_path / "mask.mp4", mask))
    assert (back == mask).mean() > 0.99


def test_grey_mask_is_refused_unless_a_threshold_is_stated(tmp_path):
    grey = np.repeat((np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None]), 48, axis=1)
    path = write_video(tmp_path / "grey.mp4", np.repeat(np.repeat(grey, 5, axis=0), 3, axis=-1))
    with pytest.raises(InputError, match=r"is not binary.*--mask-threshold"):
        read_mask(path)
    mask = read_mask(path, threshold=0.5)
    assert 0.4 < mask.mean() < 0.6


def test_missing_and_unreadable_inputs(tmp_path):
    with pytest.raises(InputError, match=r"video '.*nothing.mp4' does not exist"):
        read_video(tmp_path / "nothing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot be read as a video"):
        read_video(junk)


def test_reconcile_states_every_change_and_refuses_mismatches_in_strict_mode():
    video = _frames(22, 48, 70)
    mask = np.zeros((10, 48, 64), dtype=bool)
    clip = Clip("sample", video, mask)
    with pytest.raises(InputError, match="mask is 64x48 but video is 70x48"):
        reconcile(clip, Constraints())
    fitted = reconcile(clip, Constraints(), fit="crop")
    assert fitted.frames.shape == (9, 48, 64, 3) and fitted.mask.shape == (9, 48, 64)
    assert fitted.notes == [
        "video centre-cropped from 70x48 to the mask's 64x48",
        "video trimmed from 22 to 10 frames to match",
        "trimmed from 10 to 9 frames (Wan needs 4k+1)",
    ]
    assert np.array_equal(fitted.frames[0], video[0, :, 3:67])
    odd = reconcile(Clip("odd", _frames(9, 40, 72), np.zeros((9, 40, 72), bool)), Constraints())
    assert odd.frames.shape[1:3] == (32, 64) and "multiples of 16" in odd.notes[-1]
    resized = reconcile(Clip("r", _frames(9, 48, 64), np.zeros((9, 48, 64), bool)), Constraints(height=32, width=32))
    assert resized.frames.shape == (9, 32, 32, 3)
    with pytest.raises(InputError, match=r"needs at least 5 \(4k\+1\)\. Fix: pass a clip of at least 5 frames"):
        reconcile(Clip("short", _frames(3), np.zeros((3, 48, 64), bool)), Constraints())
    with pytest.raises(InputError, match="has 9 frames but 13 were asked for"):
        reconcile(Clip("few", _frames(9), np.zeros((9, 48, 64), bool)), Constraints(num_frames=13))


def test_one_requested_side_sets_the_other_by_the_aspect_ratio():
    clip = Clip("wide", _frames(9, 48, 96), np.zeros((9, 48, 96), bool))
    by_width = reconcile(clip, Constraints(width=64))
    assert by_width.frames.shape == (9, 32, 64, 3) and by_width.mask.shape == (9, 32, 64)
    assert by_width.notes == ["resized from 96x48 to 64x32 (the other side keeps the aspect ratio)"]
    by_height = reconcile(clip, Constraints(height=32))
    assert by_height.frames.shape == (9, 32, 64, 3)


def test_trim_notes_name_the_frames_asked_for_and_the_workload_file_checks_counts(tmp_path):
    import json

    from hetcache.workloads import load_workload

    clip = Clip("long", _frames(12), np.zeros((12, 48, 64), bool))
    assert reconcile(clip, Constraints(num_frames=9)).notes == ["trimmed from 12 to the requested 9 frames"]
    path = tmp_path / "w.json"
    for field, value, message in (
        ("num_frames", 10, "num_frames must be 4k+1 .* use 9 or 13"),
        ("width", 0, "width must be a multiple of 16 pixels ≥ 16, got 0"),
        ("mask_threshold", 1.5, r"mask_threshold must be a number in \(0, 1\), got 1.5"),
        ("steps", 1, "steps must be at least 2"),
    ):
        path.write_text(json.dumps({"schema": "hetcache.workload/v1", field: value}))
        with pytest.raises(InputError, match=message):
            load_workload(path)


def test_load_clip_from_files(tmp_path):
    frames = _frames(12, 48, 64)
    mask = np.zeros((12, 48, 64), dtype=bool)
    mask[:, 16:32, 16:48] = True
    clip = load_clip(write_video(tmp_path / "v.mp4", frames), write_mask(tmp_path / "m.mp4", mask), Constraints())
    assert clip.frames.shape == (9, 48, 64, 3) and clip.mask.sum() == 9 * 16 * 32


def test_psnr_and_ssim_match_scikit_image():
    clip = synthetic_clip("box", 0, 5, 64, 64)
    ref = clip.frames.astype(np.float64) / 255
    rng = np.random.default_rng(0)
    out = np.clip(ref + rng.normal(0, 0.03, ref.shape), 0, 1)
    quality = metrics.clip_quality(ref, out, clip.mask)
    expected_ssim = np.mean(
        [
            structural_similarity(
                ref[i],
                out[i],
                channel_axis=-1,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for i in range(5)
        ]
    )
    assert quality["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, out, data_range=1.0), abs=1e-9)
    assert quality["ssim"] == pytest.approx(expected_ssim, abs=2e-6)  # computed in float32
    assert metrics.ssim(metrics._as_float_video(ref), metrics._as_float_video(out)) == pytest.approx(
        expected_ssim, abs=1e-9
    )
    inside = clip.mask
    assert quality["psnr_mask"] == pytest.approx(
        peak_signal_noise_ratio(ref[inside], out[inside], data_range=1.0), abs=1e-9
    )
    assert quality["lpips"] == "unavailable"


def test_region_metrics_localise_the_error():
    clip = synthetic_clip("box", 0, 5, 64, 64)
    ref = clip.frames.astype(np.float64) / 255
    out = ref.copy()
    out[clip.mask] = np.clip(out[clip.mask] + 0.2, 0, 1)
    quality = metrics.clip_quality(ref, out, clip.mask)
    assert quality["psnr_background"] == metrics.PSNR_CAP
    assert quality["psnr_mask"] < 20
    assert quality["ssim_background"] == pytest.approx(1.0)
    assert metrics.clip_quality(ref, ref, clip.mask)["psnr"] == metrics.PSNR_CAP
    assert metrics.latent_rel_l2(torch.ones(3), torch.ones(3) * 1.1) == pytest.approx(0.1)


def test_mean_and_worst_respect_metric_direction():
    per_clip = [
        {"psnr": 30.0, "latent_rel_l2": 0.1, "lpips": "unavailable"},
        {"psnr": 20.0, "latent_rel_l2": 0.3, "lpips": "unavailable"},
    ]
    assert metrics.mean_quality(per_clip) == {"psnr": 25.0, "latent_rel_l2": pytest.approx(0.2), "lpips": "unavailable"}
    assert metrics.worst_quality(per_clip) == {"psnr": 20.0, "latent_rel_l2": 0.3, "lpips": "unavailable"}


def test_lpips_loads_user_weights_and_refuses_missing_ones(tmp_path):
    with pytest.raises(InputError, match="LPIPS weights not found"):
        load_lpips(tmp_path)
    torch.manual_seed(0)
    model = LPIPS()
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, tmp_path / "alexnet-owt-test.pth")
    torch.save({f"lin{i}.model.1.weight": h.weight.abs() for i, h in enumerate(model.heads)}, tmp_path / "alex.pth")
    loaded = load_lpips(tmp_path)
    a = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert loaded.video_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert loaded.video_distance(a, (a + 0.3).clamp(0, 1)) > 0
    quality = metrics.clip_quality(
        a.permute(0, 2, 3, 1).numpy(), a.permute(0, 2, 3, 1).numpy(), np.zeros((2, 64, 64), bool), lpips=loaded
    )
    assert quality["lpips"] == pytest.approx(0.0, abs=1e-6)
