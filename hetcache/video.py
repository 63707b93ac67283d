"""Video and mask IO with PyAV (mp4, or a folder of PNG frames) and reconciliation with Wan's size rules.

Wan pipelines need 4k+1 frames and sizes that are multiples of 16. `reconcile` applies one explicit, reported
rule and refuses what it cannot fix without the user saying how (mismatched video/mask sizes or lengths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from . import atomic
from .errors import InputError
from .workloads.clips import Clip

FIT_MODES = ("strict", "crop", "resize")
NON_BINARY_TOLERANCE = 0.02  # share of mid-grey pixels a compressed binary mask may carry


FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")  # the frame files a folder clip is made of


def _frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise InputError(f"folder '{folder}' holds no PNG/JPEG frames.", "pass an mp4 file or a folder of frames.")
    return files


def _bad_frame(path: Path, exc: Exception) -> InputError:
    return InputError(
        f"frame '{path}' cannot be read as an image ({exc}).",
        "re-export or remove that frame (every image file of the folder is a frame), or pass an mp4.",
    )


def _open_frame(path: Path, verify: bool = False) -> Image.Image:
    """A frame file opened (its header read; with `verify`, every chunk's checksum checked, nothing decoded); an
    unreadable or corrupt file is an InputError naming it."""
    try:
        image = Image.open(path)
        if verify:
            image.verify()  # reads the file through (PNG: chunk CRCs) without decoding; the image is unusable after
            image = Image.open(path)
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_frame(path, exc) from None


def _frames_from_folder(folder: Path) -> np.ndarray:
    frames = []
    for path in _frame_files(folder):
        image = _open_frame(path)
        try:
            frames.append(np.asarray(image.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as exc:
            raise _bad_frame(path, exc) from None
    if len({f.shape for f in frames}) != 1:
        raise InputError(f"frames in '{folder}' do not all have the same size.", "resize them to one size.")
    return np.stack(frames)


def _not_a_video(what: str, path: Path, exc: Exception) -> InputError:
    return InputError(f"{what} '{path}' cannot be read as a video ({exc}).", "pass an mp4 file or a PNG folder.")


def probe_video(path: str | os.PathLike, what: str = "video") -> tuple[int, int, int]:
    """(frames, height, width) of an mp4 or a folder of frames from headers alone, before any frame is decoded: a
    folder's every frame is opened and verified (a corrupt file is refused by name), an mp4's packets counted."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}' does not exist.", "check the path.")
    if path.is_dir():
        files = _frame_files(path)
        sizes = {_open_frame(p, verify=True).size for p in files}
        if len(sizes) != 1:
            raise InputError(f"frames in '{path}' do not all have the same size.", "resize them to one size.")
        width, height = sizes.pop()
        return len(files), height, width
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            height, width = stream.codec_context.height, stream.codec_context.width
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError) as exc:
        raise _not_a_video(what, path, exc) from exc
    if not count:
        raise InputError(f"{what} '{path}' has no frames.", "pass a non-empty video.")
    return count, height, width


def read_video(path: str | os.PathLike, what: str = "video") -> tuple[np.ndarray, float]:
    """Read an mp4 (any format PyAV decodes) or a folder of frames → (RGB uint8 [F, H, W, 3], fps)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}' does not exist.", "check the path.")
    if path.is_dir():
        return _frames_from_folder(path), 16.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 16)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError) as exc:
        raise _not_a_video(what, path, exc) from exc
    if not frames:
        raise InputError(f"{what} '{path}' has no frames.", "pass a non-empty video.")
    return np.stack(frames), fps


def read_mask(path: str | os.PathLike, threshold: float | None = None) -> np.ndarray:
    """Read a mask video/folder → bool [F, H, W] (white = region to generate).

    Without `threshold` the mask must be binary up to compression noise (binarised at 0.5); a grey-level mask is
    refused unless the caller states the threshold to binarise it at.
    """
    frames, _ = read_video(path, what="mask")
    grey = frames.astype(np.float32).mean(axis=-1) / 255.0
    if threshold is None:
        mid = float(((grey > 0.2) & (grey < 0.8)).mean())
        if mid > NON_BINARY_TOLERANCE:
            raise InputError(
                f"mask '{path}' is not binary: {mid:.1%} of its pixels are grey (between 0.2 and 0.8).",
                "pass a black/white mask, or state a threshold to binarise it at (--mask-threshold 0.5).",
            )
        threshold = 0.5
    return grey > threshold


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0, crf: int = 18) -> Path:
    """Write RGB uint8 frames [F, H, W, 3] as H.264 mp4 (yuv420p), atomically. Odd sizes are padded by one pixel."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic.atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_mask(path: str | os.PathLike, mask: np.ndarray, fps: float = 16.0) -> Path:
    """Write a bool mask [F, H, W] as a black/white mp4."""
    frames = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    return write_video(path, frames, fps=fps, crf=0)


# ---------------------------------------------------------------------------------------------------------
# reconciliation with the pipeline's constraints


@dataclass(frozen=True)
class Constraints:
    """What the pipeline needs: frames ≡ 1 (mod temporal), sizes multiple of `spatial`; optional target size."""

    temporal: int = 4
    spatial: int = 16
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None


def _centre_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    top = (array.shape[1] - height) // 2
    left = (array.shape[2] - width) // 2
    return array[:, top : top + height, left : left + width]


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR)) for f in frames])


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST))
            > 127
            for m in mask
        ]
    )


