"""The fused SS2D scan's kernels written in Gluon, Triton's layout-explicit dialect: the
backward, and the forward where a program walks a long way.

The backward computes what :func:`.ss2d_triton._ss2d_bwd` computes, with the same
program decomposition (one warp per batch x direction x 16 channels, walking each checkpoint
interval forward to recompute its states, then back), and gets there in fewer instructions and
less time (benchmarks/RESULTS.md, 2026-11-27 eleventh and twelfth sessions) by choosing where
the data lies, which Triton decides by itself:

- the sums over a program's channels (the gradients of a pixel's B, C and low-rank dt) are
  transposed through shared memory so that each thread adds up one state's channels in its own
  registers. Triton sums them with butterflies of warp shuffles, a large share of the walk
  back's instructions;
- an interval's inputs (x, dy and the pixel projections of its 32 steps) are copied into shared
  memory with asynchronous copies when the interval starts, and both walks read them there:
  the loads' latency is paid once per interval instead of at every step, and the step's
  pixel is found by one division per lane instead of a walk per load;
- where the scratch buffers of the programs running at once would not stay in L2 (a 256²
  batch of 32), only the even steps' states are kept in them: the walk back makes each odd
  step's state from the state before it and the step's decay, which it computes anyway (8
  multiplications a thread). The scratch traffic halves; where the buffers fit L2 the extra
  multiplications lengthen each walk's dependent chain and cost more than they save.

The forward computes what :func:`.ss2d_triton._ss2d_fwd` computes over the
whole L (one channel a lane, 32 a program), with the same shared buffers: each interval's inputs
are copied in while the interval before it is scanned, and its outputs are kept there and added
to the image once at its end, four channels a 16-byte atomic addition (Triton adds float32 one
at a time). It runs where a program walks far (:data:`_FORWARD_MIN_LENGTH` steps); on shorter
walks the Triton kernel's pipelined loop is as fast or faster, and where L is cut into
segments the Triton kernel runs (benchmarks/RESULTS.md, 2026-11-27 thirteenth session).

Gluon is experimental in Triton: :func:`usable` admits only the Triton releases these kernels
were tested on, and :mod:`.ss2d` falls back to the Triton kernels if one fails to build.
"""

from __future__ import annotations

import re
import warnings

import torch

try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
except Exception:  # no Triton, or one without Gluon: the Triton kernel is used
    gluon = None

# The Triton releases (major, minor) this kernel was tested on. Gluon's API changes between
# releases, and a build that fails may abort inside the compiler rather than raise, so other
# releases run the Triton kernel: add one here once `pytest -m gpu tests/test_scan.py` passes
# with it on a GPU.
_TESTED_TRITON = {(3, 6)}
# Checkpoint intervals of 32 steps (the forward keeps a state every 32) are what the shared
# buffers are laid out for; ranks above 32 (config B's last stage: 48) would hold the low-rank
# weights in 32+ registers a thread and spill, so they take the Triton kernel.
_MAX_RANK = 32
_MAX_STATES = 16
# Register cap: 12 one-warp programs an SM (fewer programs an SM was slower).
_MAX_REGISTERS = 168
_PROGRAMS_PER_SM = 65536 // (_MAX_REGISTERS * 32)  # an SM's registers / a one-warp program's

# Keep only the even steps' states where the scratch of the programs running at once, with
# every state kept, is more than this share of L2: where it pays and where it costs is
# measured in benchmarks/RESULTS.md, 2026-11-27 twelfth session.
_EVEN_STATES_L2_SHARE = 1 / 3

# The forward runs here where a program walks at least this many steps: faster than the
# Triton forward there, not on shorter walks (benchmarks/RESULTS.md, 2026-11-27 thirteenth
# session).
_FORWARD_MIN_LENGTH = 4096
_FORWARD_BLOCK_D = 32  # one channel a lane (two lanes a channel were no faster)
_INTERVAL = 32  # steps whose inputs the forward copies at once (64 were slower)

_failure: str | None = None  # why a kernel could not be built, once one failed


def _tested_release() -> bool:
    release = re.match(r"(\d+)\.(\d+)", triton.__version__)
    return release is not None and tuple(map(int, release.groups())) in _TESTED_TRITON


_TESTED = gluon is not None and _tested_release()  # decided once, not at every backward


