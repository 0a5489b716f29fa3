"""The selective scan as Triton kernels: NVIDIA GPUs without compiling anything at install time.

Semantics are mamba's ``selective_scan_fn`` as VM-UNet calls it (no ``z``, no last state):
for each batch b and channel d, with dt = softplus(delta + delta_bias) when asked,

    h_l = exp(dt_l * A[d]) * h_{l-1} + dt_l * B_l * u_l        (N states, fp32)
    y_l = <C_l, h_l> + D[d] * u_l

B and C are shared by the channels of a group ((batch, G, N, L), or (batch, N, L) for one).

Layout of the work: one program owns (batch, a block of channels of one group) and walks along
L in chunks; inside a chunk the recurrence is a parallel ``tl.associative_scan`` over the
(decay, input) pairs, the state carried between chunks stays in registers. Inputs are read in
their own dtype (fp32, bf16, fp16) and converted in registers; the state and all sums are fp32.

The backward pass walks the chunks in reverse, recomputes each chunk's states from the state
the forward pass saved at its start (one (N,) vector per chunk: L/chunk times smaller than the
states themselves), and runs the reverse recurrence of the state gradient
g_l = C_l dy_l + exp(dt_{l+1} A) g_{l+1} as a reverse associative scan. It needs no division
by the decay (which underflows): the terms that would use h_{l-1} use exp(dt_l A) h_{l-1} =
h_l - dt_l B_l u_l instead. Gradients of B and C are sums over the channels of a group, made
with fp32 atomics; those of A, D and delta_bias are summed per program and added once.
"""

from __future__ import annotations

import os

import torch

from ..autotune import autotune
from .jit_helpers import softplus

try:
    import triton
    import triton.language as tl
except Exception:  # not installed, too old, or broken: the backend says so
    triton = None


