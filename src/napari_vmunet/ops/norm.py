"""LayerNorm (optionally times a SiLU gate) as one Triton kernel on the GPU.

PyTorch's LayerNorm kernel gives each row of 96-1536 channels its own small thread block, far
from the GPU's bandwidth on VM-UNet's activations (benchmarks/RESULTS.md, 2026-11-27, "fused
SS2D kernel, fused LayerNorm, CUDA graphs"). Here one program normalises many rows, the SS2D output
gate ``* silu(z)`` is applied on the way, and a result that goes into a linear layer is written
in the autocast dtype, which is what that layer would cast it to anyway.

In training the norm is one autograd function (:class:`_LayerNorm`) that keeps only its inputs
for the backward: on the GPU its forward is the kernel above and its backward a second kernel
that recomputes the norm on the way; the gated form takes the same function on the CPU too,
for the memory. The ungated norms in training on the CPU, and inference on the CPU or without
Triton, use ``nn.LayerNorm`` (and the gate) as they are, as does everything under
``NAPARI_VMUNET_SCAN=reference`` (:mod:`.gate`); the module's parameters are the same
either way, so checkpoints do not notice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .gate import runs_triton

try:
    import triton
    import triton.language as tl
except Exception:  # no triton: the PyTorch path below
    triton = None


if triton is not None:

    @triton.jit
    def _layer_norm_rows(x_ptr, gate_ptr, w_ptr, b_ptr, out_ptr, head_w_ptr, head_b_ptr, rows,
                         channels, gate_stride, eps, BLOCK_R: tl.constexpr,
                         BLOCK_C: tl.constexpr, HAS_GATE: tl.constexpr, HEAD: tl.constexpr = 0):
        """norm(x) (times silu(gate) when HAS_GATE) for BLOCK_R rows; with HEAD > 0 outputs,
        the linear layer at head_w_ptr / head_b_ptr (HEAD, channels) applied to it instead."""
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
        if HEAD > 0:
            for j in tl.static_range(HEAD):
                head_w = tl.load(head_w_ptr + j * channels + c, mask=c < channels,
                                 other=0.0).to(tl.float32)
                head = tl.sum(y * head_w[None, :], axis=1) + tl.load(head_b_ptr + j)
                tl.store(out_ptr + r.to(tl.int64) * HEAD + j, head.to(out_ptr.dtype.element_ty),
                         mask=r < rows)
        else:
            tl.store(out_ptr + r64 * channels + c[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=mask)

    @triton.jit
    def _layer_norm_bwd(x_ptr, gate_ptr, w_ptr, b_ptr, grad_ptr, dx_ptr, dgate_ptr, dw_ptr,
                        db_ptr, rows, channels, gate_stride, eps, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr, ITER: tl.constexpr, HAS_GATE: tl.constexpr):
        """Gradients of norm(x) (times silu(gate) when HAS_GATE) for ITER blocks of BLOCK_R
        rows, the norm recomputed from x; the weight's and bias's sums over this program's
        rows go to row ``program_id`` of dw and db (summed over the programs by the caller)."""
        c = tl.arange(0, BLOCK_C)
        c_mask = c < channels
        w = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        dw = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        db = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for i in range(ITER):
            r = (tl.program_id(0) * ITER + i) * BLOCK_R + tl.arange(0, BLOCK_R)
            mask = (r < rows)[:, None] & c_mask[None, :]
            r64 = r.to(tl.int64)[:, None]
            x = tl.load(x_ptr + r64 * channels + c[None, :], mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=1) / channels
            centred = tl.where(mask, x - mean[:, None], 0.0)
            inv_std = tl.rsqrt(tl.sum(centred * centred, axis=1) / channels + eps)
            x_hat = centred * inv_std[:, None]
            g = tl.load(grad_ptr + r64 * channels + c[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            d_normed = g  # zero on masked elements (g = 0 there)
            if HAS_GATE:
                z = tl.load(gate_ptr + r64 * gate_stride + c[None, :], mask=mask,
                            other=0.0).to(tl.float32)
                sig = tl.sigmoid(z)
                d_normed = g * z * sig
                d_gate = g * (x_hat * w + b) * sig * (1.0 + z * (1.0 - sig))
                tl.store(dgate_ptr + r64 * channels + c[None, :],
                         d_gate.to(dgate_ptr.dtype.element_ty), mask=mask)
            d_x_hat = d_normed * w
            mean_d = tl.sum(d_x_hat, axis=1) / channels
            mean_dx = tl.sum(d_x_hat * x_hat, axis=1) / channels
            d_x = inv_std[:, None] * (d_x_hat - mean_d[:, None] - x_hat * mean_dx[:, None])
            tl.store(dx_ptr + r64 * channels + c[None, :], d_x.to(dx_ptr.dtype.element_ty),
                     mask=mask)
            dw += d_normed * x_hat
            db += d_normed
        tl.store(dw_ptr + tl.program_id(0) * channels + c, tl.sum(dw, axis=0), mask=c_mask)
        tl.store(db_ptr + tl.program_id(0) * channels + c, tl.sum(db, axis=0), mask=c_mask)


def _kernels_take(norm: nn.LayerNorm) -> bool:
    """The kernels (and :class:`_LayerNorm`) normalize over the last axis, with a weight and a
    bias."""
    return len(norm.normalized_shape) == 1 and norm.weight is not None and norm.bias is not None


def _fused_applies(x: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Inference through the forward kernel."""
    if not runs_triton(x) or not _kernels_take(norm):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or norm.weight.requires_grad))


