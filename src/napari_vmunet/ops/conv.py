"""SS2D's depthwise 3x3 convolution + SiLU as one Triton kernel on the GPU.

In PyTorch the step between in_proj and the scan is four passes over the block's widest
activation: a copy of in_proj's x half into its own channels-last tensor, the convolution, the
SiLU, and the scan's float32 conversion (a quarter of the forward pass's GPU time went to such
copies and casts). Here one kernel reads the x half where in_proj wrote it, convolves and
applies the SiLU in float32, and writes what the two readers want: the float32 input of the scan
and, under autocast, the same values in the autocast dtype for x_proj's matrix product.

In training the same kernel writes the result once, in the dtype PyTorch's modules would give,
and the backward is PyTorch's (convolution recomputed, so neither an input copy nor the
convolution's output is kept). The CPU, machines without Triton and
``NAPARI_VMUNET_SCAN=reference`` (:mod:`.gate`) use ``nn.Conv2d`` and ``F.silu`` as they
are; the module's parameters are the same either way, so checkpoints do not notice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .autotune import autotune
from .gate import runs_triton

try:
    import triton
    import triton.language as tl
except Exception:  # no triton: the PyTorch path below
    triton = None


if triton is not None:

    # Tiles (pixels x channels, warps) tuned per activation shape, among four that were each
    # the fastest at one of config B's stages; one tile for all was slower (benchmarks/
    # RESULTS.md, 2026-11-27 seventh session).
    _CONFIGS = [triton.Config({"BLOCK_W": w, "BLOCK_C": c}, num_warps=warps)
                for w, c, warps in [(16, 64, 2), (16, 32, 1), (8, 128, 4), (8, 32, 4)]]

    @autotune(configs=_CONFIGS, key=["width", "channels"])
    @triton.jit
    def _conv3x3_silu(x_ptr, w_ptr, b_ptr, out_ptr, low_ptr, height, width, channels,
                      stride_b, stride_h, stride_w, BLOCK_W: tl.constexpr,
                      BLOCK_C: tl.constexpr, HAS_LOW: tl.constexpr):
        """One program: BLOCK_W pixels of one image row times BLOCK_C channels. Each of the
        nine taps is a (pixels, channels) tile read along the channels (contiguous in the
        input); the neighbouring programs' overlapping reads hit the cache."""
        image_row = tl.program_id(0)  # batch * height + row
        b = image_row // height
        row = image_row % height
        cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = c < channels
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        image = x_ptr + b.to(tl.int64) * stride_b
        for dy in tl.static_range(3):
            r = row + dy - 1
            row_ok = (r >= 0) & (r < height)  # zero padding above and below
            for dx in tl.static_range(3):
                cc = cols + dx - 1
                mask = (row_ok & (cc >= 0) & (cc < width))[:, None] & c_mask[None, :]
                v = tl.load(image + r * stride_h + cc[:, None] * stride_w + c[None, :],
                            mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + c * 9 + dy * 3 + dx, mask=c_mask, other=0.0).to(tl.float32)
                acc += v * w[None, :]
        y = acc * tl.sigmoid(acc)
        out = (image_row.to(tl.int64) * width + cols)[:, None] * channels + c[None, :]
        mask = (cols < width)[:, None] & c_mask[None, :]
        tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=mask)
        if HAS_LOW:
            tl.store(low_ptr + out, y.to(low_ptr.dtype.element_ty), mask=mask)


def _fused_applies(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    if not runs_triton(x) or x.stride(-1) != 1 or conv.bias is None:
        return False
    if (conv.kernel_size, conv.padding, conv.stride, conv.dilation) != ((3, 3), (1, 1), (1, 1),
                                                                        (1, 1)):
        return False
    return conv.groups == conv.in_channels == conv.out_channels


def _launch(x, weight, bias, out, low=None):
    """The kernel: silu(conv(x)) into ``out`` (and ``low``, when given), each in its dtype."""
    batch, height, width, channels = x.shape

    def grid(meta):
        return (batch * height, triton.cdiv(width, meta["BLOCK_W"]),
                triton.cdiv(channels, meta["BLOCK_C"]))

    _conv3x3_silu[grid](
        x, weight, bias, out, out if low is None else low, height, width, channels,
        x.stride(0), x.stride(1), x.stride(2), HAS_LOW=low is not None,
    )


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> the (B, C, H, W) channels-last tensor cuDNN's convolutions take."""
    return t.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class _ConvSiLU(torch.autograd.Function):
    """Training: the kernel's result, in the dtype PyTorch's path would give, with the
    gradients of PyTorch's convolution and SiLU. Only x (a view of in_proj's output, which
    stays alive for the gate z anyway) is kept: the backward recomputes the convolution rather
    than keeping a channels-last copy of x and the convolution's output (two tensors of the
    block's widest size)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        out = torch.empty(x.shape, device=x.device, dtype=dtype)
        _launch(x, weight, bias, out)
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        dtype = grad.dtype  # the convolution's dtype, as autocast runs it
        image = _channels_first(x.to(dtype))
        channels = image.shape[1]
        w = weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            pre = F.conv2d(image, w, bias.to(dtype), padding=1, groups=channels)
            dpre = torch.ops.aten.silu_backward(grad.permute(0, 3, 1, 2), pre)
            dimage, dw, db = torch.ops.aten.convolution_backward(
                dpre, image, w, [channels], [1, 1], [1, 1], [1, 1], False, [0, 0], channels,
                list(ctx.needs_input_grad[:3]))
        return (None if dimage is None else dimage.permute(0, 2, 3, 1).to(x.dtype),
                None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype), None)


def conv_silu(x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``silu(conv(x))`` for channels-last ``x`` (B, H, W, C) (a view such as a chunk of a wider
    tensor is read in place), ``conv`` depthwise 3x3.

    Returns the result twice, channels last: for the scan and for a following linear layer. In
    inference on the fused path the first is float32 and the second in the autocast dtype under
    autocast; otherwise both are one tensor, in the dtype PyTorch's modules would give.
    """
    if not _fused_applies(x, conv):
        # On the GPU the convolution runs channels-last, so the result is (B, H, W, C) without
        # a transpose; on the CPU the contiguous layout is faster.
        layout = torch.channels_last if x.is_cuda else torch.contiguous_format
        image = x.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        y = F.silu(conv(image)).permute(0, 2, 3, 1)
        return y, y
    autocast = torch.is_autocast_enabled(x.device.type)
    low_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, conv.weight, conv.bias)):
        y = _ConvSiLU.apply(x, conv.weight, conv.bias, low_dtype)
        return y, y
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    low = torch.empty(x.shape, device=x.device, dtype=low_dtype) if autocast else None
    _launch(x, conv.weight, conv.bias, out, low)
    return out, out if low is None else low