if triton is not None:

    @triton.jit
    def _combine(a1, b1, a2, b2):
        # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _program_channels(A_ptr, D_ptr, bias_ptr, GROUP_SIZE, N: tl.constexpr,
                          BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
        """This program's batch, group, channels (and their mask), and the channels' A (fp32),
        D and delta_bias (zeros when absent). Grid: (groups x channel blocks, batch)."""
        b = tl.program_id(1)
        blocks_per_group = (GROUP_SIZE + BLOCK_D - 1) // BLOCK_D
        group = tl.program_id(0) // blocks_per_group
        d_in_group = (tl.program_id(0) % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d_in_group < GROUP_SIZE
        d = group * GROUP_SIZE + d_in_group
        n = tl.arange(0, N)
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=d_mask[:, None], other=0.0)
        Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        return b, group, d, d_mask, A.to(tl.float32), Dv, bias

    _CONFIGS = [
        triton.Config({"BLOCK_D": bd, "BLOCK_L": bl}, num_warps=w)
        for bd, bl, w in [(4, 64, 4), (8, 32, 4), (8, 64, 4), (16, 32, 4), (16, 64, 8),
                          (32, 32, 8)]
    ]

    @autotune(configs=_CONFIGS, key=["channels", "length", "N", "IS_BF", "GROUP_SIZE"],
              reset_to_zero=[])
    @triton.jit
    def _scan_fwd(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, state_ptr,
        channels, length, GROUP_SIZE,
        su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l,
        sc_b, sc_g, sc_n, sc_l, sy_b, sy_d, sy_l,
        n_chunks_saved,
        N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE_STATES: tl.constexpr, IS_BF: tl.constexpr,  # IS_BF: tuned apart (a key)
    ):
        b, group, d, d_mask, A, Dv, bias = _program_channels(
            A_ptr, D_ptr, bias_ptr, GROUP_SIZE, N, BLOCK_D, HAS_D, HAS_BIAS)
        n = tl.arange(0, N)
        ls = tl.arange(0, BLOCK_L)
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        for chunk in range(0, (length + BLOCK_L - 1) // BLOCK_L):
            l = chunk * BLOCK_L + ls
            l_mask = l < length
            m2 = d_mask[:, None] & l_mask[None, :]
            if SAVE_STATES:
                tl.store(state_ptr + ((b * channels + d[:, None]) * n_chunks_saved + chunk) * N
                         + n[None, :], h, mask=d_mask[:, None])
            u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + l[None, :] * su_l, mask=m2,
                        other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + l[None, :] * sdt_l, mask=m2,
                         other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[:, None]
            if SOFTPLUS:
                dt = softplus(dt)
            dt = tl.where(m2, dt, 0.0)  # past the end: decay 1, input 0, the state carries
            Bl = tl.load(B_ptr + b * sb_b + group * sb_g + n[:, None] * sb_n + l[None, :] * sb_l,
                         mask=l_mask[None, :], other=0.0).to(tl.float32)
            Cl = tl.load(C_ptr + b * sc_b + group * sc_g + n[:, None] * sc_n + l[None, :] * sc_l,
                         mask=l_mask[None, :], other=0.0).to(tl.float32)
            decay = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, N, BLOCK_L)
            inp = (dt * u)[:, None, :] * Bl[None, :, :]
            a_scan, b_scan = tl.associative_scan((decay, inp), 2, _combine)
            states = a_scan * h[:, :, None] + b_scan
            y = tl.sum(states * Cl[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            tl.store(y_ptr + b * sy_b + d[:, None] * sy_d + l[None, :] * sy_l,
                     y.to(y_ptr.dtype.element_ty), mask=m2)
            last = (ls == BLOCK_L - 1)[None, None, :]
            h = tl.sum(tl.where(last, states, 0.0), axis=2)

    # Inference: one position after another, the (channels, N) state in registers. No
    # log-depth scan tree, so about half the arithmetic of the chunked form; the loads of a
    # position do not depend on the state, so many warps in flight hide their latency.
    @autotune(
        configs=[triton.Config({"BLOCK_D": bd}, num_warps=w)
                 for bd, w in [(4, 1), (8, 1), (8, 2), (16, 2), (16, 4), (32, 4)]],
        key=["channels", "length", "N", "IS_BF", "GROUP_SIZE"])
    @triton.jit
    def _scan_fwd_sequential(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, state_ptr,
        channels, length, GROUP_SIZE,
        su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l,
        sc_b, sc_g, sc_n, sc_l, sy_b, sy_d, sy_l,
        n_chunks_saved,
        N: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        IS_BF: tl.constexpr,
    ):
        b, group, d, d_mask, A, Dv, bias = _program_channels(
            A_ptr, D_ptr, bias_ptr, GROUP_SIZE, N, BLOCK_D, HAS_D, HAS_BIAS)
        n = tl.arange(0, N)
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        u_row = u_ptr + b * su_b + d * su_d
        dt_row = dt_ptr + b * sdt_b + d * sdt_d
        y_row = y_ptr + b * sy_b + d * sy_d
        b_col = B_ptr + b * sb_b + group * sb_g + n * sb_n
        c_col = C_ptr + b * sc_b + group * sc_g + n * sc_n
        for l in range(0, length):
            u = tl.load(u_row + l * su_l, mask=d_mask, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + l * sdt_l, mask=d_mask, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = softplus(dt)
            Bl = tl.load(b_col + l * sb_l).to(tl.float32)
            Cl = tl.load(c_col + l * sc_l).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bl[None, :]
            y = tl.sum(h * Cl[None, :], axis=1) + Dv * u
            tl.store(y_row + l * sy_l, y.to(y_ptr.dtype.element_ty), mask=d_mask)

    @triton.jit
    def _scan_bwd(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, state_ptr,
        du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        channels, length, GROUP_SIZE,
        su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sb_b, sb_g, sb_n, sb_l,
        sc_b, sc_g, sc_n, sc_l, sdy_b, sdy_d, sdy_l,
        n_chunks_saved, groups,
        N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ):
        b, group, d, d_mask, A, Dv, bias = _program_channels(
            A_ptr, D_ptr, bias_ptr, GROUP_SIZE, N, BLOCK_D, HAS_D, HAS_BIAS)
        n = tl.arange(0, N)
        ls = tl.arange(0, BLOCK_L)
        g_carry = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # g at the next chunk's start
        dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        n_chunks = (length + BLOCK_L - 1) // BLOCK_L
        for step in range(0, n_chunks):
            chunk = n_chunks - 1 - step
            l = chunk * BLOCK_L + ls
            l_mask = l < length
            m2 = d_mask[:, None] & l_mask[None, :]
            h0 = tl.load(state_ptr + ((b * channels + d[:, None]) * n_chunks_saved + chunk) * N
                         + n[None, :], mask=d_mask[:, None], other=0.0)
            u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + l[None, :] * su_l, mask=m2,
                        other=0.0).to(tl.float32)
            raw = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + l[None, :] * sdt_l, mask=m2,
                          other=0.0).to(tl.float32) + bias[:, None]
            dt = raw
            if SOFTPLUS:
                dt = softplus(raw)
            dt = tl.where(m2, dt, 0.0)
            # dt one position later, for the decay that carries g back: exp(dt_{l+1} A)
            l1 = l + 1
            m2n = d_mask[:, None] & (l1 < length)[None, :]
            raw_n = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + l1[None, :] * sdt_l,
                            mask=m2n, other=0.0).to(tl.float32) + bias[:, None]
            dt_n = raw_n
            if SOFTPLUS:
                dt_n = softplus(raw_n)
            dt_n = tl.where(m2n, dt_n, 0.0)
            Bl = tl.load(B_ptr + b * sb_b + group * sb_g + n[:, None] * sb_n + l[None, :] * sb_l,
                         mask=l_mask[None, :], other=0.0).to(tl.float32)
            Cl = tl.load(C_ptr + b * sc_b + group * sc_g + n[:, None] * sc_n + l[None, :] * sc_l,
                         mask=l_mask[None, :], other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + b * sdy_b + d[:, None] * sdy_d + l[None, :] * sdy_l, mask=m2,
                         other=0.0).to(tl.float32)

            # the chunk's states again, from the saved state at its start
            decay = tl.exp(dt[:, None, :] * A[:, :, None])
            inp = (dt * u)[:, None, :] * Bl[None, :, :]
            a_scan, b_scan = tl.associative_scan((decay, inp), 2, _combine)
            states = a_scan * h0[:, :, None] + b_scan

            # g_l = C_l dy_l + exp(dt_{l+1} A) g_{l+1}, backwards; past the end dt_n = 0 but
            # g_carry is 0 there (last chunk) and dy = 0, so nothing leaks in.
            decay_n = tl.exp(dt_n[:, None, :] * A[:, :, None])
            decay_n = tl.where(m2n[:, None, :], decay_n, 0.0)
            a_rev, b_rev = tl.associative_scan((decay_n, Cl[None, :, :] * dy[:, None, :]), 2,
                                               _combine, reverse=True)
            # decay_n at the chunk's last position links to the next chunk's first g
            g = b_rev + a_rev * g_carry[:, :, None]
            first = (ls == 0)[None, None, :]
            g_carry = tl.sum(tl.where(first, g, 0.0), axis=2)

            decayed_prev = states - inp  # exp(dt_l A) h_{l-1}
            gdu = g * Bl[None, :, :]  # d/d(dt_l u_l)
            du = tl.sum(gdu, axis=1) * dt
            ddt = tl.sum(g * decayed_prev * A[:, :, None], axis=1) + tl.sum(gdu, axis=1) * u
            if HAS_D:
                du += Dv[:, None] * dy
                dD_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            dA_acc += tl.sum(tl.where(m2[:, None, :], g * decayed_prev * dt[:, None, :], 0.0),
                             axis=2)
            tl.store(du_ptr + (b * channels + d[:, None]) * length + l[None, :], du, mask=m2)
            tl.store(ddt_ptr + (b * channels + d[:, None]) * length + l[None, :], ddt, mask=m2)
            # B and C are shared by the group's channels: sum this block's share, add atomically
            dB_part = tl.sum(tl.where(m2[:, None, :], g * (dt * u)[:, None, :], 0.0), axis=0)
            dC_part = tl.sum(tl.where(m2[:, None, :], states * dy[:, None, :], 0.0), axis=0)
            bc = ((b * groups + group) * N + n[:, None]) * length + l[None, :]
            tl.atomic_add(dB_ptr + bc, dB_part, mask=l_mask[None, :])
            tl.atomic_add(dC_ptr + bc, dC_part, mask=l_mask[None, :])
        tl.atomic_add(dA_ptr + d[:, None] * N + n[None, :], dA_acc, mask=d_mask[:, None])
        if HAS_D:
            tl.atomic_add(dD_ptr + d, dD_acc, mask=d_mask)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + d, dbias_acc, mask=d_mask)


