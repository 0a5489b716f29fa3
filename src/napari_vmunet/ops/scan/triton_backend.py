"""The ``triton`` scan backend: our kernels for NVIDIA GPUs, nothing compiled at install time.

The 1D selective scan (:mod:`.triton_scan`) and SS2D's fused four-direction scan (:mod:`.ss2d`,
Triton and Gluon kernels), both forward and backward.
"""

from __future__ import annotations

from ..gate import triton_unavailable_reason
from . import jit_helpers, ss2d_triton, triton_scan
from .ss2d import selective_scan_2d
from .triton_scan import selective_scan

__all__ = ["selective_scan", "selective_scan_2d", "unavailable_reason"]


def unavailable_reason() -> str | None:
    reason = triton_unavailable_reason()
    if reason is None and None in (jit_helpers.triton, triton_scan.triton, ss2d_triton.triton):
        return "triton imports, but not the parts of it the kernels use (triton.language)"
    return reason
