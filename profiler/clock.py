"""Timing without host syncs in the hot path: CUDA events on a GPU, a monotonic clock on CPU."""

from __future__ import annotations

import time

import torch


class Clock:
    """Marks points in time; differences are read at the end (one sync on a GPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> float | torch.cuda.Event:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        """Seconds between two marks (synchronises the GPU once, when the marks are events)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class LayerTimer:
    """Per-layer forward time: a mark before and after each block call, summed per layer at the end."""

    def __init__(self, clock: Clock, layers: int):
        self.clock = clock
        self.open: dict[int, object] = {}
        self.spans: list[list[tuple[object, object]]] = [[] for _ in range(layers)]

    def start(self, pos: int) -> None:
        self.open[pos] = self.clock.mark()

    def stop(self, pos: int) -> None:
        started = self.open.pop(pos, None)
        if started is not None:
            self.spans[pos].append((started, self.clock.mark()))

    def mean_ms(self) -> list[float]:
        """Mean milliseconds per call of each layer (NaN for a layer that never ran)."""
        out = []
        for spans in self.spans:
            total = sum(self.clock.seconds(a, b) for a, b in spans)
            out.append(1000.0 * total / len(spans) if spans else float("nan"))
        return out
