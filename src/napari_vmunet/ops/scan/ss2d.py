"""SS2D's four-direction scan fused into one forward and one backward kernel: the ``triton``
backend's ``selective_scan_2d``, and where the Triton or the Gluon kernels run.

The kernels: :mod:`.ss2d_triton` (every shape; L cut into segments where a batch is too small
to fill the GPU) and :mod:`.ss2d_gluon` (Triton's layout-explicit dialect: the backward, and the
forward where a program walks 4096 steps or more, on the Triton releases it was tested on). The
Gluon kernels run where :func:`.ss2d_gluon.usable` says they can; one that fails to build hands
over to the Triton kernel for the rest of the session. Shapes as
:func:`napari_vmunet.ops.scan.selective_scan_2d` takes them (:mod:`.composed`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import ss2d_gluon, ss2d_triton
from .composed import N_DIRECTIONS

try:
    import triton
except Exception:  # the backend reports why it is unavailable
    triton = None

# Steps between the states the forward pass keeps for the backward (a multiple of 4, the
# forward's unrolling): fewer steps cost memory (B*4*L/CHECKPOINT states of N x D floats),
# more cost scratch per backward program ((CHECKPOINT, N, BLOCK_D) floats, which should stay in
# L2). 16 channels a program, one warp, 32 steps was the best measured (benchmarks/RESULTS.md,
# 2026-11-27 later, "fused SS2D backward"). Both backwards (Triton's and Gluon's) decompose the
# work so.
_CHECKPOINT = 32
_BWD_BLOCK_D = 16


def _check(x, proj, dt_weight, A):
    batch, height, width, _ = x.shape
    rank, n_state = dt_weight.shape[2], A.shape[2]
    if proj.shape != (batch, height, width, N_DIRECTIONS, rank + 2 * n_state):
        raise ValueError(f"proj has shape {tuple(proj.shape)}, expected "
                         f"{(batch, height, width, N_DIRECTIONS, rank + 2 * n_state)}")
    if n_state & (n_state - 1) or n_state > 64:
        raise ValueError(f"the fused SS2D scan takes N a power of two up to 64, got {n_state}")


def _kernel_params(dt_weight, dt_bias, A, D):
    """The parameters as the kernels read them: dt_weight and A channels last, (K, R, D) and
    (K, N, D); dt_bias and D (K, D)."""
    return (dt_weight.transpose(1, 2).contiguous(), dt_bias.contiguous(),
            A.transpose(1, 2).contiguous(), D.contiguous())


def _sizes(params):
    """The kernels' R, RP (R rounded up to a power of two) and N, from _kernel_params."""
    rank, n_state = params[0].shape[1], params[2].shape[1]
    return dict(R=rank, RP=triton.next_power_of_2(rank), N=n_state)


def _forward(x, proj, params, checkpoint_every=0):
    """The fused scan (``params`` from _kernel_params); with ``checkpoint_every`` also the
    states every that many steps (B * 4, L / checkpoint_every, N, D) for the backward pass."""
    batch, height, width, channels = x.shape
    length = height * width
    # x, B, C and the low-rank dt are read in float32: in bf16 every step would unpack 39 values
    # (a quarter of the kernel's instructions), and a thread's 2-byte x is too small for the
    # asynchronous copies of the pipelined loop; one cheap pass over each here
    x, proj = x.float(), proj.float()
    y = torch.zeros(batch, height, width, channels, device=x.device, dtype=torch.float32)
    checkpoints = y
    if checkpoint_every:
        checkpoints = torch.empty(batch * N_DIRECTIONS, -(-length // checkpoint_every),
                                  params[2].shape[1], channels, device=x.device,
                                  dtype=torch.float32)
    sizes = _sizes(params)
    whole = checkpoint_every or ss2d_triton.segments(batch, channels, length) == 1
    if (whole and ss2d_gluon.runs_forward(length, sizes["R"], sizes["N"], checkpoint_every,
                                          x.device)
            and ss2d_gluon.launched(ss2d_gluon.forward, x, proj, params, y, checkpoints, sizes,
                                    checkpoint_every)):
        return y, checkpoints
    ss2d_triton.forward(x, proj, params, y, checkpoints, sizes, checkpoint_every)
    return y, checkpoints


class _FusedSS2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, proj, dt_weight, dt_bias, A, D):
        x, proj = x.contiguous(), proj.contiguous()
        params = _kernel_params(dt_weight, dt_bias, A, D)
        y, checkpoints = _forward(x, proj, params, _CHECKPOINT)
        ctx.save_for_backward(x, proj, *params, checkpoints)
        return y

    @staticmethod
    @once_differentiable  # a clear error for double backward, which the kernel does not do
    def backward(ctx, dy):
        x, proj, *params, checkpoints = ctx.saved_tensors
        f32 = {"device": x.device, "dtype": torch.float32}
        dx = torch.zeros(x.shape, **f32)
        dproj = torch.zeros(proj.shape, **f32)
        # the parameters' gradients in the kernels' layout: dt_weight's and A's channels last
        grads = [torch.zeros(p.shape, **f32) for p in params]
        sizes = _sizes(params)
        dy = dy.float().contiguous()
        args = (x, proj, params, dy, checkpoints, dx, dproj, grads, sizes, _BWD_BLOCK_D,
                _CHECKPOINT)
        if not (ss2d_gluon.usable(sizes["R"], sizes["N"], _CHECKPOINT, x.device)
                and ss2d_gluon.launched(ss2d_gluon.backward, *args)):
            ss2d_triton.backward(*args)
        ddtw, dbias, dA, dD = (g.to(p.dtype) for g, p in zip(grads, params, strict=True))
        return (dx.to(x.dtype), dproj.to(proj.dtype), ddtw.transpose(1, 2), dbias,
                dA.transpose(1, 2), dD)


def selective_scan_2d(x, proj, dt_weight, dt_bias, A, D):
    """Fused SS2D scan; shapes as :func:`napari_vmunet.ops.scan.selective_scan_2d`. With gradients
    when any input needs them."""
    _check(x, proj, dt_weight, A)
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, proj, dt_weight, dt_bias, A, D)):
        return _FusedSS2D.apply(x, proj, dt_weight, dt_bias, A, D)
    params = _kernel_params(dt_weight, dt_bias, A, D)
    return _forward(x.contiguous(), proj.contiguous(), params)[0]
