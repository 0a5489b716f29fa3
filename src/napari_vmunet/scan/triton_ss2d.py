"""SS2D's four-direction scan as one fused Triton kernel (inference).

What the composed form (:mod:`napari_vmunet.scan.ss2d`) does in many passes over
(B, 4, D, L) tensors — building the four direction sequences, projecting dt to full width,
casting to float32, scanning, flipping and transposing back and summing — happens here inside
one kernel that reads the image where it lies:

- each program owns (batch, direction, a block of channels) and walks its direction's pixel
  order, computing each pixel's row-major index on the fly; the activation is channels-last
  (B, H, W, D), so a pixel's channels are one contiguous read in every direction;
- dt = softplus(dt_weight @ dt_low + bias) is made in registers from the R-wide low-rank
  projection (R = 6 for the smallest stage): the (B, 4, D, L) dt tensor never exists;
- the state is float32 in registers; inputs are read in their own dtype (bf16 under autocast);
- each direction adds its output into the row-major (B, H, W, D) float32 result with relaxed
  atomics: the four directions are summed without being stored apart.

A program walks its pixels one after another (no log-depth scan tree: the least arithmetic).
When batch x directions x channels is too small to fill the GPU (batch 1), L is cut into
segments scanned in parallel: a first pass keeps each segment's end state and summed dt, and
the second starts each segment from the state the segments before it leave behind
(h_start[s] = exp(A * sum dt[s-1]) h_start[s-1] + h_end[s-1]).

Gradients are not computed here: training uses the composed form on the ``triton`` 1D scan.
"""

from __future__ import annotations

import torch

from .ss2d import N_DIRECTIONS

try:
    import triton
    import triton.language as tl
except Exception:  # the backend module reports why it is unavailable
    triton = None

# Fewer (batch, direction, channel) rows than this leave the GPU partly idle: scan L in segments.
_ROWS_TO_FILL_GPU = 16384
_MIN_SEGMENT = 32


