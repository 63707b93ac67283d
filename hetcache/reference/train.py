"""Train the tiny reference Wan-VACE transformer (flow matching on synthetic masked clips).

The training data goes through the same preprocessing the reference workload uses at inference: the pixel clip with
its masked region painted grey, WanVACEPipeline's conditioning (the reference VAE's inactive/reactive latents and the
8x8-unshuffled mask), and the VAE latents of the original clip as the target. Deterministic for a fixed seed, step
count and thread count. Writes a diffusers `save_pretrained` folder (fp16 transformer) with a training record.

    python -m hetcache.reference.train --out runs/reference-model --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import reference
from ..atomic import atomic_dir, atomic_path, write_json, write_text
from ..errors import InputError
from ..tokens import pixel_mask_to_latent_mask
from ..workloads.clips import MASK_KINDS, synthetic_clip
from ..workloads.execute import pipeline_inputs

FRAME_CHOICES = (9, 13, 17)
SIZE_CHOICES = (128, 160, 192, 224, 256)
NEGATIVE_PROMPT_RATE = 0.1
VAE_RECIPE = (
    "AutoencoderKLWan with seeded random weights made local (hetcache.reference.localise_vae: residual and attention "
    "branches and biases zeroed), latent statistics calibrated on the synthetic clips"
)
MASK_LOSS_WEIGHT = 2.0
# Range of the log-uniform noise levels drawn for a share `low_sigma_share` of each batch: the last steps of a
# shift-3 sampling run (sigma 0.15 -> 0.009 at 20 steps) sit where half-uniform, half-shift-3 draws rarely land.
LOW_SIGMA_RANGE = (1e-3, 0.3)
INIT_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"  # what `init` takes from a pipeline folder


@dataclass
class Example:
    """One training clip after the pipeline's preprocessing (all tensors [1, ...], on CPU)."""

    target: torch.Tensor  # normalised VAE latents of the original clip [1, 16, T', h, w]
    control: torch.Tensor  # WanVACE control states [1, 96, T', h, w]
    latent_mask: torch.Tensor  # [1, 1, T', h, w], 1 = generated region (conservative mapping)


