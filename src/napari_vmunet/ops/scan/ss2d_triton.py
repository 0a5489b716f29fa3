"""SS2D's four-direction scan as fused Triton kernels: one forward, one backward.

What the composed form (:mod:`.composed`) does in many passes over
(B, 4, D, L) tensors — building the four direction sequences, projecting dt to full width,
casting to float32, scanning, flipping and transposing back and summing — happens here inside
one kernel that reads the image where it lies:

- each program owns (batch, direction, a block of channels) and walks its direction's pixel
  order, stepping the row-major pixel index by a stride (and a jump at each line's end); the
  activation is channels-last (B, H, W, D), so a pixel's channels are one contiguous read in
  every direction; each thread holds one channel with all its states;
- dt = softplus(dt_weight @ dt_low + bias) is made in registers from the R-wide low-rank
  projection (R = 6 for the smallest stage): the (B, 4, D, L) dt tensor does not exist, except
  in inference where R is large enough for the kernel to read dt_weight @ dt_low made by one
  matrix product instead (:func:`_takes_dt_product`);
- the state is float32 in registers; x and the pixel projections are read from float32
  copies (4-byte values the pipelined loop can fetch asynchronously, steps ahead);
- each direction adds its output into the row-major (B, H, W, D) float32 result with relaxed
  atomics: the four directions are summed without being stored apart.

A program walks its pixels one after another (no log-depth scan tree: the least arithmetic).
When batch x directions x channels is too small to fill the GPU (batches below 32 at 256²),
L is cut into segments scanned in parallel: a first pass keeps each segment's end state and
summed dt, and the second starts each segment from the state the segments before it leave behind
(h_start[s] = exp(A * sum dt[s-1]) h_start[s-1] + h_end[s-1]).

For training, the forward pass also keeps the state every ``_CHECKPOINT`` steps (L is then not
cut in segments), and one backward kernel walks each direction back from those checkpoints
(:func:`_ss2d_bwd`): the four directions' gradients are made and merged without the
(B, 4, D, L) tensors of the composed form ever existing, in about half the memory.

Where Triton's Gluon dialect is usable, :mod:`.ss2d_gluon` computes the backward, and the
forward where a program walks 4096 steps or more; :mod:`.ss2d` chooses, and the kernels here are
the fallback.
"""

from __future__ import annotations

import torch

from ..autotune import autotune
from .composed import N_DIRECTIONS
from .jit_helpers import next_pixel, pixel_at, previous_pixel, softplus, walk

try:
    import triton
    import triton.language as tl
except Exception:  # the backend module reports why it is unavailable
    triton = None

# How L is cut into segments (benchmarks/RESULTS.md, 2026-11-27 later still, "when the fused
# scan cuts L into segments"): with fewer (batch, direction, channel) rows than
# _ROWS_TO_FILL_GPU (a 256² batch of 32 at stage 0) one program per row walks too long a chain
# alone, and cutting L until rows x segments reaches _SEGMENT_ROWS pays for the second pass
# many times over; segments shorter than _MIN_SEGMENT steps, or more than _MAX_SEGMENTS, gain
# nothing more.
_ROWS_TO_FILL_GPU = 24576
_SEGMENT_ROWS = 196608
_MIN_SEGMENT = 128
_MAX_SEGMENTS = 64