def _trains(x: torch.Tensor, norm: nn.LayerNorm, gate: torch.Tensor | None) -> bool:
    """Training through :class:`_LayerNorm`: gated on every device, ungated on the GPU."""
    if not torch.is_grad_enabled() or not _kernels_take(norm):
        return False
    if not any(t is not None and t.requires_grad for t in (x, gate, norm.weight, norm.bias)):
        return False
    return gate is not None or runs_triton(x)


def _out_dtype(x: torch.Tensor, feeds_matmul: bool) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type) if feeds_matmul else torch.float32
    return x.dtype


def _rows(x: torch.Tensor, gate: torch.Tensor | None):
    """x as contiguous rows of its channels, and the gate's rows (a view for the chunk of
    in_proj's output; x's rows when there is no gate); the kernels' row tile."""
    channels = x.shape[-1]
    rows_in = x.reshape(-1, channels).contiguous()
    gate_rows = rows_in
    if gate is not None:
        gate_rows = gate.reshape(-1, channels)
        if gate_rows.stride(1) != 1:
            gate_rows = gate_rows.contiguous()
    block_c = triton.next_power_of_2(channels)
    return rows_in, gate_rows, block_c, max(1, min(64, 4096 // block_c))


def _launch(x, weight, bias, eps, gate, out_dtype, head=None):
    """The forward kernel over x's rows (times silu(gate) when given; through the linear
    layer ``head`` = (weight, bias) when given)."""
    channels = x.shape[-1]
    rows_in, gate_rows, block_c, block_r = _rows(x, gate)
    head_w, head_b = head if head is not None else (weight, bias)  # (placeholders: unread)
    outputs = head_w.shape[0] if head is not None else 0
    out = torch.empty(*x.shape[:-1], outputs or channels, device=x.device, dtype=out_dtype)
    rows = rows_in.shape[0]
    _layer_norm_rows[(triton.cdiv(rows, block_r),)](
        rows_in, gate_rows, weight, bias, out, head_w.contiguous(), head_b, rows, channels,
        gate_rows.stride(0), eps, BLOCK_R=block_r, BLOCK_C=block_c, HAS_GATE=gate is not None,
        HEAD=outputs, num_warps=4,
    )
    return out


class _LayerNorm(torch.autograd.Function):
    """Training: ``layer_norm(x)``, times ``silu(gate)`` when there is a gate, keeping only x
    and the gate (for SS2D a view of in_proj's output, alive anyway) for the backward, which
    recomputes the rest (one kernel on the GPU).

    Autograd through the modules kept more: for the gated norm the normalized x, silu(gate)
    and the product's copy in the autocast dtype, three more tensors of the block's widest size.
    On the GPU PyTorch's own LayerNorm kernels, forward and backward, give each row of 96-1536
    channels a thread block of its own, where these kernels walk many rows a program
    (benchmarks/RESULTS.md, 2026-11-27 ninth session)."""

    @staticmethod
    def forward(ctx, x, gate, weight, bias, eps, out_dtype):
        ctx.save_for_backward(x, gate, weight, bias)
        ctx.eps = eps
        if runs_triton(x):
            return _launch(x, weight, bias, eps, gate, out_dtype)
        normed = F.layer_norm(x.float(), weight.shape, weight, bias, eps)
        return (normed if gate is None else normed * F.silu(gate.float())).to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, gate, weight, bias = ctx.saved_tensors
        if runs_triton(x):
            return (*_launch_backward(x, gate, weight, bias, ctx.eps, grad), None, None)
        shape = weight.shape
        dgate = None
        with torch.autocast(x.device.type, enabled=False):
            xf, grad = x.float(), grad.float()
            normed, mean, rstd = torch.native_layer_norm(xf, shape, weight, bias, ctx.eps)
            if gate is not None:
                gf = gate.float()
                dgate = torch.ops.aten.silu_backward(grad * normed, gf).to(gate.dtype)
                grad = grad * F.silu(gf)
            dx, dw, db = torch.ops.aten.native_layer_norm_backward(
                grad, xf, shape, mean, rstd, weight, bias,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]])
        return None if dx is None else dx.to(x.dtype), dgate, dw, db, None, None


