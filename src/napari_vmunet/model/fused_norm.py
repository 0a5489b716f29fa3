"""LayerNorm (optionally times a SiLU gate) as one Triton kernel on the GPU.

PyTorch's LayerNorm kernel gives each row of 96-1536 channels its own small thread block and
reached about a tenth of the H100's bandwidth on VM-UNet's activations (a fifth of the whole
forward pass once the scan was fused). Here one program normalises many rows, the SS2D output
gate ``* silu(z)`` is applied on the way, and a result that goes into a linear layer is written
in the autocast dtype, which is what that layer would cast it to anyway.

In training the gated form is one autograd function on every device (:class:`_GatedLayerNorm`,
the kernel's forward on the GPU) that keeps only its inputs for the backward. Otherwise training,
the CPU and machines without Triton use ``nn.LayerNorm`` (and the gate) as they are; the
module's parameters are the same either way, so checkpoints do not notice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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


def _out_dtype(x: torch.Tensor, feeds_matmul: bool) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type) if feeds_matmul else torch.float32
    return x.dtype


def _launch(x, weight, bias, eps, gate, out_dtype):
    """The kernel over x's rows (and the gate's, a view where it is one)."""
    channels = x.shape[-1]
    rows_in = x.reshape(-1, channels).contiguous()
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
        rows_in, gate_rows, weight, bias, out, rows, channels, gate_rows.stride(0), eps,
        BLOCK_R=block_r, BLOCK_C=block_c, HAS_GATE=gate is not None, num_warps=4,
    )
    return out


class _GatedLayerNorm(torch.autograd.Function):
    """Training: ``layer_norm(x) * silu(gate)`` keeping only x and the gate (a view of in_proj's
    output, alive anyway) for the backward, which recomputes the rest. Autograd through the
    modules kept the normalized x, silu(gate) and the product's copy in the autocast dtype as
    well: three more tensors of the block's widest size."""

    @staticmethod
    def forward(ctx, x, gate, weight, bias, eps, out_dtype):
        ctx.save_for_backward(x, gate, weight, bias)
        ctx.eps = eps
        if triton is not None and x.is_cuda:
            return _launch(x, weight, bias, eps, gate, out_dtype)
        normed = F.layer_norm(x.float(), weight.shape, weight, bias, eps)
        return (normed * F.silu(gate.float())).to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, gate, weight, bias = ctx.saved_tensors
        shape = weight.shape
        with torch.autocast(x.device.type, enabled=False):
            xf, gf, grad = x.float(), gate.float(), grad.float()
            normed, mean, rstd = torch.native_layer_norm(xf, shape, weight, bias, ctx.eps)
            dgate = torch.ops.aten.silu_backward(grad * normed, gf)
            dx, dw, db = torch.ops.aten.native_layer_norm_backward(
                grad * F.silu(gf), xf, shape, mean, rstd, weight, bias,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]])
        return (None if dx is None else dx.to(x.dtype), dgate.to(gate.dtype), dw, db, None,
                None)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, gate: torch.Tensor | None = None, *,
               feeds_matmul: bool = False):
    """``norm(x)``, times ``silu(gate)`` when given, over the last axis.

    Under autocast the result is float32 as PyTorch's, unless ``feeds_matmul``: then it is
    written in the autocast dtype, which the following linear layer casts it to anyway. (A
    result that becomes the residual stream stays float32: rounding it loses accuracy.)
    """
    if (gate is not None and torch.is_grad_enabled() and len(norm.normalized_shape) == 1
            and norm.weight is not None and norm.bias is not None
            and any(t.requires_grad for t in (x, gate, norm.weight, norm.bias))):
        return _GatedLayerNorm.apply(x, gate, norm.weight, norm.bias, norm.eps,
                                     _out_dtype(x, feeds_matmul))
    if not _fused_applies(x, norm):
        y = norm(x)
        return y * F.silu(gate) if gate is not None else y
    return _launch(x, norm.weight, norm.bias, norm.eps, gate, _out_dtype(x, feeds_matmul))