if triton is not None:
    from .triton_scan import _softplus

    @triton.jit
    def _pixel(step, direction, height, width, length):
        """Row-major index of the pixel a direction reads at ``step``."""
        step = tl.where(direction >= 2, length - 1 - step, step)
        return tl.where(direction % 2 == 1, (step % height) * width + step // height, step)

    @triton.jit
    def _step_inputs(step, stop, direction, height, width, length, x_base, proj_base, channels,
                     d_mask, r, n, R: tl.constexpr, N: tl.constexpr, PASS: tl.constexpr):
        """What step ``step`` reads: its pixel, x there, and the low-rank dt, B and C of this
        direction there (zeros past ``stop``)."""
        valid = step < stop
        pixel = _pixel(step, direction, height, width, length)
        xv = tl.load(x_base + pixel * channels, mask=d_mask & valid, other=0.0).to(tl.float32)
        p = proj_base + pixel * (4 * (R + 2 * N))
        dt_low = tl.load(p + r, mask=(r < R) & valid, other=0.0).to(tl.float32)
        Bv = tl.load(p + R + n, mask=(n < N) & valid, other=0.0).to(tl.float32)
        Cv = tl.load(p + R + N + n, mask=(n < N) & valid & (PASS != 1), other=0.0).to(tl.float32)
        return valid, pixel, xv, dt_low, Bv, Cv

    @triton.jit
    def _advance(h, dt_total, valid, pixel, xv, dt_low, Bv, Cv, dt_w, bias, A, Dv, y_base,
                 channels, d_mask, PASS: tl.constexpr):
        """One step of the recurrence; adds its output to the pixel (except in pass 1)."""
        dt = _softplus(tl.sum(dt_w * dt_low[:, None], axis=0) + bias)
        dt = tl.where(valid, dt, 0.0)  # past the end: decay 1, input 0, the state carries
        h = tl.exp2(dt[None, :] * A) * h + (dt * xv)[None, :] * Bv[:, None]
        if PASS == 1:
            dt_total += dt
        else:
            y = tl.sum(h * Cv[:, None], axis=0) + Dv * xv
            tl.atomic_add(y_base + pixel * channels, y, mask=d_mask & valid, sem="relaxed")
        return h, dt_total

    # Tensors are (states, channels): a thread owns a channel and all its N states, so the sums
    # over states stay in the thread and a step's output is one coalesced row of channels.
    _CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w)
                for bd, w in [(16, 1), (32, 1), (64, 2), (64, 1), (128, 4), (128, 2)]]

    @triton.autotune(configs=_CONFIGS, key=["channels", "length", "n_segments", "PASS", "IS_BF"],
                     reset_to_zero=["y_ptr"])
    @triton.jit
    def _ss2d_fwd(
        x_ptr, proj_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, y_ptr, seg_state_ptr, seg_dt_ptr,
        height, width, channels, length, segment_length, n_segments,
        R: tl.constexpr, RP: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
        PASS: tl.constexpr,  # 0: whole L, 1: segment end states, 2: segments from those
        IS_BF: tl.constexpr,  # tuned apart (a key)
    ):
        n_blocks = tl.cdiv(channels, BLOCK_D)
        direction = tl.program_id(0) // n_blocks
        d = (tl.program_id(0) % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d < channels
        segment = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        n = tl.arange(0, N)
        r = tl.arange(0, RP)
        kd = direction * channels + d  # the channel among all directions' parameters
        # A pre-multiplied by log2(e): exp(dt A) = exp2(dt A log2 e)
        # A (K, N, D) and dt_weight (K, R, D), channels last: every 2D tile is read along the
        # channels, so the compiler lays the threads out along them
        A = tl.load(A_ptr + (direction * N + n[:, None]) * channels + d[None, :],
                    mask=d_mask[None, :], other=0.0).to(tl.float32) * 1.4426950408889634
        Dv = tl.load(D_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        dt_w = tl.load(dtw_ptr + (direction * R + r[:, None]) * channels + d[None, :],
                       mask=d_mask[None, :] & (r < R)[:, None], other=0.0).to(tl.float32)

        # per (batch, direction, segment): end states (N, D) and summed dt (D,)
        seg = (b * 4 + direction) * n_segments  # 4 directions
        h = tl.zeros((N, BLOCK_D), dtype=tl.float32)
        if PASS == 2:
            for s in range(0, segment):
                dt_sum = tl.load(seg_dt_ptr + (seg + s) * channels + d, mask=d_mask, other=0.0)
                h_end = tl.load(seg_state_ptr + ((seg + s) * N + n[:, None]) * channels
                                + d[None, :], mask=d_mask[None, :], other=0.0)
                h = tl.exp2(dt_sum[None, :] * A) * h + h_end
        dt_total = tl.zeros((BLOCK_D,), dtype=tl.float32)

        x_base = x_ptr + b * length * channels + d
        y_base = y_ptr + b * length * channels + d
        proj_base = proj_ptr + (b * length * 4 + direction) * (R + 2 * N)
        start = segment * segment_length
        stop = tl.minimum(start + segment_length, length)
        # Four steps per iteration, their loads issued together before any is used: a step's
        # inputs do not depend on the state, so the memory latency is paid once per four steps
        # instead of once per step (which bounded the one-step loop at ~1/8 of the bandwidth).
        at = (stop, direction, height, width, length, x_base, proj_base, channels, d_mask, r, n)
        for step in range(start, stop, 4):
            i0 = _step_inputs(step, *at, R, N, PASS)
            i1 = _step_inputs(step + 1, *at, R, N, PASS)
            i2 = _step_inputs(step + 2, *at, R, N, PASS)
            i3 = _step_inputs(step + 3, *at, R, N, PASS)
            h, dt_total = _advance(h, dt_total, *i0, dt_w, bias, A, Dv, y_base, channels, d_mask,
                                   PASS)
            h, dt_total = _advance(h, dt_total, *i1, dt_w, bias, A, Dv, y_base, channels, d_mask,
                                   PASS)
            h, dt_total = _advance(h, dt_total, *i2, dt_w, bias, A, Dv, y_base, channels, d_mask,
                                   PASS)
            h, dt_total = _advance(h, dt_total, *i3, dt_w, bias, A, Dv, y_base, channels, d_mask,
                                   PASS)
        if PASS == 1:
            tl.store(seg_dt_ptr + (seg + segment) * channels + d, dt_total, mask=d_mask)
            tl.store(seg_state_ptr + ((seg + segment) * N + n[:, None]) * channels + d[None, :],
                     h, mask=d_mask[None, :])


def _segments(batch: int, channels: int, length: int) -> int:
    rows = batch * N_DIRECTIONS * channels
    wanted = -(-_ROWS_TO_FILL_GPU // rows)
    return max(1, min(wanted, length // _MIN_SEGMENT))


def selective_scan_2d(x, proj, dt_weight, dt_bias, A, D):
    """Fused SS2D scan (no autograd); shapes as :func:`napari_vmunet.scan.selective_scan_2d`."""
    batch, height, width, channels = x.shape
    rank, n_state = dt_weight.shape[2], A.shape[2]
    if proj.shape != (batch, height, width, N_DIRECTIONS, rank + 2 * n_state):
        raise ValueError(f"proj has shape {tuple(proj.shape)}, expected "
                         f"{(batch, height, width, N_DIRECTIONS, rank + 2 * n_state)}")
    if n_state & (n_state - 1) or n_state > 64:
        raise ValueError(f"the triton scan takes N a power of two up to 64, got {n_state}")
    x, proj = x.contiguous(), proj.contiguous()
    params = [dt_weight.transpose(1, 2).contiguous(), dt_bias.contiguous(),
              A.transpose(1, 2).contiguous(), D.contiguous()]
    length = height * width
    y = torch.zeros(batch, height, width, channels, device=x.device, dtype=torch.float32)
    n_segments = _segments(batch, channels, length)
    segment_length = -(-length // n_segments)
    n_segments = -(-length // segment_length)
    if n_segments > 1:
        runs = batch * N_DIRECTIONS * n_segments
        seg_state = torch.empty(runs, n_state, channels, device=x.device, dtype=torch.float32)
        seg_dt = torch.empty(runs, channels, device=x.device, dtype=torch.float32)
    else:
        seg_state = seg_dt = y
    meta = dict(R=rank, RP=triton.next_power_of_2(rank), N=n_state,
                IS_BF=x.dtype == torch.bfloat16)
    args = (x, proj, *params, y, seg_state, seg_dt, height, width, channels, length,
            segment_length, n_segments)

    def grid(m):
        return (N_DIRECTIONS * triton.cdiv(channels, m["BLOCK_D"]), n_segments, batch)

    if n_segments > 1:
        _ss2d_fwd[grid](*args, PASS=1, **meta)
    _ss2d_fwd[grid](*args, PASS=2 if n_segments > 1 else 0, **meta)
    return y