def usable(rank: int, n_state: int, checkpoint: int, device: torch.device) -> bool:
    """Whether the Gluon kernels compute the scan for these sizes on ``device``."""
    if not _TESTED or _failure is not None or device.type != "cuda":
        return False
    return (checkpoint == 32 and rank <= _MAX_RANK and n_state <= _MAX_STATES
            and torch.cuda.get_device_capability(device)[0] >= 8)  # asynchronous copies


def runs_forward(length: int, rank: int, n_state: int, checkpoint: int,
                 device: torch.device) -> bool:
    """Whether the Gluon forward scans an unsegmented L of ``length`` (keeping the state every
    ``checkpoint`` steps, or none with 0) faster than the Triton one."""
    return (length >= _FORWARD_MIN_LENGTH and checkpoint in (0, _INTERVAL)
            and usable(rank, n_state, _INTERVAL, device))


def keeps_even_states_only(programs: int, scratch_bytes: int, processors: int,
                           l2_bytes: int) -> bool:
    """Whether the backward keeps only the even steps' states in its scratch buffers:
    ``programs`` of ``scratch_bytes`` each (every state kept), on ``processors`` SMs."""
    running = min(programs, _PROGRAMS_PER_SM * processors)
    return running * scratch_bytes > _EVEN_STATES_L2_SHARE * l2_bytes


def launched(launch, *args) -> bool:
    """Runs a kernel's launcher (:func:`forward`, :func:`backward`); False if the kernel
    cannot be built, and then, saying why once, no Gluon kernel is used for the rest of the
    session. Gluon is experimental: a Triton release may break it. A kernel fails while it
    compiles, before anything is written to its outputs, so the Triton one can take over."""
    global _failure
    try:
        launch(*args)
    except Exception as error:
        _failure = f"{type(error).__name__}: {error}"
        warnings.warn("A Gluon kernel of the triton scan could not be built; the Triton ones "
                      f"are used instead, at some cost in speed ({_failure})", RuntimeWarning,
                      stacklevel=3)
        return False
    return True


