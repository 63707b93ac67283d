"""Workloads: the embedded reference workload and real Wan-VACE pipelines with clips from files."""

from .clips import CLIP_KINDS, MASK_KINDS, SMALL_MASK_KINDS, Clip, calibration_clips, synthetic_clip
from .spec import ClipSource, Workload, load_workload, reference_workload, workload_from_dict

__all__ = [
    "CLIP_KINDS",
    "MASK_KINDS",
    "SMALL_MASK_KINDS",
    "Clip",
    "ClipSource",
    "Workload",
    "calibration_clips",
    "load_workload",
    "reference_workload",
    "synthetic_clip",
    "workload_from_dict",
]
