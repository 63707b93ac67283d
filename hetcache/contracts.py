"""Editing contracts: what a masked edit's output is made of once the editing tool has finished with it.

Masked video editing is rarely consumed as the model's raw output. The contract says what is done to it:

- `none`: the raw output (what `WanVACEPipeline` returns; outside the mask it drifts from the source);
- `paste`: the source pasted back outside the mask, hard (`source·(1−m) + output·m`; the HetCache reference code
  does this before it saves a video and before it scores it);
- `feather:N`: paste-back with an edge feathered over N pixels *outside* the mask, so the edit region is never
  touched (video inpainting tools feather outward);
- `blend`: latent blending on every step: outside the latent edit mask the latents are replaced by the source latents
  noised to the scheduler's next sigma with the run's own initial noise (RePaint-style, as diffusers' inpaint
  pipelines and ComfyUI's inpainting sampler do); `blend:soft` adds a ramp beyond the edit region released step by
  step (differential diffusion);
- `blend+paste`, `blend+feather:N`: both.

This module owns the names, the parsing and validation (`parse_contract`, the one reader of a contract string, used
by flags, workload files and policy files), the canonical spelling, and which metrics are the headline under each
contract. The mechanisms live in `hetcache.paste` (pixels) and `hetcache.blend` (latents).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .errors import InputError

NONE, PASTE, FEATHER, BLEND = "none", "paste", "feather", "blend"
SOFT = "soft"
NAMES = (NONE, PASTE, FEATHER, BLEND, f"{BLEND}+{PASTE}")  # the contracts the docs list; others combine the parts
DEFAULT_FEATHER = 8  # pixels grown outward when `feather` names no width
MAX_FEATHER = 256
SYNTAX = "none, paste, feather[:PIXELS], blend[:soft], blend+paste or blend+feather[:PIXELS]"
EXAMPLE = "e.g. --contract paste, --contract feather:16 or --contract blend+paste"
# Whole-frame PSNR after paste-back is a function of the mask's area (the pasted context matches exactly): under a
# contract that keeps the source outside the edit, the headline and the default budget are in the mask and across
# its edge. Whole-frame metrics are still recorded.
WHOLE_FRAME_HEADLINE = ("psnr", "psnr_mask")
EDIT_HEADLINE = ("psnr_mask", "psnr_seam")
AREA_NOTE = "whole-frame PSNR after paste-back is a function of the mask's area"


@dataclass(frozen=True)
class Contract:
    """One editing contract: latent blending (optionally with a differential ramp) and/or paste-back in pixels."""

    blend: bool = False
    soft: bool = False  # blend with a ramp beyond the edit region, released step by step
    paste: bool = False
    feather: int = 0  # pixels of feathered edge outside the mask (0: hard paste)

    def __str__(self) -> str:
        parts = []
        if self.blend:
            parts.append(f"{BLEND}:{SOFT}" if self.soft else BLEND)
        if self.paste:
            parts.append(f"{FEATHER}:{self.feather}" if self.feather else PASTE)
        return "+".join(parts) or NONE

    @property
    def name(self) -> str:
        """The canonical spelling (what files record; parse_contract reads it back to an equal contract)."""
        return str(self)

    @property
    def slug(self) -> str:
        """A file-name-safe spelling, e.g. 'blend-paste' or 'feather8'."""
        return self.name.replace(":", "").replace("+", "-")

    @property
    def is_none(self) -> bool:
        return not (self.blend or self.paste)

    @property
    def keeps_source(self) -> bool:
        """Whether the output outside the edit is (close to) the source, so whole-frame metrics measure area."""
        return not self.is_none

    @property
    def headline_metrics(self) -> tuple[str, str]:
        """The two metrics every table and summary leads with under this contract."""
        return EDIT_HEADLINE if self.keeps_source else WHOLE_FRAME_HEADLINE

    @property
    def budget_metric(self) -> str:
        """The metric a budget bound without a metric name (`--budget 30`) reads."""
        return self.headline_metrics[0]


RAW = Contract()


def _fail(text: str, origin: str, why: str) -> InputError:
    return InputError(f"{origin} {text!r} {why}.", f"write {SYNTAX}; {EXAMPLE}.")


def _feather_width(value: str, text: str, origin: str) -> int:
    if not value.isdigit():
        raise _fail(text, origin, f"gives feather width {value!r}, which is not a whole number of pixels")
    width = int(value)
    if not 1 <= width <= MAX_FEATHER:
        raise _fail(text, origin, f"gives feather width {width}, outside 1–{MAX_FEATHER} pixels")
    return width


def parse_contract(text: str | Contract | None, origin: str = "--contract") -> Contract:
    """The contract a string names (None: `none`); every mistake is one InputError naming `origin` and the fix."""
    if isinstance(text, Contract):
        return text
    if text is None:
        return RAW
    if not isinstance(text, str):
        raise _fail(str(text), origin, "is not a string")
    cleaned = text.strip().lower()
    if cleaned in ("", NONE):
        return RAW
    blend = soft = paste = False
    feather = 0
    for part in cleaned.split("+"):
        name, colon, value = part.strip().partition(":")
        if name == BLEND and not blend:
            if colon and value != SOFT:
                raise _fail(text, origin, f"gives blend the option {value!r}; the only one is 'soft'")
            blend, soft = True, bool(colon)
        elif name in (PASTE, FEATHER) and not paste:
            if name == PASTE and colon:
                raise _fail(text, origin, "gives paste a value; paste is hard (feather:PIXELS feathers the edge)")
            paste = True
            if name == FEATHER:
                feather = _feather_width(value, text, origin) if colon else DEFAULT_FEATHER
        elif name in (BLEND, PASTE, FEATHER):
            raise _fail(text, origin, f"names {'blending' if name == BLEND else 'paste-back'} twice")
        elif name == NONE:
            raise _fail(text, origin, "combines none with another contract")
        else:
            raise _fail(text, origin, f"names unknown contract {name!r}")
    return Contract(blend=blend, soft=soft, paste=paste, feather=feather)


def contract_type(raw: str) -> str:
    """Argparse `type=` for --contract: refused at parse time (exit 2), the canonical spelling kept."""
    try:
        return parse_contract(raw).name
    except InputError as exc:
        raise argparse.ArgumentTypeError(f"{exc.what.removeprefix('--contract ')} Fix: {exc.fix}") from None


def contract_note(contract: Contract | str) -> str | None:
    """The one sentence every table prints next to whole-frame numbers under a contract that pastes or blends."""
    contract = parse_contract(contract)
    if not contract.keeps_source:
        return None
    how = "" if contract.paste else " (blending keeps the source's latents outside the edit in the same way)"
    return f"Under contract `{contract}`, {AREA_NOTE}{how}: the headline is in the mask and across its edge."