if triton is not None:

    @triton.jit
    def _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d, d_mask, r, n,
                            channels, R: tl.constexpr, N: tl.constexpr):
        """This program's channels' dt_weight (RP, BLOCK_D), dt_bias, A (N, BLOCK_D) and D, in
        float32. dt_weight and A are stored channels last, (K, R, D) and (K, N, D): every tile
        is read along the channels, so the compiler lays the threads out along them."""
        kd = direction * channels + d  # the channel among all directions' parameters
        A = tl.load(A_ptr + (direction * N + n[:, None]) * channels + d[None, :],
                    mask=d_mask[None, :], other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + kd, mask=d_mask, other=0.0).to(tl.float32)
        dt_w = tl.load(dtw_ptr + (direction * R + r[:, None]) * channels + d[None, :],
                       mask=d_mask[None, :] & (r < R)[:, None], other=0.0).to(tl.float32)
        return dt_w, bias, A, Dv

    @triton.jit
    def _step_inputs(step, pixel, stop, x_base, proj_base, channels, d_mask, r, n,
                     R: tl.constexpr, N: tl.constexpr, PASS: tl.constexpr,
                     MASKED: tl.constexpr = True, DT_GIVEN: tl.constexpr = False, dt_base=None):
        """What step ``step`` reads at its ``pixel``: x, and the low-rank dt, B and C of this
        direction (zeros outside 0 <= step < stop; unless not MASKED: the caller knows the step
        is inside). With DT_GIVEN, the channels' dt before its bias (a row at ``dt_base``) in
        place of the low-rank dt."""
        valid = (step >= 0) & (step < stop) if MASKED else True
        xv = tl.load(x_base + pixel * channels, mask=d_mask & valid, other=0.0).to(tl.float32)
        p = proj_base + pixel * (4 * (R + 2 * N))
        if DT_GIVEN:
            dt_low = tl.load(dt_base + pixel * channels, mask=d_mask & valid,
                             other=0.0).to(tl.float32)
        else:
            dt_low = tl.load(p + r, mask=(r < R) & valid, other=0.0).to(tl.float32)
        Bv = tl.load(p + R + n, mask=(n < N) & valid, other=0.0).to(tl.float32)
        Cv = tl.load(p + R + N + n, mask=(n < N) & valid & (PASS != 1), other=0.0).to(tl.float32)
        return valid, pixel, xv, dt_low, Bv, Cv

    @triton.jit
    def _dt(valid, dt_low, dt_w, bias, DT_GIVEN: tl.constexpr = False):
        """Each channel's dt = softplus(dt_weight @ dt_low + bias) at a step (with DT_GIVEN,
        dt_low is the product already), and the argument of the softplus; dt is 0 past the end
        (decay 1, input 0: the state carries)."""
        raw = (dt_low if DT_GIVEN else tl.sum(dt_w * dt_low[:, None], axis=0)) + bias
        return raw, tl.where(valid, softplus(raw), 0.0)

    @triton.jit
    def _next_state(h, dt, xv, Bv, A2):
        """h_t = exp(dt A) h_{t-1} + dt x B (A2: A times log2 e)."""
        return tl.exp2(dt[None, :] * A2) * h + (dt * xv)[None, :] * Bv[:, None]

    @triton.jit
    def _advance(h, dt_total, valid, pixel, xv, dt_low, Bv, Cv, dt_w, bias, A2, Dv, y_base,
                 channels, d_mask, PASS: tl.constexpr, DT_GIVEN: tl.constexpr):
        """One step of the recurrence; adds its output to the pixel (except in pass 1)."""
        dt = _dt(valid, dt_low, dt_w, bias, DT_GIVEN)[1]
        h = _next_state(h, dt, xv, Bv, A2)
        if PASS == 1:
            dt_total += dt
        else:
            y = tl.sum(h * Cv[:, None], axis=0) + Dv * xv
            tl.atomic_add(y_base + pixel * channels, y, mask=d_mask & valid, sem="relaxed")
        return h, dt_total

    @triton.jit
    def _keep_checkpoint(h, step, checkpoints, channels, d_mask, N: tl.constexpr,
                         CHECKPOINT: tl.constexpr):
        """Stores the state before ``step`` for the backward pass, every CHECKPOINT steps."""
        # (two ifs: the outer one is decided at compile time, so no `step % 0` is built)
        if CHECKPOINT > 0:  # noqa: SIM102
            if step % CHECKPOINT == 0:
                tl.store(checkpoints + step // CHECKPOINT * N * channels, h,
                         mask=d_mask[None, :])

    # Tensors are (states, channels), channels along the threads: a step's output is one
    # coalesced row of channels.
    _CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w)
                for bd, w in [(16, 1), (32, 1), (64, 2), (64, 1), (128, 4), (128, 2)]]

    @autotune(configs=_CONFIGS, reset_to_zero=["y_ptr"],
              key=["channels", "length", "n_segments", "PASS", "CHECKPOINT", "DT_GIVEN"])
    # How deep the loop is pipelined: 3 for long walks, not at all below 1024 steps a program,
    # where filling the pipeline costs more than it hides (benchmarks/RESULTS.md, 2026-11-27
    # sixth session). A rule rather than a tuned choice: tuning both would double the first
    # run's tuning time.
    @triton.heuristics({"STAGES": lambda args: 3 if args["segment_length"] >= 1024 else 1})
    # `channels` is not specialized on its divisibility by 16: then no load along the channels
    # is vectorized, and the compiler lays each channel on one thread with all its N states
    # (tiles of 32 channels or more a warp). With vectorized loads it spread a channel's states
    # over up to 8 threads, each redoing the channel's dt and shuffling to sum y, for many more
    # instructions (benchmarks/RESULTS.md, 2026-11-27 fifth session).
    @triton.jit(do_not_specialize=["channels"])
    def _ss2d_fwd(
        x_ptr, proj_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, y_ptr, seg_state_ptr, seg_dt_ptr,
        checkpoint_ptr, dt_ptr, height, width, channels, length, segment_length, n_segments,
        R: tl.constexpr, RP: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
        PASS: tl.constexpr,  # 0: whole L, 1: segment end states, 2: segments from those
        STAGES: tl.constexpr,
        CHECKPOINT: tl.constexpr = 0,  # > 0 (PASS 0 only): keep the state every this many steps
        DT_GIVEN: tl.constexpr = False,  # dt_weight @ dt_low made beforehand: (4, B, L, D)
    ):
        n_blocks = tl.cdiv(channels, BLOCK_D)
        direction = tl.program_id(0) // n_blocks
        d = (tl.program_id(0) % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d < channels
        segment = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        n = tl.arange(0, N)
        r = tl.arange(0, RP)
        dt_w, bias, A, Dv = _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d,
                                                d_mask, r, n, channels, R, N)
        A2 = A * 1.4426950408889634  # exp(dt A) = exp2(dt A log2 e)

        # per (batch, direction, segment): end states (N, D) and summed dt (D,)
        seg = (b * 4 + direction) * n_segments  # 4 directions
        h = tl.zeros((N, BLOCK_D), dtype=tl.float32)
        if PASS == 2:
            for s in range(0, segment):
                dt_sum = tl.load(seg_dt_ptr + (seg + s) * channels + d, mask=d_mask, other=0.0)
                h_end = tl.load(seg_state_ptr + ((seg + s) * N + n[:, None]) * channels
                                + d[None, :], mask=d_mask[None, :], other=0.0)
                h = tl.exp2(dt_sum[None, :] * A2) * h + h_end
        dt_total = tl.zeros((BLOCK_D,), dtype=tl.float32)

        x_base = x_ptr + b * length * channels + d
        y_base = y_ptr + b * length * channels + d
        proj_base = proj_ptr + (b * length * 4 + direction) * (R + 2 * N)
        dt_base = dt_ptr + (direction * tl.num_programs(2) + b) * length * channels + d
        start = segment * segment_length
        stop = tl.minimum(start + segment_length, length)
        # Four steps per iteration, their loads issued together before any is used: a step's
        # inputs do not depend on the state, so the memory latency is paid once per four steps
        # instead of once per step (which bounded the one-step loop far below the bandwidth).
        # The last (stop - start) % 4 steps go one at a time, so no step needs a mask.
        # The loop is software-pipelined (STAGES deep): the loads of the next iterations are
        # asynchronous copies in flight while this one computes (without, the kernel mostly
        # waited on its loads; benchmarks/RESULTS.md, 2026-11-27 sixth session).
        at = (stop, x_base, proj_base, channels, d_mask, r, n)
        inner, count, stride, jump = walk(start, direction, height, width)
        pixel = pixel_at(start, direction, height, width, length)
        checkpoints = (b * 4 + direction) * tl.cdiv(length, CHECKPOINT) if CHECKPOINT else 0
        checkpoints = checkpoint_ptr + (checkpoints * N + n[:, None]) * channels + d[None, :]
        fours_stop = start + (stop - start) // 4 * 4
        for step in tl.range(start, fours_stop, 4, num_stages=STAGES):
            _keep_checkpoint(h, step, checkpoints, channels, d_mask, N, CHECKPOINT)
            i0 = _step_inputs(step, pixel, *at, R, N, PASS, False, DT_GIVEN, dt_base)
            pixel, inner = next_pixel(pixel, inner, count, stride, jump)
            i1 = _step_inputs(step + 1, pixel, *at, R, N, PASS, False, DT_GIVEN, dt_base)
            pixel, inner = next_pixel(pixel, inner, count, stride, jump)
            i2 = _step_inputs(step + 2, pixel, *at, R, N, PASS, False, DT_GIVEN, dt_base)
            pixel, inner = next_pixel(pixel, inner, count, stride, jump)
            i3 = _step_inputs(step + 3, pixel, *at, R, N, PASS, False, DT_GIVEN, dt_base)
            pixel, inner = next_pixel(pixel, inner, count, stride, jump)
            h, dt_total = _advance(h, dt_total, *i0, dt_w, bias, A2, Dv, y_base, channels, d_mask,
                                   PASS, DT_GIVEN)
            h, dt_total = _advance(h, dt_total, *i1, dt_w, bias, A2, Dv, y_base, channels, d_mask,
                                   PASS, DT_GIVEN)
            h, dt_total = _advance(h, dt_total, *i2, dt_w, bias, A2, Dv, y_base, channels, d_mask,
                                   PASS, DT_GIVEN)
            h, dt_total = _advance(h, dt_total, *i3, dt_w, bias, A2, Dv, y_base, channels, d_mask,
                                   PASS, DT_GIVEN)
        for step in range(fours_stop, stop):
            _keep_checkpoint(h, step, checkpoints, channels, d_mask, N, CHECKPOINT)
            i0 = _step_inputs(step, pixel, *at, R, N, PASS, False, DT_GIVEN, dt_base)
            pixel, inner = next_pixel(pixel, inner, count, stride, jump)
            h, dt_total = _advance(h, dt_total, *i0, dt_w, bias, A2, Dv, y_base, channels, d_mask,
                                   PASS, DT_GIVEN)
        if PASS == 1:
            tl.store(seg_dt_ptr + (seg + segment) * channels + d, dt_total, mask=d_mask)
            tl.store(seg_state_ptr + ((seg + segment) * N + n[:, None]) * channels + d[None, :],
                     h, mask=d_mask[None, :])

    @triton.jit
    def _backward_step_inputs(step, pixel, i, stop, x_base, proj_base, channels, d_mask, r, n,
                              dy_base, scratch, R: tl.constexpr, N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
        """What the backward walk reads at ``step`` (row ``i`` of the interval): the step's
        inputs, dy, and the state the interval's recomputation left in ``scratch``; zeros
        outside the sequence, where the one-step-ahead reads run past its ends."""
        valid, _, xv, dt_low, Bv, Cv = _step_inputs(step, pixel, stop, x_base, proj_base,
                                                    channels, d_mask, r, n, R, N, 0)
        dy = tl.load(dy_base + pixel * channels, mask=d_mask & valid, other=0.0)
        inside = (n >= 0)[:, None] & (i >= 0)  # i >= 0 over the whole (N, BLOCK_D) tile
        h = tl.load(scratch + i * N * BLOCK_D, mask=inside, other=0.0)
        return xv, dt_low, Bv, Cv, dy, h

    @triton.jit
    def _ss2d_bwd(
        x_ptr, proj_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, dy_ptr, checkpoint_ptr, scratch_ptr,
        dx_ptr, dproj_ptr, ddtw_ptr, dbias_ptr, dA_ptr, dD_ptr,
        height, width, channels, length,
        R: tl.constexpr, RP: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
        CHECKPOINT: tl.constexpr,
    ):
        """Gradients of the fused scan. A program owns (batch, direction, a block of channels),
        as in the forward pass, and walks its steps backwards one checkpoint interval at a
        time: the interval's states are recomputed from the checkpoint into a small scratch
        buffer (the program's own, cache-resident), then read back in reverse order while the
        state gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} is carried down.

        Both walks read a step's inputs one step ahead, before the current step is computed:
        the loads' latency then overlaps a step's arithmetic instead of stalling it (a program
        walks alone, one warp, with the other programs of its SM to hide latency behind).

        Sums over the channels (the gradients of the pixel's B, C and low-rank dt) and over the
        four directions (that of x) are added with atomics; those of the per-channel parameters
        are summed in registers over the whole walk and added once."""
        n_blocks = tl.cdiv(channels, BLOCK_D)
        direction = tl.program_id(0) // n_blocks
        block = tl.program_id(0) % n_blocks
        d_local = tl.arange(0, BLOCK_D)
        d = block * BLOCK_D + d_local
        d_mask = d < channels
        b = tl.program_id(1).to(tl.int64)
        n = tl.arange(0, N)
        r = tl.arange(0, RP)
        dt_w, bias, A, Dv = _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d,
                                                d_mask, r, n, channels, R, N)
        A2 = A * 1.4426950408889634
        w_mask = d_mask[None, :] & (r < R)[:, None]
        kd = direction * channels + d

        run = b * 4 + direction
        x_base = x_ptr + b * length * channels + d
        dy_base = dy_ptr + b * length * channels + d
        dx_base = dx_ptr + b * length * channels + d
        proj_base = proj_ptr + (b * length * 4 + direction) * (R + 2 * N)
        dproj_base = dproj_ptr + (b * length * 4 + direction) * (R + 2 * N)
        n_checkpoints = tl.cdiv(length, CHECKPOINT)
        scratch = (scratch_ptr + ((run * n_blocks + block) * CHECKPOINT * N + n[:, None]) * BLOCK_D
                   + d_local[None, :])
        at = (length, x_base, proj_base, channels, d_mask, r, n)

        g = tl.zeros((N, BLOCK_D), dtype=tl.float32)  # d loss / d h_t
        decay_next = tl.zeros((N, BLOCK_D), dtype=tl.float32)  # exp(dt_{t+1} A)
        dA_sum = tl.zeros((N, BLOCK_D), dtype=tl.float32)
        dw_sum = tl.zeros((RP, BLOCK_D), dtype=tl.float32)
        dbias_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dD_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for c in range(0, n_checkpoints):
            start = (n_checkpoints - 1 - c) * CHECKPOINT
            h = tl.load(checkpoint_ptr + ((run * n_checkpoints + start // CHECKPOINT) * N
                                          + n[:, None]) * channels + d[None, :],
                        mask=d_mask[None, :], other=0.0)
            inner, count, stride, jump = walk(start, direction, height, width)
            pixel = pixel_at(start, direction, height, width, length)
            _, _, xv, dt_low, Bv, _ = _step_inputs(start, pixel, *at, R, N, 1)
            for i in range(0, CHECKPOINT):
                pixel, inner = next_pixel(pixel, inner, count, stride, jump)
                _, _, next_x, next_dt_low, next_B, _ = _step_inputs(start + i + 1, pixel, *at,
                                                                    R, N, 1)
                dt = _dt(start + i < length, dt_low, dt_w, bias)[1]
                h = _next_state(h, dt, xv, Bv, A2)
                tl.store(scratch + i * N * BLOCK_D, h)
                xv, dt_low, Bv = next_x, next_dt_low, next_B
            tl.debug_barrier()  # the states are read back below
            pixel, inner = previous_pixel(pixel, inner, count, stride, jump)
            xv, dt_low, Bv, Cv, dy, h = _backward_step_inputs(
                start + CHECKPOINT - 1, pixel, CHECKPOINT - 1, *at, dy_base, scratch, R, N,
                BLOCK_D)
            for j in range(0, CHECKPOINT):
                i = CHECKPOINT - 1 - j
                here = pixel
                pixel, inner = previous_pixel(pixel, inner, count, stride, jump)
                next_x, next_dt_low, next_B, next_C, next_dy, next_h = _backward_step_inputs(
                    start + i - 1, pixel, i - 1, *at, dy_base, scratch, R, N, BLOCK_D)
                valid = start + i < length
                raw, dt = _dt(valid, dt_low, dt_w, bias)
                decay = tl.exp2(dt[None, :] * A2)
                g = Cv[:, None] * dy[None, :] + decay_next * g
                decayed_prev = h - (dt * xv)[None, :] * Bv[:, None]  # exp(dt_t A) h_{t-1}
                g_b = tl.sum(g * Bv[:, None], axis=0)
                dx = g_b * dt + Dv * dy
                ddt = tl.sum(g * A * decayed_prev, axis=0) + g_b * xv
                draw = tl.where(valid & d_mask, ddt * tl.sigmoid(raw), 0.0)
                at_pixel = dproj_base + here * (4 * (R + 2 * N))
                tl.atomic_add(dx_base + here * channels, dx, mask=d_mask & valid, sem="relaxed")
                tl.atomic_add(at_pixel + r, tl.sum(dt_w * draw[None, :], axis=1),
                              mask=(r < R) & valid, sem="relaxed")
                tl.atomic_add(at_pixel + R + n, tl.sum(g * (dt * xv)[None, :], axis=1),
                              mask=valid, sem="relaxed")
                tl.atomic_add(at_pixel + R + N + n, tl.sum(h * dy[None, :], axis=1),
                              mask=valid, sem="relaxed")
                dA_sum += g * decayed_prev * dt[None, :]
                dw_sum += dt_low[:, None] * draw[None, :]
                dbias_sum += draw
                dD_sum += dy * xv
                decay_next = decay
                xv, dt_low, Bv, Cv, dy, h = next_x, next_dt_low, next_B, next_C, next_dy, next_h
            tl.debug_barrier()  # the scratch is written again by the next interval
        tl.atomic_add(dA_ptr + (direction * N + n[:, None]) * channels + d[None, :], dA_sum,
                      mask=d_mask[None, :], sem="relaxed")
        tl.atomic_add(ddtw_ptr + (direction * R + r[:, None]) * channels + d[None, :], dw_sum,
                      mask=w_mask, sem="relaxed")
        tl.atomic_add(dbias_ptr + kd, dbias_sum, mask=d_mask, sem="relaxed")
        tl.atomic_add(dD_ptr + kd, dD_sum, mask=d_mask, sem="relaxed")


def segments(batch: int, channels: int, length: int) -> int:
    """How many segments the forward cuts L into (1: none) where it keeps no checkpoints."""
    rows = batch * N_DIRECTIONS * channels
    if rows >= _ROWS_TO_FILL_GPU:
        return 1
    wanted = -(-_SEGMENT_ROWS // rows)
    return max(1, min(wanted, _MAX_SEGMENTS, length // _MIN_SEGMENT))


# Where inference makes dt_weight @ dt_low for every pixel with one matrix product before the
# scan, instead of in the scan's registers (R values a step, four steps in flight: at R = 48
# the kernel spills). The product's (4, B, L, D) result costs bandwidth, so it pays only
# (benchmarks/RESULTS.md, 2026-11-27 fourteenth session): where L is cut into segments, whose
# two passes both make dt, from rank 12; otherwise in 16-bit under autocast from rank 24; never
# in float32.
_DT_PRODUCT_MIN_RANK = 12
_DT_PRODUCT_MIN_RANK_WHOLE = 24


def _takes_dt_product(rank: int, n_segments: int, checkpoint_every: int, device) -> bool:
    """Whether the Triton forward reads dt_weight @ dt_low from :func:`_dt_product` (inference
    only: the backward makes its own dt from the low-rank projection)."""
    if checkpoint_every or rank < _DT_PRODUCT_MIN_RANK:
        return False
    if n_segments > 1:
        return True
    return (rank >= _DT_PRODUCT_MIN_RANK_WHOLE and torch.is_autocast_enabled(device.type)
            and torch.get_autocast_dtype(device.type).itemsize == 2)


def _dt_product(proj, dt_weight_t):
    """dt_weight @ dt_low of every pixel and direction, (4, B, L, D): one batched product over
    the directions (in the autocast dtype under autocast, as the authors' einsum; float32
    without). ``dt_weight_t`` is (4, R, D) as :func:`_kernel_params` gives it."""
    batch, height, width, directions, _ = proj.shape
    rank = dt_weight_t.shape[1]
    low = proj.view(-1, directions, proj.shape[-1])[..., :rank].transpose(0, 1)
    return torch.bmm(low, dt_weight_t).view(directions, batch, height, width, -1)


def forward(x, proj, params, y, checkpoints, sizes, checkpoint_every):
    """The fused scan of float32 ``x`` and ``proj`` added into ``y`` (``params`` and ``sizes``
    as :mod:`.ss2d` prepares them); with ``checkpoint_every``, also the states every that many
    steps into ``checkpoints`` (then L is not cut in segments)."""
    batch, height, width, channels = x.shape
    n_state = sizes["N"]
    length = height * width
    n_segments = 1 if checkpoint_every else segments(batch, channels, length)
    segment_length = -(-length // n_segments)
    n_segments = -(-length // segment_length)
    seg_state = seg_dt = y
    if n_segments > 1:
        runs = batch * N_DIRECTIONS * n_segments
        seg_state = torch.empty(runs, n_state, channels, device=x.device, dtype=torch.float32)
        seg_dt = torch.empty(runs, channels, device=x.device, dtype=torch.float32)
    meta = dict(sizes)
    meta["DT_GIVEN"] = _takes_dt_product(meta["R"], n_segments, checkpoint_every, x.device)
    dt = _dt_product(proj, params[0]) if meta["DT_GIVEN"] else y  # (y: a placeholder, unread)
    args = (x, proj, *params, y, seg_state, seg_dt, checkpoints, dt, height, width, channels,
            length, segment_length, n_segments)

    def grid(m):
        return (N_DIRECTIONS * triton.cdiv(channels, m["BLOCK_D"]), n_segments, batch)

    if n_segments > 1:
        _ss2d_fwd[grid](*args, PASS=1, **meta)
    _ss2d_fwd[grid](*args, PASS=2 if n_segments > 1 else 0, CHECKPOINT=checkpoint_every,
                    **meta)


# The backward's warps and registers. Registers a thread may use: its one-step-ahead reads take
# it past 200, which leaves room for fewer one-warp programs an SM; held to 168 (which the
# compiler meets without spilling) 12 fit, and the reads ahead pay, where they did not unheld
# (benchmarks/RESULTS.md, 2026-11-27 eighth session).
_BWD_WARPS = 1
_BWD_MAX_REGISTERS = 168


def backward(x, proj, params, dy, checkpoints, dx, dproj, grads, sizes, block_d, checkpoint):
    """The backward kernel: the gradients added into ``dx``, ``dproj`` and ``grads`` (the
    parameters' in the kernels' layout), from the states kept every ``checkpoint`` steps;
    ``block_d`` channels a program."""
    batch, height, width, channels = x.shape
    n_blocks = triton.cdiv(channels, block_d)
    scratch = torch.empty(batch * N_DIRECTIONS * n_blocks, checkpoint, sizes["N"], block_d,
                          device=x.device, dtype=torch.float32)
    _ss2d_bwd[(N_DIRECTIONS * n_blocks, batch)](
        x, proj, *params, dy, checkpoints, scratch, dx, dproj, *grads,
        height, width, channels, height * width,
        BLOCK_D=block_d, CHECKPOINT=checkpoint, num_warps=_BWD_WARPS,
        maxnreg=_BWD_MAX_REGISTERS, **sizes)
