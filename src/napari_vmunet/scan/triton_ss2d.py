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

try:
    import triton
    import triton.language as tl
except Exception:  # the backend module reports why it is unavailable
    triton = None

N_DIRECTIONS = 4
LOG2E = 1.4426950408889634

# Fewer (batch, direction, channel) rows than this leave the GPU partly idle: scan L in segments.
_ROWS_TO_FILL_GPU = 16384
_MIN_SEGMENT = 32


if triton is not None:

    @triton.jit
    def _softplus(x):
        return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))

    @triton.jit
    def _pixel(step, direction, height, width, length):
        """Row-major index of the pixel a direction reads at ``step``."""
        step = tl.where(direction >= 2, length - 1 - step, step)
        return tl.where(direction % 2 == 1, (step % height) * width + step // height, step)

    _CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w)
                for bd, w in [(4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 2),
                              (32, 4)]]

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
        A = tl.load(A_ptr + kd[:, None] * N + n[None, :], mask=d_mask[:, None],
                    other=0.0).to(tl.float32) * 1.4426950408889634
        Dv = tl.load(D_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        dt_w = tl.load(dtw_ptr + kd[:, None] * R + r[None, :],
                       mask=d_mask[:, None] & (r < R)[None, :], other=0.0).to(tl.float32)

        # per (batch, direction, channel) row: segment end states and summed dt
        row = (b * 4 + direction) * channels + d  # 4 directions
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        if PASS == 2:
            for s in range(0, segment):
                dt_sum = tl.load(seg_dt_ptr + row * n_segments + s, mask=d_mask, other=0.0)
                h_end = tl.load(seg_state_ptr + (row[:, None] * n_segments + s) * N + n[None, :],
                                mask=d_mask[:, None], other=0.0)
                h = tl.exp2(dt_sum[:, None] * A) * h + h_end
        dt_total = tl.zeros((BLOCK_D,), dtype=tl.float32)

        n_proj = R + 2 * N
        x_base = x_ptr + b * length * channels + d
        y_base = y_ptr + b * length * channels + d
        proj_base = proj_ptr + (b * length * 4 + direction) * n_proj
        start = segment * segment_length
        stop = tl.minimum(start + segment_length, length)
        for step in range(start, stop):
            pixel = _pixel(step, direction, height, width, length)
            xv = tl.load(x_base + pixel * channels, mask=d_mask, other=0.0).to(tl.float32)
            p = proj_base + pixel * (4 * n_proj)
            dt_low = tl.load(p + r, mask=r < R, other=0.0).to(tl.float32)
            Bv = tl.load(p + R + n).to(tl.float32)
            dt = _softplus(tl.sum(dt_w * dt_low[None, :], axis=1) + bias)
            h = tl.exp2(dt[:, None] * A) * h + (dt * xv)[:, None] * Bv[None, :]
            if PASS == 1:
                dt_total += dt
            else:
                Cv = tl.load(p + R + N + n).to(tl.float32)
                y = tl.sum(h * Cv[None, :], axis=1) + Dv * xv
                tl.atomic_add(y_base + pixel * channels, y, mask=d_mask, sem="relaxed")
        if PASS == 1:
            tl.store(seg_dt_ptr + row * n_segments + segment, dt_total, mask=d_mask)
            tl.store(seg_state_ptr + (row[:, None] * n_segments + segment) * N + n[None, :], h,
                     mask=d_mask[:, None])


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
    params = [t.contiguous() for t in (dt_weight, dt_bias, A, D)]
    length = height * width
    y = torch.zeros(batch, height, width, channels, device=x.device, dtype=torch.float32)
    n_segments = _segments(batch, channels, length)
    segment_length = -(-length // n_segments)
    n_segments = -(-length // segment_length)
    if n_segments > 1:
        rows = batch * N_DIRECTIONS * channels
        seg_state = torch.empty(rows, n_segments, n_state, device=x.device, dtype=torch.float32)
        seg_dt = torch.empty(rows, n_segments, device=x.device, dtype=torch.float32)
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
