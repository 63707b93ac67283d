"""Names of the tensor dtypes hetcache accepts in policies and on the command line, and their torch dtypes."""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_DTYPES = ("auto", *TORCH_DTYPES)  # "auto": the model's own dtype
# Dtypes only caches may be stored in (computed in the model dtype); never a model or workload dtype.
CACHE_ONLY_DTYPES: dict[str, torch.dtype] = {"float8_e4m3fn": torch.float8_e4m3fn}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name of `TORCH_DTYPES`."""
    return TORCH_DTYPES[name]