if gluon is not None:
    from . import jit_helpers

    # the helpers the Triton kernels call, compiled as Gluon: the same pixel walk and softplus
    _softplus = gluon.jit(jit_helpers.softplus.fn)
    _pixel = gluon.jit(jit_helpers.pixel_at.fn)
    _walk = gluon.jit(jit_helpers.walk.fn)
    _previous_pixel = gluon.jit(jit_helpers.previous_pixel.fn)

    @gluon.constexpr_function
    def _per_channel(rows, channels):
        """(rows, channels) over one warp, the channels along the lanes and a channel's rows
        (states, or low-rank dt weights) split over the lanes left, in registers."""
        lanes_rows = 32 // channels
        return gl.BlockedLayout([max(rows // lanes_rows, 1), 1], [lanes_rows, channels],
                                [1, 1], [1, 0])

    @gluon.constexpr_function
    def _transposed(rows, columns):
        """A (rows, columns) layout of one warp that keeps a row's columns in as few threads
        as it can: what a sum over the columns wants."""
        lanes_rows = min(rows, 32)
        lanes_columns = 32 // lanes_rows
        return gl.BlockedLayout([rows // lanes_rows, max(columns // lanes_columns, 1)],
                                [lanes_rows, lanes_columns], [1, 1], [1, 0])

    @gluon.constexpr_function
    def _copy_layout(columns):
        """(steps, columns) over one warp, a step's columns along the lanes: the copies."""
        lanes = min(columns, 32)
        return gl.BlockedLayout([1, columns // lanes], [32 // lanes, lanes], [1, 1], [1, 0])

    @gluon.constexpr_function
    def _rows(shape):
        """The rows of a (steps, columns) or (buffers, steps, columns) shape."""
        return shape[0] * shape[1] if len(shape) == 3 else shape[0]

    @gluon.jit
    def _by_step(buffer):
        """A (steps, columns) shared buffer, or (2, steps, columns) double buffer, seen as
        (rows, 1, columns): indexing it by a row that is only known at run time gives a
        (1, columns) tile. (``_reinterpret`` is not public Gluon: should a release change it,
        the build fails and the Triton kernel runs.)"""
        return buffer._reinterpret(buffer.dtype, [_rows(buffer.shape), 1, buffer.shape[-1]],
                                   buffer.layout)

    @gluon.jit
    def _channels_at(buffer, step, layout: gl.constexpr):
        """A step's row of a _by_step buffer, laid out as ``layout``'s channels (dim 1); the
        sum over the one-row axis only drops it (no instruction)."""
        return gl.sum(buffer.index(step).load(layout), axis=0)

    @gluon.jit
    def _states_at(buffer, step, layout: gl.constexpr):
        """A step's row of a _by_step buffer, laid out as ``layout``'s states (dim 0)."""
        return gl.sum(buffer.index(step).permute([1, 0]).load(layout), axis=1)

    @gluon.jit
    def _copy_interval(buffer, base, pixel, stride, count, layout: gl.constexpr):
        """Starts copying ``count`` values at base + pixel * stride (the pixels of one lane
        per step, -1 past the end) for each step of an interval into ``buffer``; the rest of
        its row is filled with zeros."""
        at = gl.convert_layout(pixel, gl.SliceLayout(1, layout))[:, None]
        column = gl.arange(0, buffer.shape[1], layout=gl.SliceLayout(0, layout))[None, :]
        async_copy.async_copy_global_to_shared(buffer, base + at * stride + column,
                                               (at >= 0) & (column < count))

    @gluon.jit
    def _pixels_of(start, length, direction, height, width, STEPS: gl.constexpr):
        """The pixel each step of the interval from ``start`` reads, a step a lane (-1 past
        the end)."""
        ONE: gl.constexpr = gl.BlockedLayout([STEPS // 32], [32], [1], [0])
        steps = start + gl.arange(0, STEPS, layout=ONE)
        return gl.where(steps < length, _pixel(steps, direction, height, width, length), -1)

    @gluon.jit
    def _copy_inputs(pixel_of, xs, dts, Bs, Cs, x_base, proj_base, channels, left, row,
                     R: gl.constexpr, N: gl.constexpr):
        """Starts copying an interval's x, low-rank dt, B and C (``row`` values a direction's
        pixel projection) into shared buffers (steps, columns)."""
        _copy_interval(xs, x_base, pixel_of, channels, left, _copy_layout(xs.shape[1]))
        _copy_interval(dts, proj_base, pixel_of, 4 * row, R, _copy_layout(dts.shape[1]))
        _copy_interval(Bs, proj_base + R, pixel_of, 4 * row, N, _copy_layout(N))
        _copy_interval(Cs, proj_base + R + N, pixel_of, 4 * row, N, _copy_layout(N))

    @gluon.jit
    def _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d, d_r, n, r, channels,
                            R: gl.constexpr, N: gl.constexpr):
        """A program's channels' A (N, BLOCK_D), D, dt_bias and dt_weight (RP, BLOCK_D), stored
        as the Triton kernels read them; ``d_r`` are the channels laid out as dt_weight's."""
        d_mask = d < channels
        kd = direction * channels + d
        A = gl.load(A_ptr + (direction * N + n[:, None]) * channels + d[None, :],
                    mask=d_mask[None, :], other=0.0)
        Dv = gl.load(D_ptr + kd, mask=d_mask, other=0.0)
        bias = gl.load(bias_ptr + kd, mask=d_mask, other=0.0)
        dt_w = gl.load(dtw_ptr + (direction * R + r[:, None]) * channels + d_r[None, :],
                       mask=(d_r < channels)[None, :] & (r < R)[:, None], other=0.0)
        return A, Dv, bias, dt_w

    @gluon.jit
    def _add_interval(ys, y_base, pixel_of, channels, left, VECTOR: gl.constexpr):
        """Adds an interval's outputs, a (steps, BLOCK_D) shared buffer, to the pixels they
        belong to, four channels a thread: one 16-byte atomic addition with VECTOR (sm_90 and
        channels a multiple of 4), else four of 4 bytes (all Triton's atomics do)."""
        BLOCK_D: gl.constexpr = ys.shape[1]
        FOURS: gl.constexpr = gl.BlockedLayout([1, 4], [128 // BLOCK_D, BLOCK_D // 4], [1, 1],
                                               [1, 0])
        values = ys.load(FOURS)
        at = gl.convert_layout(pixel_of, gl.SliceLayout(1, FOURS))[:, None]
        column = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, FOURS))[None, :]
        pointers = y_base + at * channels + column
        inside = (at >= 0) & (column < left)
        if VECTOR:  # a thread's four values are one pack; they are inside or outside together
            gl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $12, 0; "
                "@p red.relaxed.gpu.global.add.v4.f32 [$4], {$8, $9, $10, $11}; "
                "mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0; }",
                "=r,=r,=r,=r,l,l,l,l,r,r,r,r,r,r,r,r",
                [pointers.to(gl.int64), values.to(gl.int32, bitcast=True), inside.to(gl.int32)],
                dtype=gl.int32, is_pure=False, pack=4)
        else:
            gl.atomic_add(pointers, values, mask=inside, sem="relaxed")

    @gluon.jit
    def _state_after(h, i, step, length, x_at, dt_at, B_at, dt_w, bias, A2,
                     RP: gl.constexpr, N: gl.constexpr, BLOCK_D: gl.constexpr):
        """The state after ``step`` (its inputs at row ``i`` of the shared buffers) from the
        state before it (dt is 0 past the sequence's end: the state carries)."""
        L: gl.constexpr = _per_channel(N, BLOCK_D)
        LR: gl.constexpr = _per_channel(RP, BLOCK_D)
        CH: gl.constexpr = gl.SliceLayout(0, L)
        xv = _channels_at(x_at, i, L)
        dt_low = _states_at(dt_at, i, LR)
        Bv = _states_at(B_at, i, L)
        raw = gl.convert_layout(gl.sum(dt_w * dt_low[:, None], axis=0), CH) + bias
        dt = gl.where(step < length, _softplus(raw), 0.0)
        return gl.exp2(dt[None, :] * A2) * h + (dt * xv)[None, :] * Bv[:, None]

    @gluon.jit
    def _ss2d_fwd(
        x_ptr, proj_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, y_ptr, checkpoint_ptr,
        height, width, channels, length,
        R: gl.constexpr, RP: gl.constexpr, N: gl.constexpr, BLOCK_D: gl.constexpr,
        INTERVAL: gl.constexpr,
        CHECKPOINTS: gl.constexpr,  # keep the state before each interval for the backward
        VECTOR: gl.constexpr,  # 16-byte atomic additions (see _add_interval)
    ):
        """The fused scan over the whole L; arguments as the Triton kernel's (PASS 0, with
        checkpoints every INTERVAL steps). A program owns (batch, direction, BLOCK_D channels),
        a channel a lane with all its states."""
        L: gl.constexpr = _per_channel(N, BLOCK_D)  # the states
        LR: gl.constexpr = _per_channel(RP, BLOCK_D)  # the low-rank dt weights
        CH: gl.constexpr = gl.SliceLayout(0, L)
        ROWS: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])

        n_blocks = gl.cdiv(channels, BLOCK_D)
        direction = gl.program_id(0) // n_blocks
        block = gl.program_id(0) % n_blocks
        d = block * BLOCK_D + gl.arange(0, BLOCK_D, layout=CH)
        d_r = block * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, LR))
        b = gl.program_id(1).to(gl.int64)
        n = gl.arange(0, N, layout=gl.SliceLayout(1, L))
        r = gl.arange(0, RP, layout=gl.SliceLayout(1, LR))
        A, Dv, bias, dt_w = _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d,
                                                d_r, n, r, channels, R, N)
        A2 = A * 1.4426950408889634

        row = R + 2 * N  # a direction's projection of a pixel: dt (R), B (N), C (N)
        x_base = x_ptr + b * length * channels + block * BLOCK_D
        y_base = y_ptr + b * length * channels + block * BLOCK_D
        proj_base = proj_ptr + (b * length * 4 + direction) * row
        left = channels - block * BLOCK_D  # channels of this block that exist
        n_intervals = gl.cdiv(length, INTERVAL)
        checkpoints = (checkpoint_ptr + ((b * 4 + direction) * n_intervals * N + n[:, None])
                       * channels + d[None, :])

        # two buffers of each input: an interval's are copied while the one before is scanned
        xs = gl.allocate_shared_memory(gl.float32, [2, INTERVAL, BLOCK_D], ROWS)
        dts = gl.allocate_shared_memory(gl.float32, [2, INTERVAL, RP], ROWS)
        Bs = gl.allocate_shared_memory(gl.float32, [2, INTERVAL, N], ROWS)
        Cs = gl.allocate_shared_memory(gl.float32, [2, INTERVAL, N], ROWS)
        ys = gl.allocate_shared_memory(gl.float32, [INTERVAL, BLOCK_D], ROWS)
        x_at, dt_at, B_at = _by_step(xs), _by_step(dts), _by_step(Bs)
        C_at, y_at = _by_step(Cs), _by_step(ys)
        copy = (x_base, proj_base, channels, left, row)

        pixel_of = _pixels_of(0, length, direction, height, width, INTERVAL)
        _copy_inputs(pixel_of, xs.index(0), dts.index(0), Bs.index(0), Cs.index(0), *copy, R, N)
        async_copy.commit_group()
        h = gl.zeros((N, BLOCK_D), gl.float32, L)
        for c in range(0, n_intervals):
            start = c * INTERVAL
            pixel_next = _pixels_of(start + INTERVAL, length, direction, height, width, INTERVAL)
            other = (c + 1) % 2
            _copy_inputs(pixel_next, xs.index(other), dts.index(other), Bs.index(other),
                         Cs.index(other), *copy, R, N)
            async_copy.commit_group()
            if CHECKPOINTS:
                gl.store(checkpoints + c * N * channels, h, mask=(d < channels)[None, :])
            async_copy.wait_group(1)  # this interval's copies (not the next one's) have landed
            gl.thread_barrier()

            first = (c % 2) * INTERVAL  # the interval's first row in the buffers
            # two steps an iteration, so that one step's dt and decays are worked out while the
            # step before it still sums its output (0.96 of the time of one step an iteration)
            for pair in range(0, INTERVAL, 2):
                for k in gl.static_range(2):
                    i = pair + k
                    h = _state_after(h, first + i, start + i, length, x_at, dt_at, B_at, dt_w,
                                     bias, A2, RP, N, BLOCK_D)
                    Cv = _states_at(C_at, first + i, L)
                    y = gl.sum(h * Cv[:, None], axis=0) + Dv * _channels_at(x_at, first + i, L)
                    y_at.index(i).store(y[None, :])
            gl.thread_barrier()  # every lane's outputs are in ys
            _add_interval(ys, y_base, pixel_of, channels, left, VECTOR)
            pixel_of = pixel_next
            gl.thread_barrier()  # ys and this interval's buffers are written again
        async_copy.wait_group(0)  # the copies started past the end (they copy nothing)

    @gluon.jit
    def _step_back(i, h_known, ODD: gl.constexpr, g, decay_next, dA_sum, dw_sum, dbias_sum,
                   dD_sum, pixel, inner, walk, inputs, program, R: gl.constexpr,
                   RP: gl.constexpr, N: gl.constexpr, BLOCK_D: gl.constexpr):
        """One step of the walk back, at row ``i`` of the interval: adds the step's gradients
        and carries g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} down. ``h_known`` is the step's
        state, or with ODD the state before it (the step's own is made here from it).
        ``walk``, ``inputs`` and ``program`` are what stays the same along the walk (see
        :func:`_ss2d_bwd`)."""
        L: gl.constexpr = _per_channel(N, BLOCK_D)
        LR: gl.constexpr = _per_channel(RP, BLOCK_D)
        CH: gl.constexpr = gl.SliceLayout(0, L)
        CHR: gl.constexpr = gl.SliceLayout(0, LR)
        count, stride, jump = walk
        x_at, dy_at, dt_at, B_at, C_at = inputs
        dt_w, bias, A, A2, Dv, d_mask, dx_base, dproj_base, channels, row, r_sum, n_sum = program
        xv = _channels_at(x_at, i, L)
        dy = _channels_at(dy_at, i, L)
        dt_low = _states_at(dt_at, i, LR)
        Bv = _states_at(B_at, i, L)
        Cv = _states_at(C_at, i, L)
        raw = gl.convert_layout(gl.sum(dt_w * dt_low[:, None], axis=0), CH) + bias
        dt = _softplus(raw)
        decay = gl.exp2(dt[None, :] * A2)
        g = Cv[:, None] * dy[None, :] + decay_next * g
        u = dt * xv
        if ODD:
            decayed_prev = decay * h_known  # exp(dt_t A) h_{t-1}
            h = decayed_prev + u[None, :] * Bv[:, None]
        else:
            h = h_known
            decayed_prev = h - u[None, :] * Bv[:, None]
        g_b = gl.sum(g * Bv[:, None], axis=0)
        gp = g * decayed_prev
        ddt = gl.sum(gp * A, axis=0) + g_b * xv
        sigmoid = gl.fdiv(1.0, 1.0 + gl.exp2(raw * -1.4426950408889634))
        draw = gl.where(d_mask, ddt * sigmoid, 0.0)
        draw_r = gl.convert_layout(draw, CHR)
        gl.atomic_add(dx_base + pixel * channels, g_b * dt + Dv * dy, mask=d_mask,
                      sem="relaxed")
        # sums over the channels, each in a layout that keeps a row in one thread
        at_pixel = dproj_base + pixel * (4 * row)
        dt_grad = gl.sum(gl.convert_layout(dt_w * draw_r[None, :], _transposed(RP, BLOCK_D)),
                         axis=1)
        gl.atomic_add(at_pixel + r_sum, dt_grad, mask=r_sum < R, sem="relaxed")
        B_grad = gl.sum(gl.convert_layout(g * u[None, :], _transposed(N, BLOCK_D)), axis=1)
        gl.atomic_add(at_pixel + R + n_sum, B_grad, mask=n_sum < N, sem="relaxed")
        C_grad = gl.sum(gl.convert_layout(h * dy[None, :], _transposed(N, BLOCK_D)), axis=1)
        gl.atomic_add(at_pixel + R + N + n_sum, C_grad, mask=n_sum < N, sem="relaxed")
        dA_sum += gp * dt[None, :]
        dw_sum += dt_low[:, None] * draw_r[None, :]
        dbias_sum += draw
        dD_sum += dy * xv
        pixel, inner = _previous_pixel(pixel, inner, count, stride, jump)
        return g, decay, dA_sum, dw_sum, dbias_sum, dD_sum, pixel, inner

    @gluon.jit
    def _ss2d_bwd(
        x_ptr, proj_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, dy_ptr, checkpoint_ptr, scratch_ptr,
        dx_ptr, dproj_ptr, ddtw_ptr, dbias_ptr, dA_ptr, dD_ptr,
        height, width, channels, length,
        R: gl.constexpr, RP: gl.constexpr, N: gl.constexpr, BLOCK_D: gl.constexpr,
        CHECKPOINT: gl.constexpr,
        EVEN_STATES: gl.constexpr,  # keep only the even steps' states (see the module's doc)
    ):
        """Gradients of the fused scan; arguments as the Triton kernel's, except that a
        program's scratch is (CHECKPOINT, BLOCK_D, N), or (CHECKPOINT / 2, ...) with
        EVEN_STATES: a thread's states are contiguous."""
        L: gl.constexpr = _per_channel(N, BLOCK_D)  # the states
        LR: gl.constexpr = _per_channel(RP, BLOCK_D)  # the low-rank dt weights
        CH: gl.constexpr = gl.SliceLayout(0, L)
        CHR: gl.constexpr = gl.SliceLayout(0, LR)
        ROWS: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])

        n_blocks = gl.cdiv(channels, BLOCK_D)
        direction = gl.program_id(0) // n_blocks
        block = gl.program_id(0) % n_blocks
        d_local = gl.arange(0, BLOCK_D, layout=CH)
        d = block * BLOCK_D + d_local
        d_mask = d < channels
        d_r = block * BLOCK_D + gl.arange(0, BLOCK_D, layout=CHR)
        b = gl.program_id(1).to(gl.int64)
        n = gl.arange(0, N, layout=gl.SliceLayout(1, L))
        r = gl.arange(0, RP, layout=gl.SliceLayout(1, LR))
        n_sum = gl.arange(0, N, layout=gl.SliceLayout(1, _transposed(N, BLOCK_D)))
        r_sum = gl.arange(0, RP, layout=gl.SliceLayout(1, _transposed(RP, BLOCK_D)))

        kd = direction * channels + d
        A, Dv, bias, dt_w = _channel_parameters(dtw_ptr, bias_ptr, A_ptr, D_ptr, direction, d,
                                                d_r, n, r, channels, R, N)
        A2 = A * 1.4426950408889634
        w_mask = (d_r < channels)[None, :] & (r < R)[:, None]

        run = b * 4 + direction
        row = R + 2 * N  # a direction's projection of a pixel: dt (R), B (N), C (N)
        x_base = x_ptr + b * length * channels + block * BLOCK_D
        dy_base = dy_ptr + b * length * channels + block * BLOCK_D
        dx_base = dx_ptr + b * length * channels + d
        proj_base = proj_ptr + (b * length * 4 + direction) * row
        dproj_base = dproj_ptr + (b * length * 4 + direction) * row
        n_checkpoints = gl.cdiv(length, CHECKPOINT)
        kept = CHECKPOINT // 2 if EVEN_STATES else CHECKPOINT  # states a program keeps
        scratch = (scratch_ptr + (run * n_blocks + block) * kept * N * BLOCK_D
                   + d_local[None, :] * N + n[:, None])
        left = channels - block * BLOCK_D  # channels of this block that exist

        xs = gl.allocate_shared_memory(gl.float32, [CHECKPOINT, BLOCK_D], ROWS)
        dys = gl.allocate_shared_memory(gl.float32, [CHECKPOINT, BLOCK_D], ROWS)
        dts = gl.allocate_shared_memory(gl.float32, [CHECKPOINT, RP], ROWS)
        Bs = gl.allocate_shared_memory(gl.float32, [CHECKPOINT, N], ROWS)
        Cs = gl.allocate_shared_memory(gl.float32, [CHECKPOINT, N], ROWS)
        x_at, dy_at, dt_at = _by_step(xs), _by_step(dys), _by_step(dts)
        B_at, C_at = _by_step(Bs), _by_step(Cs)
        # what every step of the walk back reads and where it adds its gradients
        inputs = (x_at, dy_at, dt_at, B_at, C_at)
        program = (dt_w, bias, A, A2, Dv, d_mask, dx_base, dproj_base, channels, row, r_sum,
                   n_sum)

        g = gl.zeros((N, BLOCK_D), gl.float32, L)  # d loss / d h_t
        decay_next = gl.zeros((N, BLOCK_D), gl.float32, L)  # exp(dt_{t+1} A)
        dA_sum = gl.zeros((N, BLOCK_D), gl.float32, L)
        dw_sum = gl.zeros((RP, BLOCK_D), gl.float32, LR)
        dbias_sum = gl.zeros((BLOCK_D,), gl.float32, CH)
        dD_sum = gl.zeros((BLOCK_D,), gl.float32, CH)
        for c in range(0, n_checkpoints):
            start = (n_checkpoints - 1 - c) * CHECKPOINT
            # the interval's inputs into shared memory; the previous interval's walk back has
            # finished reading them (the barrier at the end of the loop)
            pixel_of = _pixels_of(start, length, direction, height, width, CHECKPOINT)
            _copy_inputs(pixel_of, xs, dts, Bs, Cs, x_base, proj_base, channels, left, row, R, N)
            _copy_interval(dys, dy_base, pixel_of, channels, left, _copy_layout(BLOCK_D))
            async_copy.commit_group()
            h = gl.load(checkpoint_ptr + ((run * n_checkpoints + start // CHECKPOINT) * N
                                          + n[:, None]) * channels + d[None, :],
                        mask=d_mask[None, :], other=0.0)
            async_copy.wait_group(0)
            gl.thread_barrier()  # every lane's copies have landed

            # forward through the interval, keeping each state (or each even step's) in the
            # scratch buffer
            if EVEN_STATES:
                for p in range(0, CHECKPOINT // 2):
                    h = _state_after(h, 2 * p, start + 2 * p, length, x_at, dt_at, B_at, dt_w,
                                     bias, A2, RP, N, BLOCK_D)
                    gl.store(scratch + p * N * BLOCK_D, h)
                    h = _state_after(h, 2 * p + 1, start + 2 * p + 1, length, x_at, dt_at, B_at,
                                     dt_w, bias, A2, RP, N, BLOCK_D)
            else:
                for i in range(0, CHECKPOINT):
                    h = _state_after(h, i, start + i, length, x_at, dt_at, B_at, dt_w, bias,
                                     A2, RP, N, BLOCK_D)
                    gl.store(scratch + i * N * BLOCK_D, h)
            gl.thread_barrier()  # the states are read back below

            # and back from the interval's last step inside the image; the states are read
            # ahead (a step, or with EVEN_STATES a pair of steps), their latency behind the
            # arithmetic
            steps_here = gl.minimum(length - start, CHECKPOINT)
            last = steps_here - 1
            pixel = _pixel(start + last, direction, height, width, length)
            inner, count, stride, jump = _walk(start + last, direction, height, width)
            walk = (count, stride, jump)
            if EVEN_STATES:
                pairs = (steps_here + 1) // 2
                h = gl.load(scratch + (pairs - 1) * N * BLOCK_D)  # the last pair's even state
                for q in range(0, pairs):
                    p = pairs - 1 - q
                    h_before = gl.load(scratch + (p - 1) * N * BLOCK_D,
                                       mask=(n >= 0)[:, None] & (p > 0), other=0.0)
                    if 2 * p + 1 <= last:  # the odd step, from the even one before it
                        g, decay_next, dA_sum, dw_sum, dbias_sum, dD_sum, pixel, inner = \
                            _step_back(2 * p + 1, h, True, g, decay_next, dA_sum, dw_sum,
                                       dbias_sum, dD_sum, pixel, inner, walk, inputs, program,
                                       R, RP, N, BLOCK_D)
                    g, decay_next, dA_sum, dw_sum, dbias_sum, dD_sum, pixel, inner = _step_back(
                        2 * p, h, False, g, decay_next, dA_sum, dw_sum, dbias_sum, dD_sum, pixel,
                        inner, walk, inputs, program, R, RP, N, BLOCK_D)
                    h = h_before
            else:
                h = gl.load(scratch + last * N * BLOCK_D)
                for j in range(0, steps_here):
                    i = last - j
                    h_before = gl.load(scratch + (i - 1) * N * BLOCK_D,
                                       mask=(n >= 0)[:, None] & (i > 0), other=0.0)
                    g, decay_next, dA_sum, dw_sum, dbias_sum, dD_sum, pixel, inner = _step_back(
                        i, h, False, g, decay_next, dA_sum, dw_sum, dbias_sum, dD_sum, pixel,
                        inner, walk, inputs, program, R, RP, N, BLOCK_D)
                    h = h_before
            gl.thread_barrier()  # the shared buffers and the scratch are written again
        gl.atomic_add(dA_ptr + (direction * N + n[:, None]) * channels + d[None, :], dA_sum,
                      mask=d_mask[None, :], sem="relaxed")
        gl.atomic_add(ddtw_ptr + (direction * R + r[:, None]) * channels + d_r[None, :],
                      dw_sum, mask=w_mask, sem="relaxed")
        gl.atomic_add(dbias_ptr + kd, dbias_sum, mask=d_mask, sem="relaxed")
        gl.atomic_add(dD_ptr + kd, dD_sum, mask=d_mask, sem="relaxed")


def backward(x, proj, params, dy, checkpoints, dx, dproj, grads, sizes, block_d, checkpoint):
    """Launches the kernel (arguments as :class:`.ss2d._FusedSS2D` prepares them for
    its own kernel, which also takes a scratch buffer: this one makes its own, of the size it
    needs)."""
    batch, height, width, channels = x.shape
    n_blocks = triton.cdiv(channels, block_d)
    programs = 4 * n_blocks * batch
    # the asynchronous copies move 4 bytes a value at least: bf16 and fp16 inputs are made
    # float32 first (one cheap pass over each)
    x, proj = x.float(), proj.float()
    gpu = torch.cuda.get_device_properties(x.device)
    state_bytes = sizes["N"] * block_d * 4  # a program's states of one step, float32
    even_states = keeps_even_states_only(programs, checkpoint * state_bytes,
                                         gpu.multi_processor_count, gpu.L2_cache_size)
    kept = checkpoint // 2 if even_states else checkpoint
    scratch = torch.empty(programs, kept, sizes["N"], block_d, device=x.device,
                          dtype=torch.float32)
    _ss2d_bwd[(4 * n_blocks, batch)](
        x, proj, *params, dy, checkpoints, scratch, dx, dproj, *grads,
        height, width, channels, height * width,
        BLOCK_D=block_d, CHECKPOINT=checkpoint, EVEN_STATES=even_states, num_warps=1,
        maxnreg=_MAX_REGISTERS, **sizes)


def forward(x, proj, params, y, checkpoints, sizes, checkpoint):
    """Launches the forward kernel over the whole L, keeping the state every ``checkpoint``
    steps (0: none) in ``checkpoints``; arguments as :func:`.ss2d._forward` prepares
    them for its own kernel (x and proj float32, y zeroed)."""
    batch, height, width, channels = x.shape
    n_blocks = triton.cdiv(channels, _FORWARD_BLOCK_D)
    vector = channels % 4 == 0 and torch.cuda.get_device_capability(x.device)[0] >= 9
    _ss2d_fwd[(4 * n_blocks, batch)](
        x, proj, *params, y, checkpoints, height, width, channels, height * width,
        BLOCK_D=_FORWARD_BLOCK_D, INTERVAL=_INTERVAL, CHECKPOINTS=checkpoint > 0,
        VECTOR=vector, num_warps=1, **sizes)
