"""Load, ahead of time, what the first segmentation or training step would load on its own.

The compiled CPU scan kernels come from numba's cache on their first call, and torch's
optimizers import torch._dynamo on first use (over a second on a small CPU). Both hold Python's
lock while loading, so a napari window would freeze for a few hundred milliseconds at the first
Segment or Start. The widgets call :func:`warm_up` in a worker while a model loads or the user
is still painting instead (benchmarks/gui.py measures the difference).
"""

from __future__ import annotations

import importlib
import threading

import torch

_done: set[bool] = set()
_lock = threading.Lock()


def warm_up(training: bool = False) -> None:
    """Load the CPU scan kernels (forward; with ``training`` also backward and the optimizer
    machinery). Cheap after the first call in a process."""
    from ..ops.scan import selective_scan, unavailable_reason

    with _lock:
        if training in _done:
            return
        if training:
            importlib.import_module("torch._dynamo")  # what torch.optim imports on first use
        if unavailable_reason("cpu", "cpu") is None:
            u = torch.zeros(1, 4, 8, requires_grad=training)
            b = torch.zeros(1, 1, 2, 8)
            with torch.set_grad_enabled(training):
                out = selective_scan(u, u, torch.zeros(4, 2), b, b, torch.zeros(4),
                                     torch.zeros(4), True, backend="cpu")
                if training:
                    out.sum().backward()
        _done.add(training)
