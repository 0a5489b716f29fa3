"""SS2D's two linear layers whose result is wanted in float32, made so by the matrix product.

Under autocast a linear layer returns the autocast dtype, and two of SS2D's results are then
widened in a pass of their own over the block's activations: the pixel projections (x_proj),
which the scan reads in float32, and the block's output (out_proj), which is added to the
float32 residual stream. cuBLAS can write its float32 accumulator directly and add the residual
in the same kernel (PyTorch's ``mm``/``addmm`` with ``out_dtype``), which drops both passes
and rounds one time fewer (benchmarks/RESULTS.md, 2026-11-27 fourteenth session).

This is for GPU inference under autocast. Training, the CPU, a PyTorch without these
operators and ``NAPARI_VMUNET_SCAN=reference`` (:mod:`.gate`) run the layers as before; the
parameters are the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gate import plain_pytorch

_mm_to = getattr(torch.ops.aten.mm, "dtype", None)  # PyTorch >= 2.8
_addmm_into = getattr(torch.ops.aten.addmm, "dtype_out", None)


def _low_precision(x: torch.Tensor, *params: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype where the float32-writing products apply to ``x``, else None."""
    if (_mm_to is None or not x.is_cuda or not torch.is_autocast_enabled("cuda")
            or plain_pytorch()):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return None  # these operators have no backward
    dtype = torch.get_autocast_dtype("cuda")
    return dtype if x.dtype == dtype else None


def linear_float32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias), in float32 where it is computed in low precision.

    Elsewhere it is ``F.linear``'s result, in the dtype that gives."""
    dtype = _low_precision(x, weight)
    if dtype is None:
        return F.linear(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    out = _mm_to(rows, weight.to(dtype).t(), torch.float32)
    return out.view(*x.shape[:-1], weight.shape[0])


def linear_residual(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                    overwrite_residual: bool = False) -> torch.Tensor:
    """``residual + F.linear(x, weight)`` (no bias), in the dtype that sum would have.

    With ``overwrite_residual`` (the caller holds the only reference to ``residual``), where
    the product runs in low precision, the sum is the product's epilogue written over the
    residual: into a float32 one from the float32 accumulator, into one in the autocast dtype
    rounded once. (cuBLAS adds in place only: an out-of-place sum costs PyTorch a copy of the
    residual first, slower than the separate addition.)"""
    dtype = _low_precision(x, weight, residual)
    if (not overwrite_residual or dtype is None or residual.dtype not in (dtype, torch.float32)
            or not residual.is_contiguous()):
        return residual + F.linear(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    base = residual.view(-1, weight.shape[0])
    w = weight.to(dtype).t()
    with torch.autocast("cuda", enabled=False):  # (the dtypes are set here)
        if residual.dtype == torch.float32:
            _addmm_into(base, rows, w, torch.float32, out=base)
        else:
            base.addmm_(rows, w)
    return residual
