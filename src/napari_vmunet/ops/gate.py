"""Whether a tensor may run this package's own kernels: the one rule the scan, the norm, the
convolution and the linear layers all follow.

Our Triton kernels need triton 3.0 or newer (CUDA builds of torch bring it), a CUDA tensor and
a GPU of compute capability 7.0 or newer. ``NAPARI_VMUNET_SCAN=reference`` turns them all off,
and the products' float32 epilogues (:mod:`.linear`) with them: the whole model is then plain
PyTorch, for debugging and as the ground truth.
"""

from __future__ import annotations

import functools
import os

import torch

SCAN_ENV_VAR = "NAPARI_VMUNET_SCAN"


def plain_pytorch() -> bool:
    """The whole model in plain PyTorch (``NAPARI_VMUNET_SCAN=reference``)."""
    return os.environ.get(SCAN_ENV_VAR, "").strip() == "reference"


@functools.cache
def _triton_version() -> tuple[int, ...] | None:
    try:
        import triton
    except Exception:  # not installed, or broken
        return None
    return tuple(int(part) for part in triton.__version__.split(".")[:2] if part.isdigit())


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None where our Triton kernels can run on ``device`` (the current CUDA device if None),
    else a sentence saying why not."""
    return _reason(None if device is None else torch.device(device))


@functools.cache  # per device: the norm asks at every call
def _reason(device: torch.device | None) -> str | None:
    version = _triton_version()
    if version is None or version < (3, 0):
        return ("triton 3.0 or newer is not importable (pip install triton; it comes with CUDA "
                "builds of torch)")
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if device is not None and device.type != "cuda":
        return f"runs on CUDA GPUs only, not {device.type}"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 7:
        return f"needs an NVIDIA GPU of compute capability 7.0 or newer, found {major}.x"
    return None


def runs_triton(t: torch.Tensor) -> bool:
    """Whether our Triton kernels may compute on ``t``."""
    return t.is_cuda and not plain_pytorch() and triton_unavailable_reason(t.device) is None