def _grouped(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def _check(u, delta, A, B, C):
    # TRITON_INTERPRET=1 runs the kernels on the CPU (slowly): how they are debugged without a GPU
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the 'triton' scan backend needs CUDA tensors, got {u.device}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta has shape {tuple(delta.shape)}, u {tuple(u.shape)}")
    n_state = A.shape[1]
    if n_state & (n_state - 1) or n_state > 64:
        raise ValueError(f"the triton scan takes N a power of two up to 64, got {n_state}")
    groups = B.shape[1]
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups of B/C")
    return batch, channels, length, n_state, groups


# The sequential forward needs many (batch, channel) rows to fill the GPU (each walks all of
# L alone); below this, e.g. at batch 1, the chunked form's parallel scans are faster.
_SEQUENTIAL_MIN_ROWS = 8192


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, need_grad):
        ctx.b_shape, ctx.c_shape, ctx.a_dtype = B.shape, C.shape, A.dtype
        B, C = _grouped(B), _grouped(C)
        batch, channels, length, n_state, groups = _check(u, delta, A, B, C)
        A = A.float().contiguous()
        y = torch.empty_like(u)
        # States at every chunk start, for the backward pass (chunk = the smallest BLOCK_L).
        saved_block = min(c.kwargs["BLOCK_L"] for c in _CONFIGS)
        n_saved = triton.cdiv(length, saved_block)
        states = (torch.empty(batch, channels, n_saved, n_state, device=u.device,
                              dtype=torch.float32) if need_grad else y)
        args = _forward_args(u, delta, A, B, C, D, delta_bias, y, states, channels, length,
                             groups, n_saved)

        def grid(meta):
            return (groups * triton.cdiv(channels // groups, meta["BLOCK_D"]), batch)

        if need_grad:
            # the backward pass walks the same chunks: fix BLOCK_L to the saved chunk size
            _scan_fwd.fn[(groups * triton.cdiv(channels // groups, 8), batch)](
                *args, N=n_state, BLOCK_D=8, BLOCK_L=saved_block,
                HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), SAVE_STATES=True,
                IS_BF=u.dtype == torch.bfloat16, num_warps=4)
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
            ctx.softplus, ctx.block_l, ctx.groups = bool(delta_softplus), saved_block, groups
        elif batch * channels >= _SEQUENTIAL_MIN_ROWS:
            _scan_fwd_sequential[grid](*args, N=n_state, HAS_D=D is not None,
                                       HAS_BIAS=delta_bias is not None,
                                       SOFTPLUS=bool(delta_softplus),
                                       IS_BF=u.dtype == torch.bfloat16)
        else:
            _scan_fwd[grid](*args, N=n_state, HAS_D=D is not None,
                            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                            SAVE_STATES=False, IS_BF=u.dtype == torch.bfloat16)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
        batch, channels, length = u.shape
        n_state, groups = A.shape[1], ctx.groups
        f32 = {"device": u.device, "dtype": torch.float32}
        du = torch.empty(batch, channels, length, **f32)
        ddt = torch.empty(batch, channels, length, **f32)
        dA = torch.zeros(channels, n_state, **f32)
        dB = torch.zeros(batch, groups, n_state, length, **f32)
        dC = torch.zeros(batch, groups, n_state, length, **f32)
        dD = torch.zeros(channels, **f32) if D is not None else du
        dbias = torch.zeros(channels, **f32) if delta_bias is not None else du
        block_d = 8
        grid = (groups * triton.cdiv(channels // groups, block_d), batch)
        _scan_bwd[grid](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None
            else A, dy, states, du, ddt, dA, dB, dC, dD, dbias,
            channels, length, channels // groups,
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *dy.stride(),
            states.shape[2], groups,
            N=n_state, BLOCK_D=block_d, BLOCK_L=ctx.block_l, HAS_D=D is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus, num_warps=4,
        )
        grad_b = dB if ctx.needs_input_grad[3] else None
        grad_c = dC if ctx.needs_input_grad[4] else None
        return (du.to(u.dtype), ddt.to(delta.dtype), dA.to(ctx.a_dtype),
                grad_b.reshape(ctx.b_shape).to(B.dtype) if grad_b is not None else None,
                grad_c.reshape(ctx.c_shape).to(C.dtype) if grad_c is not None else None,
                dD.to(D.dtype) if D is not None else None,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None, None, None)


def _forward_args(u, delta, A, B, C, D, delta_bias, y, states, channels, length, groups,
                  n_saved):
    return (u, delta, A, B, C, D if D is not None else A,
            delta_bias if delta_bias is not None else A, y, states,
            channels, length, channels // groups,
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *y.stride(), n_saved)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    # Whether a graph is being recorded is only visible here (forward() runs without grad);
    # the model's parameters require grad even under no_grad, so both are checked.
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias))
    return _SelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, need_grad)