def target_size(height: int, width: int, constraints: Constraints) -> tuple[int, int]:
    """The (height, width) asked for; one side alone scales the other by the clip's aspect ratio (multiple of 16)."""
    if constraints.height and constraints.width:
        return constraints.height, constraints.width
    s = constraints.spatial
    if constraints.height:
        return constraints.height, max(s, round(width * constraints.height / height / s) * s)
    if constraints.width:
        return max(s, round(height * constraints.width / width / s) * s), constraints.width
    return height, width


def usable_frames(count: int, constraints: Constraints, name: str) -> int:
    """How many of a clip's `count` frames a run uses: `constraints.num_frames` if given, else the largest 4k+1
    count; a clip shorter than the pipeline's least (4+1) or than the frames asked for is refused."""
    least = 1 + constraints.temporal
    if count < least:
        raise InputError(
            f"clip '{name}' has {count} frames; the pipeline needs at least {least} (4k+1).",
            f"pass a clip of at least {least} frames (a longer video, or more frame files).",
        )
    if constraints.num_frames and constraints.num_frames > count:
        most = (count - 1) // constraints.temporal * constraints.temporal + 1
        raise InputError(
            f"clip '{name}' has {count} frames but {constraints.num_frames} were asked for.",
            f"ask for at most {most} frames (4k+1), or drop --frames to use all the clip's frames.",
        )
    return (min(count, constraints.num_frames or count) - 1) // constraints.temporal * constraints.temporal + 1


def reconcile(clip: Clip, constraints: Constraints, fit: str = "strict") -> Clip:
    """Make a clip fit the pipeline by one stated rule; every change is appended to `clip.notes`.

    1. Video and mask must agree in length and size; with `fit="crop"` or `"resize"` the longer one is trimmed
       to the shorter and the video is centre-cropped / resized to the mask's size (the mask defines the edit).
    2. A requested size (`constraints.height/width`) is reached by resizing (video bilinear, mask nearest); one
       side alone sets the other by the clip's aspect ratio.
    3. Frames are trimmed to the largest 4k+1 count (and to `constraints.num_frames` if given); sizes are
       centre-cropped to multiples of 16.
    """
    if fit not in FIT_MODES:
        raise InputError(f"fit mode {fit!r} is unknown.", f"use one of {', '.join(FIT_MODES)}.")
    frames, mask, notes = clip.frames, clip.mask, list(clip.notes)
    (vf, vh, vw), (mf, mh, mw) = frames.shape[:3], mask.shape
    if (vh, vw) != (mh, mw):
        if fit == "strict":
            raise InputError(
                f"clip '{clip.name}': mask is {mw}x{mh} but video is {vw}x{vh} (width x height).",
                "pass a mask of the video's size, or --fit crop (centre-crop the video to the mask) or --fit resize.",
            )
        if fit == "crop" and vh >= mh and vw >= mw:
            frames = _centre_crop(frames, mh, mw)
            notes.append(f"video centre-cropped from {vw}x{vh} to the mask's {mw}x{mh}")
        else:
            frames = _resize_frames(frames, mh, mw)
            notes.append(f"video resized from {vw}x{vh} to the mask's {mw}x{mh}")
    if vf != mf:
        if fit == "strict":
            raise InputError(
                f"clip '{clip.name}': mask has {mf} frames but video has {vf}.",
                "pass a mask with one frame per video frame, or --fit crop/resize to trim both to the shorter.",
            )
        shorter = min(vf, mf)
        notes.append(f"{'video' if vf > mf else 'mask'} trimmed from {max(vf, mf)} to {shorter} frames to match")
        frames, mask = frames[:shorter], mask[:shorter]
    height, width = frames.shape[1:3]
    target = target_size(height, width, constraints)
    if target != (height, width):
        frames = _resize_frames(frames, *target)
        mask = _resize_mask(mask, *target)
        kept = "" if constraints.height and constraints.width else " (the other side keeps the aspect ratio)"
        notes.append(f"resized from {width}x{height} to {target[1]}x{target[0]}{kept}")
        height, width = target
    usable = usable_frames(frames.shape[0], constraints, clip.name)
    if usable != frames.shape[0]:
        asked = f"{constraints.num_frames} asked for; " if constraints.num_frames else ""
        if usable == constraints.num_frames:
            notes.append(f"trimmed from {frames.shape[0]} to the requested {usable} frames")
        else:
            notes.append(f"trimmed from {frames.shape[0]} to {usable} frames ({asked}Wan needs 4k+1)")
        frames, mask = frames[:usable], mask[:usable]
    s = constraints.spatial
    new_h, new_w = height // s * s, width // s * s
    if new_h < s or new_w < s:
        raise InputError(
            f"clip '{clip.name}' is {width}x{height}; the pipeline needs at least {s}x{s}.", "pass a larger clip."
        )
    if (new_h, new_w) != (height, width):
        frames, mask = _centre_crop(frames, new_h, new_w), _centre_crop(mask[..., None], new_h, new_w)[..., 0]
        notes.append(f"centre-cropped from {width}x{height} to {new_w}x{new_h} (multiples of {s})")
    return Clip(
        name=clip.name, frames=np.ascontiguousarray(frames), mask=np.ascontiguousarray(mask), notes=notes, fps=clip.fps
    )


def load_clip(
    video: str | os.PathLike,
    mask: str | os.PathLike,
    constraints: Constraints,
    fit: str = "strict",
    mask_threshold: float | None = None,
    name: str | None = None,
) -> Clip:
    """Read a video and its mask from files and reconcile them with the pipeline's constraints."""
    frames, fps = read_video(video)
    mask_array = read_mask(mask, mask_threshold)
    clip = Clip(
        name=name or Path(video).stem, frames=frames, mask=mask_array, notes=[f"from {Path(video).name}"], fps=fps
    )
    return reconcile(clip, constraints, fit)