# Row blocks a backward program walks: its weight and bias sums are one row of partial sums
# each, so fewer partials to add up afterwards
_BWD_ROW_BLOCKS = 16


def _launch_backward(x, gate, weight, bias, eps, grad):
    """The gradients of x, the gate (None without one), the weight and the bias, from the
    backward kernel."""
    channels = x.shape[-1]
    rows_in, gate_rows, block_c, block_r = _rows(x, gate)
    rows = rows_in.shape[0]
    programs = triton.cdiv(rows, block_r * _BWD_ROW_BLOCKS)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dgate = None if gate is None else torch.empty(gate.shape, device=x.device, dtype=gate.dtype)
    partial_dw = torch.empty(programs, channels, device=x.device, dtype=torch.float32)
    partial_db = torch.empty_like(partial_dw)
    _layer_norm_bwd[(programs,)](
        rows_in, gate_rows, weight, bias, grad.contiguous(), dx,
        dx if dgate is None else dgate,  # (a placeholder the kernel never writes without a gate)
        partial_dw, partial_db, rows, channels,
        gate_rows.stride(0), eps, BLOCK_R=block_r, BLOCK_C=block_c, ITER=_BWD_ROW_BLOCKS,
        HAS_GATE=gate is not None, num_warps=4,
    )
    return (dx, dgate, partial_dw.sum(0).to(weight.dtype), partial_db.sum(0).to(bias.dtype))


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, gate: torch.Tensor | None = None, *,
               feeds_matmul: bool = False):
    """``norm(x)``, times ``silu(gate)`` when given, over the last axis.

    Under autocast the result is float32 as PyTorch's, unless ``feeds_matmul``: then it is
    written in the autocast dtype, which the following linear layer casts it to anyway. (A
    result that becomes the residual stream stays float32: rounding it loses accuracy.)
    """
    if _trains(x, norm, gate):
        return _LayerNorm.apply(x, gate, norm.weight, norm.bias, norm.eps,
                                _out_dtype(x, feeds_matmul))
    if not _fused_applies(x, norm):
        y = norm(x)
        return y * F.silu(gate) if gate is not None else y
    return _launch(x, norm.weight, norm.bias, norm.eps, gate, _out_dtype(x, feeds_matmul))


# Outputs up to which layer_norm_linear adds the linear layer to the norm's kernel (each one is
# a sum over the channels a row; a segmentation head has a few)
_MAX_HEAD_OUTPUTS = 16


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(norm(x), weight, bias)``, for a linear layer of few outputs.

    In GPU inference this is one kernel that never writes the normalized x: for VM-UNet's
    segmentation head that is the full-resolution map of d/4 channels, the largest tensor of the
    network, written and read back for a 1-output product. Elsewhere, or for more outputs,
    it is :func:`layer_norm` and ``F.linear``.
    """
    if (bias is None or weight.shape[0] > _MAX_HEAD_OUTPUTS or not _fused_applies(x, norm)
            or (torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad))):
        return F.linear(layer_norm(x, norm, feeds_matmul=True), weight, bias)
    return _launch(x, norm.weight, norm.bias, norm.eps, None, _out_dtype(x, True),
                   head=(weight, bias))
