"""Argparse `type=` functions for every numeric flag: a value outside its range is refused at parse time.

argparse prints the flag with the message, e.g. `argument --mask-threshold: must be a number in (0, 1), got 1.5`,
and exits with code 2 before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

TEMPORAL = 4  # Wan's VAE compresses time 4x: clips have 4k+1 frames
MIN_FRAMES = TEMPORAL + 1
SPATIAL = 16  # sizes are multiples of 16 pixels (VAE 8x, patch 2x)


def _parse(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"> {low:g}" if low_open else f"≥ {low:g}"
    if low is None:
        return f"< {high:g}" if high_open else f"≤ {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _ranged(
    kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> Callable[[str], int | float]:
    noun = "an integer" if kind is int else "a number"
    text = _interval(low, high, low_open, high_open)

    def parse(raw: str) -> int | float:
        value = _parse(raw, kind)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {noun} {text}, got {raw}")
        return value

    parse.__name__ = f"{kind.__name__} {text}"  # argparse names the type in its own messages
    return parse


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either end may be open-ended with None)."""
    return _ranged(int, low, high, False, False)  # type: ignore[return-value]


def number(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A finite float in the interval; `low_open` / `high_open` exclude that end."""
    return _ranged(float, low, high, low_open, high_open)  # type: ignore[return-value]


def frames(raw: str) -> int:
    """A frame count Wan can take: 4k+1 and at least 5 (the nearest valid counts are suggested)."""
    value = _parse(raw, int)
    if value < MIN_FRAMES:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_FRAMES} frames (4k+1), got {raw}")
    if (value - 1) % TEMPORAL:
        below = (value - 1) // TEMPORAL * TEMPORAL + 1
        raise argparse.ArgumentTypeError(
            f"must be 4k+1 (Wan's VAE groups frames by {TEMPORAL}), got {raw}: use {below} or {below + TEMPORAL}"
        )
    return value


def size(raw: str) -> int:
    """A height or width: a multiple of 16 pixels, at least 16."""
    value = _parse(raw, int)
    if value < SPATIAL or value % SPATIAL:
        below = max(SPATIAL, value // SPATIAL * SPATIAL)
        hint = f"use {below}" if value < SPATIAL else f"use {below} or {below + SPATIAL}"
        raise argparse.ArgumentTypeError(f"must be a multiple of {SPATIAL} pixels ≥ {SPATIAL}, got {raw}: {hint}")
    return value


def clip_size(raw: str) -> tuple[int, int, int]:
    """A clip size HEIGHTxWIDTHxFRAMES, e.g. 720x1280x81: sizes as `size`, frames as `frames`."""
    parts = raw.lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTHxFRAMES, e.g. 720x1280x81, got {raw!r}")
    height, width, count = parts
    try:
        return size(height), size(width), frames(count)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None


def fraction_open(raw: str) -> float:
    """A level strictly between 0 and 1 (a mask threshold)."""
    return number(0.0, 1.0, low_open=True, high_open=True)(raw)


def name(raw: str) -> str:
    """A name (of a study, a policy): not empty and not only blanks (an empty name is not "the default")."""
    if not raw.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty name, got {raw!r}: give a name, or drop the flag")
    return raw


class Once(argparse.Action):
    """A flag that may be given once: a second value is refused, not silently taking the first one's place."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        if given is not None and given != self.default:
            parser.error(
                f"argument {option_string}: given twice ({given!r} and {values!r}): give it once, with every "
                "value in it (a list is comma-separated, e.g. psnr=30,ssim=0.95)"
            )
        setattr(namespace, self.dest, values)


def port(raw: str) -> int:
    """A TCP port."""
    return integer(1, 65535)(raw)
