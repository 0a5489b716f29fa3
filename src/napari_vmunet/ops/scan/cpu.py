"""A compiled CPU selective scan (numba), forward and backward.

Why a compiled loop: the scan is sequential along the sequence but independent across channels,
so the natural CPU kernel runs one channel per task (parallel over channels) and keeps the
16-value state in registers while it walks the sequence. In Python the same loop costs seconds
per image; here it is one pass over memory.

Two details carry most of the speed:
- B and C are handed over position-major, (batch, G, L, N), so the inner loop over the N states
  reads contiguous memory and vectorises.
- ``exp(delta * A)`` is evaluated N times per position, so it uses an inlined polynomial
  (``_exp_nonpositive``) that the compiler vectorises, instead of a libm call per value.
  Its argument is never positive (delta > 0, A < 0); results below e^-83 are flushed to exactly 0,
  which also keeps denormals, and their 100x slow-down, out of the state.

The backward recomputes each channel's forward states, then walks back once. It runs in short
passes over task-local (L, N) buffers (exp values, states, adjoint states) rather than one fused
loop: a loop storing into many arrays is not proven alias-free and stays scalar, and the stored
exp values serve both walks.

The softplus of delta runs in torch beforehand (vectorised, once per position, not per state).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange, types
from numba.extending import intrinsic

# numba's default thread pool does not accept parallel kernels from two threads at once; napari
# may segment and fine-tune in different worker threads, so calls are serialised here.
_KERNEL_LOCK = threading.Lock()


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32 as float32 (how 2**k is built without a libm call)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


_LOG2E = np.float32(1.4426950408889634)


@njit(inline="always", fastmath=True, cache=True)
def _exp_nonpositive(x):
    """exp(x) for x <= 0 in float32, relative error < 2e-7, exactly 0 below x = -83."""
    z = max(x * _LOG2E, np.float32(-125.0))
    # Round to nearest by truncating a positive value: one vector instruction, where
    # math.floor goes through int64 and back.
    k = -np.int32(np.float32(0.5) - z)
    f = z - np.float32(k)  # in [-0.5, 0.5]: the Taylor series of 2**f converges fast there
    p = np.float32(1.5252733804059841e-05)
    p = p * f + np.float32(1.5403530393381606e-04)
    p = p * f + np.float32(1.3333558146428443e-03)
    p = p * f + np.float32(9.6181291076284772e-03)
    p = p * f + np.float32(5.5504108664821580e-02)
    p = p * f + np.float32(2.4022650695910071e-01)
    p = p * f + np.float32(6.9314718055994531e-01)
    p = p * f + np.float32(1.0)
    r = p * _float_from_bits((k + np.int32(127)) << 23)
    return r if z > np.float32(-120.0) else np.float32(0.0)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _forward_kernel(u, delta, A, Bt, Ct, D, out):
    batch, channels, length = u.shape
    n_state = A.shape[1]
    per_group = channels // Bt.shape[1]
    for task in prange(batch * channels):
        b = task // channels
        c = task % channels
        g = c // per_group
        a = A[c]
        h = np.zeros(n_state, np.float32)
        for t in range(length):
            d = delta[b, c, t]
            x = u[b, c, t]
            dx = d * x
            y = np.float32(0.0)
            for n in range(n_state):
                hn = _exp_nonpositive(d * a[n]) * h[n] + dx * Bt[b, g, t, n]
                h[n] = hn
                y += hn * Ct[b, g, t, n]
            out[b, c, t] = y + D[c] * x


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _backward_kernel(u, delta, A, Bt, Ct, D, dout, du, ddelta, dA, dD, dB_parts, dC_parts):
    """Gradients of one scan. B and C are shared by the channels of a group, so each task owns a
    (batch, group, part) slice of channels and accumulates dB/dC into its own part buffer:
    no two tasks write the same memory, and the parts are summed afterwards.

    Per channel, in separate passes over task-local (L, N) buffers: exp(delta * A) (evaluated
    once, reused by both walks), the forward states, the adjoint states (walking back), then the
    gradient terms. Each inner loop stores into one or two arrays, which the compiler vectorises;
    one fused loop storing into five arrays (with exp evaluated twice) was about 4x slower."""
    batch, channels, length = u.shape
    n_state = A.shape[1]
    groups = Bt.shape[1]
    parts = dB_parts.shape[2]
    per_group = channels // groups
    per_part = (per_group + parts - 1) // parts
    for task in prange(batch * groups * parts):
        b = task // (groups * parts)
        g = (task // parts) % groups
        p = task % parts
        decay = np.empty((length, n_state), np.float32)  # exp(delta_t * A)
        states = np.zeros((length + 1, n_state), np.float32)  # states[t + 1] = h_t, states[0] = 0
        adjoint = np.empty((length, n_state), np.float32)  # dLoss/dh_t
        dh = np.empty(n_state, np.float32)
        dA_c = np.empty(n_state, np.float32)
        Bg, Cg = Bt[b, g], Ct[b, g]
        dB_p, dC_p = dB_parts[b, g, p], dC_parts[b, g, p]
        first = g * per_group + p * per_part
        last = min(first + per_part, (g + 1) * per_group)
        for c in range(first, last):
            a = A[c]
            d_c, u_c, gy_c = delta[b, c], u[b, c], dout[b, c]
            for t in range(length):
                d = d_c[t]
                for n in range(n_state):
                    decay[t, n] = _exp_nonpositive(d * a[n])
            # Recompute the forward states (cheaper than storing them for every channel).
            for t in range(length):
                dx = d_c[t] * u_c[t]
                for n in range(n_state):
                    states[t + 1, n] = decay[t, n] * states[t, n] + dx * Bg[t, n]
            for t in range(length):
                gy = gy_c[t]
                for n in range(n_state):
                    dC_p[t, n] += gy * states[t + 1, n]
            dh[:] = 0.0
            for t in range(length - 1, -1, -1):
                gy = gy_c[t]
                for n in range(n_state):
                    adj = dh[n] + gy * Cg[t, n]
                    adjoint[t, n] = adj
                    dh[n] = adj * decay[t, n]
            dA_c[:] = 0.0
            dD_c = np.float32(0.0)
            for t in range(length):
                gy, x, d = gy_c[t], u_c[t], d_c[t]
                dx = d * x
                dD_c += gy * x
                s_b = np.float32(0.0)  # sum_n adjoint * B, shared by du and ddelta
                for n in range(n_state):
                    s_b += adjoint[t, n] * Bg[t, n]
                    dB_p[t, n] += dx * adjoint[t, n]
                s_a = np.float32(0.0)
                for n in range(n_state):
                    w = adjoint[t, n] * decay[t, n] * states[t, n]  # d/d(delta * A) of h_t
                    s_a += a[n] * w
                    dA_c[n] += d * w
                du[b, c, t] = gy * D[c] + d * s_b
                ddelta[b, c, t] = x * s_b + s_a
            for n in range(n_state):
                dA[b, c, n] = dA_c[n]
            dD[b, c] = dD_c


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


def _set_threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _position_major(x: torch.Tensor) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> contiguous float32 (batch, G, L, N)."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.detach().to(torch.float32).transpose(-1, -2).contiguous()


def _effective_delta(delta, delta_bias, delta_softplus, with_grad=False):
    """softplus(delta + bias) in float32 and, for backward, its derivative (None if linear)."""
    delta = delta.detach().to(torch.float32)
    if delta_bias is not None:
        delta = delta + delta_bias.detach().to(torch.float32)[:, None]
    if not delta_softplus:
        return delta, None
    return F.softplus(delta, threshold=20.0), torch.sigmoid(delta) if with_grad else None


def _skip_weights(D, channels):
    if D is None:
        return torch.zeros(channels, dtype=torch.float32)
    return D.detach().to(torch.float32).contiguous()


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        channels = u.shape[1]
        d_eff, _ = _effective_delta(delta, delta_bias, delta_softplus)
        D_ = _skip_weights(D, channels)
        out = torch.empty(u.shape, dtype=torch.float32)
        with _KERNEL_LOCK:
            _set_threads()
            _forward_kernel(
                _as_numpy(u), d_eff.numpy(), _as_numpy(A), _position_major(B).numpy(),
                _position_major(C).numpy(), D_.numpy(), out.numpy(),
            )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        batch, channels, length = u.shape
        d_eff, softplus_grad = _effective_delta(
            delta, delta_bias, ctx.delta_softplus, with_grad=True
        )
        Bt, Ct = _position_major(B), _position_major(C)
        groups, n_state = Bt.shape[1], A.shape[1]
        # Enough parts per group that every thread has work even at batch 1.
        parts = max(1, min(channels // groups, -(-torch.get_num_threads() // (batch * groups))))
        D_ = _skip_weights(D, channels)

        du = torch.empty(batch, channels, length)
        ddelta = torch.empty(batch, channels, length)
        dA = torch.empty(batch, channels, n_state)  # per batch item: tasks never share a row
        dD = torch.empty(batch, channels)
        dB_parts = torch.zeros(batch, groups, parts, length, n_state)
        dC_parts = torch.zeros(batch, groups, parts, length, n_state)
        with _KERNEL_LOCK:
            _set_threads()
            _backward_kernel(
                _as_numpy(u), d_eff.numpy(), _as_numpy(A), Bt.numpy(), Ct.numpy(),
                D_.numpy(), _as_numpy(dout), du.numpy(), ddelta.numpy(), dA.numpy(),
                dD.numpy(), dB_parts.numpy(), dC_parts.numpy(),
            )
        if softplus_grad is not None:
            ddelta = ddelta * softplus_grad
        dB = dB_parts.sum(2).transpose(-1, -2).reshape(B.shape)
        dC = dC_parts.sum(2).transpose(-1, -2).reshape(C.shape)
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.sum(0).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None,
            ddelta.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
        )


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Same contract as :func:`.reference.selective_scan`, computed in float32
    on the CPU."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if t.device.type != "cpu":
            raise ValueError(f"the 'cpu' scan backend needs CPU tensors, {name} is on {t.device}")
    if A.is_complex():
        raise ValueError("the 'cpu' scan backend supports real A only")
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
