"""Where the per-layer caches live: on the compute device, or offloaded to host memory and staged per layer.

Offloaded caches are copied into one persistent device buffer per kind (keys, values, skip rows) when a layer needs
them, so that offloading costs transfers but no per-layer allocation; fresh rows are written back after the layer.
"""

from __future__ import annotations

import torch


class CacheStorage:
    """Allocation, dtype and placement of cache buffers."""

    def __init__(self, dtype: torch.dtype, offload: bool) -> None:
        self.dtype = dtype
        self.offload = offload
        self._staging: dict[str, torch.Tensor] = {}

    def _device(self, like: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.offload else like.device

    def _empty(self, shape: torch.Size | tuple, like: torch.Tensor) -> torch.Tensor:
        pin = self.offload and like.device.type == "cuda"
        return torch.empty(shape, dtype=self.dtype, device=self._device(like), pin_memory=pin)

    def keep(self, buffer: torch.Tensor | None, value: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Copy `value` (or its `rows` along dim 1) into a persistent buffer, allocating only on a shape change."""
        shape = value.shape if rows is None else (value.shape[0], rows.numel(), *value.shape[2:])
        if (
            buffer is None
            or buffer.shape != shape
            or buffer.dtype != self.dtype
            or buffer.device != self._device(value)
        ):
            buffer = self._empty(shape, value)
        source = value if rows is None else value.index_select(1, rows)
        return buffer.copy_(source, non_blocking=self.offload)

    def on_device(self, buffer: torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
        """The buffer itself, or (offloaded) a staged device copy of it in the shared buffer of its kind."""
        if not self.offload:
            return buffer
        staged = self._staging.get(kind)
        if staged is None or staged.shape != buffer.shape or staged.dtype != buffer.dtype or staged.device != device:
            staged = torch.empty(buffer.shape, dtype=buffer.dtype, device=device)
            self._staging[kind] = staged
        return staged.copy_(buffer, non_blocking=True)

    def write_back(self, buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Store fresh `values` at `rows` (dim 1) of the buffer; on-device buffers were already written in place."""
        if self.offload:
            buffer.index_copy_(1, rows, values.to(buffer.device, buffer.dtype))

    def index(self, rows: torch.Tensor) -> torch.Tensor:
        """`rows` on the storage device."""
        return rows.cpu() if self.offload else rows

    def nbytes_staging(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._staging.values())
