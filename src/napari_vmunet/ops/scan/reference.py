"""The selective scan as a plain recurrence: the ground truth every other backend is tested against.

It runs on any device and in any floating dtype (float64 included), and gets its backward pass
from autograd. It is slow (one small step per sequence position), which is fine for tests and
for devices that have nothing better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """``y_t = <C_t, h_t> + D u_t`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``.

    Shapes follow mamba's ``selective_scan_fn``: ``u``, ``delta`` (batch, channels, L);
    ``A`` (channels, N); ``B``, ``C`` (batch, N, L) or grouped (batch, G, N, L), where channel
    ``c`` uses group ``c // (channels // G)``; ``D``, ``delta_bias`` (channels,).
    Computes in float32 at least (float64 stays float64) and returns ``u``'s dtype.
    """
    dtype_in = u.dtype
    compute = torch.promote_types(u.dtype, torch.float32)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        # mamba's kernel switches to the identity above 20; F.softplus uses the same threshold.
        delta = F.softplus(delta, beta=1.0, threshold=20.0)

    batch, channels, length = u.shape
    B = _grouped(B, compute)
    C = _grouped(C, compute)
    groups, n_state = B.shape[1], A.shape[1]
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups of B/C")
    per_group = channels // groups

    # The state is kept as (batch, groups, channels per group, N) so grouped B/C broadcast
    # without materialising a per-channel copy.
    A4 = A.view(groups, per_group, n_state)
    h = u.new_zeros(batch, groups, per_group, n_state)
    ys = []
    for t in range(length):
        d_t = delta[:, :, t].view(batch, groups, per_group, 1)
        u_t = u[:, :, t].view(batch, groups, per_group, 1)
        h = torch.exp(d_t * A4) * h + d_t * u_t * B[:, :, None, :, t]
        ys.append((h * C[:, :, None, :, t]).sum(-1).view(batch, channels))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    return y.to(dtype_in)


def _grouped(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, N, L) -> (batch, 1, N, L); grouped tensors pass through."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"B and C must be (batch, N, L) or (batch, G, N, L), got {tuple(x.shape)}")
    return x.to(dtype)
