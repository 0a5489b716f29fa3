"""LayerNorm (optionally times a SiLU gate) as one Triton kernel for GPU inference.

PyTorch's LayerNorm kernel gives each row of 96-1536 channels its own small thread block and
reached about a tenth of the H100's bandwidth on VM-UNet's activations (a fifth of the whole
forward pass once the scan was fused). Here one program normalises many rows, the SS2D output
gate ``* silu(z)`` is applied on the way, and a result that goes into a linear layer is written
in the autocast dtype, which is what that layer would cast it to anyway.

Training, the CPU and machines without Triton use ``nn.LayerNorm`` (and the gate) as they are;
the module's parameters are the same either way, so checkpoints do not notice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except Exception:  # no triton: the PyTorch path below
    triton = None


if triton is not None:

    @triton.jit
    def _layer_norm_rows(x_ptr, gate_ptr, w_ptr, b_ptr, out_ptr, rows, channels, gate_stride,
                         eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                         HAS_GATE: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        mask = (r < rows)[:, None] & (c < channels)[None, :]
        r64 = r.to(tl.int64)[:, None]
        x = tl.load(x_ptr + r64 * channels + c[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / channels
        centred = tl.where(mask, x - mean[:, None], 0.0)
        inv_std = tl.rsqrt(tl.sum(centred * centred, axis=1) / channels + eps)
        w = tl.load(w_ptr + c, mask=c < channels, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=c < channels, other=0.0).to(tl.float32)
        y = centred * inv_std[:, None] * w[None, :] + b[None, :]
        if HAS_GATE:
            z = tl.load(gate_ptr + r64 * gate_stride + c[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + r64 * channels + c[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=mask)


def _fused_applies(x: torch.Tensor, norm: nn.LayerNorm) -> bool:
    if triton is None or not x.is_cuda or len(norm.normalized_shape) != 1 or norm.weight is None:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or norm.weight.requires_grad))


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, gate: torch.Tensor | None = None, *,
               feeds_matmul: bool = False):
    """``norm(x)``, times ``silu(gate)`` when given, over the last axis.

    Under autocast the result is float32 as PyTorch's, unless ``feeds_matmul``: then it is
    written in the autocast dtype, which the following linear layer casts it to anyway. (A
    result that becomes the residual stream stays float32: rounding it loses accuracy.)
    """
    if not _fused_applies(x, norm):
        y = norm(x)
        return y * F.silu(gate) if gate is not None else y
    channels = x.shape[-1]
    rows_in = x.reshape(-1, channels).contiguous()
    out_dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        out_dtype = torch.get_autocast_dtype(x.device.type) if feeds_matmul else torch.float32
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    gate_rows = rows_in
    if gate is not None:
        gate_rows = gate.reshape(-1, channels)  # a view for the chunk of in_proj's output
        if gate_rows.stride(1) != 1:
            gate_rows = gate_rows.contiguous()
    rows = rows_in.shape[0]
    block_c = triton.next_power_of_2(channels)
    block_r = max(1, min(64, 4096 // block_c))
    _layer_norm_rows[(triton.cdiv(rows, block_r),)](
        rows_in, gate_rows, norm.weight, norm.bias, out, rows, channels, gate_rows.stride(0),
        norm.eps, BLOCK_R=block_r, BLOCK_C=block_c, HAS_GATE=gate is not None,
        num_warps=4,
    )
    return out