def vae_input(frames: np.ndarray) -> torch.Tensor:
    """RGB uint8 frames [F, H, W, 3] as the VAE takes them: [1, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0


def untrained_pipeline(seed: int, calibration_clips: int = 32):
    """The reference pipeline before training: random transformer, random VAE with calibrated latent statistics."""
    from diffusers import WanVACEPipeline

    vae = reference.random_vae(seed)
    latents = []
    with torch.no_grad():
        for i in range(calibration_clips):
            clip = synthetic_clip(MASK_KINDS[i % len(MASK_KINDS)], 10_000 + i, 17, 128, 128)
            video = vae_input(clip.frames)
            latents.append(vae.encode(video).latent_dist.mode())
    stacked = torch.cat(latents).transpose(0, 1).flatten(1)
    vae.register_to_config(latents_mean=stacked.mean(1).tolist(), latents_std=stacked.std(1).tolist())
    return WanVACEPipeline(
        vae=vae,
        transformer=reference.random_transformer(seed),
        scheduler=reference.scheduler(),
        text_encoder=None,
        tokenizer=None,
    )


def _normalise(pipe, latents: torch.Tensor) -> torch.Tensor:
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    return (latents.float() - mean) / std


@torch.no_grad()
def conditioning_batch(pipe, clips: list) -> tuple[torch.Tensor, torch.Tensor]:
    """WanVACEPipeline's conditioning for same-shape clips, with batched VAE encodes.

    Equal to `pipe.prepare_video_latents` + `pipe.prepare_masks` per clip (tested); those refuse batches > 1.
    Returns (control states [B, 96, T', h, w], preprocessed videos [B, 3, F, H, W]).
    """
    frames, height, width = clips[0].frames.shape[:3]
    videos, masks, mask_latents = [], [], []
    for clip in clips:
        video, mask = pipeline_inputs(clip)
        video_t, mask_t, refs = pipe.preprocess_conditions(
            video, mask, None, 1, height, width, frames, torch.float32, torch.device("cpu")
        )
        videos.append(video_t)
        masks.append(mask_t)
        mask_latents.append(pipe.prepare_masks(mask_t, refs, None))
    video_b, mask_b = torch.cat(videos), torch.where(torch.cat(masks) > 0.5, 1.0, 0.0)
    inactive = pipe.vae.encode(video_b * (1 - mask_b)).latent_dist.mode()
    reactive = pipe.vae.encode(video_b * mask_b).latent_dist.mode()
    conditioning = torch.cat([_normalise(pipe, inactive), _normalise(pipe, reactive)], dim=1)
    return torch.cat([conditioning, torch.cat(mask_latents)], dim=1), video_b


@torch.no_grad()
def prepare_examples(pipe, clips: list) -> list[Example]:
    """Training examples for same-shape clips: pipeline conditioning plus target latents of the originals."""
    control, _ = conditioning_batch(pipe, clips)
    originals = torch.cat([vae_input(c.frames) for c in clips])
    target = _normalise(pipe, pipe.vae.encode(originals).latent_dist.mode())
    examples = []
    for i, clip in enumerate(clips):
        latent_mask = pixel_mask_to_latent_mask(torch.from_numpy(clip.mask), reference.VAE_STRIDES)
        examples.append(Example(target=target[i : i + 1], control=control[i : i + 1], latent_mask=latent_mask))
    return examples


def build_pool(
    pipe,
    size: int,
    seed: int,
    progress: bool = True,
    chunk: int = 8,
    frames: tuple[int, ...] = FRAME_CHOICES,
    sides: tuple[int, ...] = SIZE_CHOICES,
) -> dict[tuple[int, int, int], list[Example]]:
    """`size` preprocessed clips of random kind, length and size, grouped by shape for batching."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(size):
        shape = (int(rng.choice(frames)), int(rng.choice(sides)), int(rng.choice(sides)))
        specs.append((shape, MASK_KINDS[int(rng.integers(len(MASK_KINDS)))], seed * 1_000_003 + i))
    specs.sort(key=lambda spec: spec[0])
    pool: dict[tuple[int, int, int], list[Example]] = {}
    bar = tqdm(total=size, desc="preprocessing clips", disable=not progress, file=sys.stdout)
    start = 0
    while start < size:
        shape = specs[start][0]
        stop = start
        while stop < size and stop - start < chunk and specs[stop][0] == shape:
            stop += 1
        clips = [synthetic_clip(kind, clip_seed, *shape) for shape, kind, clip_seed in specs[start:stop]]
        pool.setdefault(shape, []).extend(prepare_examples(pipe, clips))
        bar.update(stop - start)
        start = stop
    bar.close()
    return pool


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak at the last step."""
    progress = step / max(1, steps - 1)
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.enable_grad()  # the optimiser needs autograd whatever mode the caller runs in
def train(
    out: Path,
    steps: int = 3000,
    batch: int = 8,
    pool_size: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    frames: tuple[int, ...] = FRAME_CHOICES,
    sides: tuple[int, ...] = SIZE_CHOICES,
    calibration_clips: int = 32,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    resume: bool = False,
    init: Path | None = None,
    low_sigma_share: float = 0.0,
) -> dict | None:
    """Train and save the reference pipeline folder to `out`; returns the training record.

    Every `checkpoint_every` steps the optimiser state goes to `<out>.checkpoint.pt`; `stop_after` ends the run there
    (returns None) and `resume=True` continues from it with the same result as an uninterrupted run. `init` starts
    from the transformer of a reference pipeline folder (a continued training; its record is kept in the new one);
    `low_sigma_share` of each batch gets log-uniform noise levels in LOW_SIGMA_RANGE.
    """
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    checkpoint = checkpoint_path(out)
    recipe = {"clips": pool_size, "frames": list(frames), "sizes": list(sides), "latent_stats_clips": calibration_clips}
    if low_sigma_share:
        recipe["low_sigma_share"] = low_sigma_share
    base = None
    if init is not None:
        base = reference.verify(Path(init))
        recipe["init"] = {"steps": base["steps"], "transformer": base["checksums"][INIT_WEIGHTS]}
    settings = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, **recipe}
    saved = load_checkpoint(checkpoint, settings) if resume else None
    pipe = untrained_pipeline(seed, calibration_clips)
    if init is not None:
        from safetensors.torch import load_file

        weights = load_file(str(Path(init) / INIT_WEIGHTS))
        pipe.transformer.load_state_dict({k: v.float() for k, v in weights.items()})
    pool = build_pool(pipe, pool_size, seed + 1, progress, frames=frames, sides=sides)
    shapes = sorted(pool)
    weights = np.array([len(pool[s]) for s in shapes], dtype=np.float64)
    prompt, negative = reference.random_prompt_embeds()
    model = pipe.transformer.to(device).train()
    # RoPE tables are float64 non-persistent buffers; float32 trains ~2x faster on CPU and is not saved.
    model.rope.freqs_cos, model.rope.freqs_sin = model.rope.freqs_cos.float(), model.rope.freqs_sin.float()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 3)
    log, window, first = [], {"loss": 0.0, "in": 0.0, "out": 0.0, "n": 0}, 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        gen.set_state(saved["generator"])
        rng.bit_generator.state = saved["numpy"]
        log, window, first = saved["log"], saved["window"], saved["step"]
        started -= saved["seconds"]
    bar = tqdm(range(first, steps), desc="training", disable=not progress, file=sys.stdout)
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        shape = shapes[int(rng.choice(len(shapes), p=weights / weights.sum()))]
        picks = rng.choice(len(pool[shape]), size=batch, replace=len(pool[shape]) < batch)
        examples = [pool[shape][int(i)] for i in picks]
        x0 = torch.cat([e.target for e in examples]).to(device)
        control = torch.cat([e.control for e in examples]).to(device)
        mask = torch.cat([e.latent_mask for e in examples]).to(device).expand_as(x0)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        uniform = torch.rand(batch, generator=gen)
        shifted = reference.SCHEDULER_SHIFT * uniform / (1 + (reference.SCHEDULER_SHIFT - 1) * uniform)
        sigma = torch.where(torch.rand(batch, generator=gen) < 0.5, uniform, shifted).clamp(1e-3, 1.0).to(device)
        use_negative = torch.rand(batch, generator=gen) < NEGATIVE_PROMPT_RATE
        text = torch.where(use_negative.view(-1, 1, 1), negative, prompt).to(device)
        if low_sigma_share:
            low, high = LOW_SIGMA_RANGE
            drawn = low * (high / low) ** torch.rand(batch, generator=gen)
            sigma = torch.where(torch.rand(batch, generator=gen) < low_sigma_share, drawn.to(device), sigma)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        prediction = model(noisy, sigma * 1000, text, control_hidden_states=control, return_dict=False)[0]
        error = (prediction - (noise - x0)) ** 2
        weight = 1 + (MASK_LOSS_WEIGHT - 1) * mask
        loss = (error * weight).sum() / weight.sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        window["loss"] += loss.item()
        error = error.detach()
        window["in"] += float((error * mask).sum() / mask.sum().clamp(min=1))
        window["out"] += float((error * (1 - mask)).sum() / (1 - mask).sum().clamp(min=1))
        window["n"] += 1
        if (step + 1) % 25 == 0 or step + 1 == steps:
            n = window["n"]
            record = {
                "step": step + 1,
                "minutes": round((time.time() - started) / 60, 2),
                "lr": learning_rate(step, steps, lr),
                "loss": window["loss"] / n,
                "loss_in_mask": window["in"] / n,
                "loss_outside": window["out"] / n,
            }
            log.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", inside=f"{record['loss_in_mask']:.3f}")
            window = {"loss": 0.0, "in": 0.0, "out": 0.0, "n": 0}
        done = step + 1
        if done < steps and (done % checkpoint_every == 0 or done == stop_after):
            state = {
                "settings": settings,
                "step": done,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": gen.get_state(),
                "numpy": rng.bit_generator.state,
                "log": log,
                "window": window,
                "seconds": time.time() - started,
            }
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
        if done == stop_after and done < steps:
            bar.close()
            return None
    model.eval()
    record = save(pipe, out, prompt, negative, log, steps, batch, recipe, lr, seed, started, base)
    checkpoint.unlink(missing_ok=True)
    return record


def checkpoint_path(out: Path) -> Path:
    """Where a run writing `out` keeps its checkpoint (beside the output folder)."""
    return Path(out).with_name(Path(out).name + ".checkpoint.pt")


def load_checkpoint(path: Path, settings: dict) -> dict:
    """The checkpoint at `path`, refused when it belongs to a run with other settings."""
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at '{path}'.", "start the run without --resume.")
    saved = torch.load(path, weights_only=False)
    differ = [
        f"{k} {saved['settings'].get(k)!r} vs {v!r}" for k, v in settings.items() if saved["settings"].get(k) != v
    ]
    if differ:
        raise InputError(
            f"--resume: checkpoint '{path}' was made with other settings ({'; '.join(differ)}).",
            "resume with the settings of the interrupted run, or start again without --resume.",
        )
    return saved


def save(pipe, out: Path, prompt, negative, log, steps, batch, recipe, lr, seed, started, base=None) -> dict:
    """Write the pipeline folder (fp16 transformer, fp32 kept modules), prompt embeddings and the record."""
    import diffusers
    from safetensors.torch import save_file

    pipe.transformer.to("cpu")
    reference.cast_like_from_pretrained(pipe.transformer, torch.float16)
    with atomic_dir(out, "reference-model", overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        save_file(
            {"prompt_embeds": prompt.contiguous(), "negative_prompt_embeds": negative.contiguous()},
            str(tmp / "prompt_embeds.safetensors"),
        )
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        record = {
            "what": "tiny WanVACETransformer3DModel trained for caching behaviour on synthetic clips; "
            "not an inpainting model",
            "seed": seed,
            "steps": steps,
            "batch": batch,
            "learning_rate": lr,
            "threads": torch.get_num_threads(),
            "minutes": round((time.time() - started) / 60, 1),
            "data": {
                **recipe,
                "mask_kinds": list(MASK_KINDS),
                "vae": VAE_RECIPE,
                "preprocessing": "WanVACEPipeline.preprocess_conditions / prepare_video_latents / prepare_masks on the "
                "clip with its mask painted grey; target = normalised VAE latents of the original clip",
                "negative_prompt_rate": NEGATIVE_PROMPT_RATE,
                "mask_loss_weight": MASK_LOSS_WEIGHT,
                "objective": "flow matching: x_s = (1-s)x0 + s*eps, target eps - x0, timestep 1000 s; "
                "s half uniform, half shift-3"
                + (
                    f", then a share {recipe['low_sigma_share']} replaced by log-uniform s in {list(LOW_SIGMA_RANGE)}"
                    if recipe.get("low_sigma_share")
                    else ""
                ),
            },
            "final_loss": log[-1] if log else None,
            "loss_curve": list({row["step"]: row for row in log[:: max(1, len(log) // 12)] + log[-1:]}.values()),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "checksums": {rel: reference.file_checksum(tmp / rel) for rel in files},
        }
        if base is not None:
            record["continued_from"] = {k: v for k, v in base.items() if k != "checksums"}
        write_json(tmp / reference.CARD_FILE, record)
        write_text(tmp / "MODEL_CARD.md", model_card_text(record))
    return record


def model_card_text(record: dict) -> str:
    """A readable model card rendered from the training record (reference.json)."""
    final = record.get("final_loss") or {}
    data = record.get("data", {})
    curve = "\n".join(
        f"| {r['step']} | {r['minutes']} | {r['loss']:.4f} | {r['loss_in_mask']:.4f} | {r['loss_outside']:.4f} |"
        for r in {row["step"]: row for row in record.get("loss_curve", [])}.values()
    )
    checksums = "\n".join(f"- `{name}`: `{digest}`" for name, digest in sorted(record.get("checksums", {}).items()))
    return f"""# hetcache reference model

A tiny `WanVACETransformer3DModel` (the real diffusers class: 6 blocks, 2 VACE blocks, width 128) trained in-repo with
`python -m hetcache.reference.train`, for measuring caching behaviour on CPU. It is **not** an inpainting model: it is
synthetic, tiny and under-trained; use it to compare caching policies, never to judge editing quality.

- VAE: {data.get("vae", "the seeded random-init AutoencoderKLWan of the reference pipeline")}
- seed {record.get("seed")}, {record.get("steps")} optimiser steps, batch {record.get("batch")}, learning rate
  {record.get("learning_rate")}, {record.get("threads")} CPU thread(s), {record.get("minutes")} minutes
- data: {data.get("clips")} synthetic clips ({", ".join(map(str, data.get("frames", [])))} frames;
  sides {", ".join(map(str, data.get("sizes", [])))} px; masks {", ".join(data.get("mask_kinds", []))});
  {data.get("preprocessing")}
- objective: {data.get("objective")}; in-mask loss weight {data.get("mask_loss_weight")}; negative-prompt rate
  {data.get("negative_prompt_rate")}
- final loss {final.get("loss", float("nan")):.4f} (in the mask {final.get("loss_in_mask", float("nan")):.4f}, outside
  {final.get("loss_outside", float("nan")):.4f}); torch {record.get("torch")}, diffusers {record.get("diffusers")}

| step | minutes | loss | in the mask | outside |
|---|---|---|---|---|
{curve}

How far this model is from an inpainting model (the context's predicted velocity should barely change along the
sampling path), measured with `hetcache.stationarity`, and the low-noise fine-tune tried on it:
`docs/reference-model.md` in the hetcache repository.

Checksums (sha256), checked by `hetcache.reference.verify()` on every load:
{checksums}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hetcache reference-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (a diffusers pipeline folder)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps (fixed, not a time budget)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2000, help="number of preprocessed training clips")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (results depend on it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", default=",".join(map(str, FRAME_CHOICES)), help="clip lengths to train on")
    parser.add_argument("--sizes", default=",".join(map(str, SIZE_CHOICES)), help="clip heights/widths to train on")
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints (<out>.checkpoint.pt)"
    )
    parser.add_argument("--stop-after", type=int, help="stop after this many steps, leaving a checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint (same result)")
    parser.add_argument("--init", type=Path, help="start from the transformer of this reference pipeline folder")
    parser.add_argument(
        "--low-sigma-share", type=float, default=0.0, help="share of each batch with log-uniform low noise levels"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    record = train(
        args.out,
        args.steps,
        args.batch,
        args.pool,
        args.lr,
        args.seed,
        args.threads,
        args.device,
        not args.no_progress,
        tuple(int(v) for v in args.frames.split(",")),
        tuple(int(v) for v in args.sizes.split(",")),
        checkpoint_every=args.checkpoint_every,
        stop_after=args.stop_after,
        resume=args.resume,
        init=args.init,
        low_sigma_share=args.low_sigma_share,
    )
    if record is None:
        print(f"stopped after {args.stop_after} steps; continue with the same flags and --resume")
        return 0
    print(json.dumps({k: record[k] for k in ("steps", "minutes", "final_loss")}, indent=2))
    return 0


if __name__ == "__main__":
    from ..cli_common import run_cli

    raise SystemExit(run_cli(main, None, "hetcache reference-train"))
