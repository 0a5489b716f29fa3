"""VM-UNet's 2D selective scan (SS2D's core) composed from the 1D scan: any backend.

The image is read in four directions (row-major, column-major, and both reversed), each
direction is a selective scan with its own parameters, and the four results are put back in
row-major order and summed. This module builds the four (batch, channels, L) sequences as
tensors and calls a backend's 1D ``selective_scan`` once for all of them; a backend can replace
the whole thing with a fused kernel that reads the directions straight from the image
(``selective_scan_2d`` in the backend's module, see :mod:`.ss2d`).

Shapes (K = 4 directions, R = dt rank, N = state size), as :func:`selective_scan_2d` takes them:

- ``x``: (B, H, W, D), the block's activation, channels last;
- ``proj``: (B, H, W, K, R + 2N), x_proj applied to every pixel: per direction the low-rank
  dt, then B, then C. Projecting pixels before reordering them is the authors' einsum over the
  reordered sequences, done once per pixel;
- ``dt_weight`` (K, D, R), ``dt_bias`` (K, D), ``A`` (K, D, N) (negative), ``D`` (K, D).

The result is (B, H, W, D) float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

N_DIRECTIONS = 4  # row-major, column-major and both reversed


def along(t: torch.Tensor, direction: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W): the pixels in the order direction ``direction`` reads them."""
    seq = (t if direction % 2 == 0 else t.transpose(2, 3)).flatten(2)
    return seq.flip(-1) if direction >= 2 else seq


def back(seq: torch.Tensor, direction: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`along`: (B, C, H*W) in direction order -> (B, C, H, W)."""
    if direction >= 2:
        seq = seq.flip(-1)
    if direction % 2 == 0:
        return seq.unflatten(2, (height, width))
    return seq.unflatten(2, (width, height)).transpose(2, 3)


def _scan_dtype(t: torch.Tensor) -> torch.Tensor:
    # The scan runs in float32 whatever the autocast dtype, as in the original (float64 stays:
    # the ground truth in tests).
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def selective_scan_2d_composed(x, proj, dt_weight, dt_bias, A, D, *, scan: Callable):
    """The four directions as tensors, one call of the 1D ``scan`` (a backend's
    ``selective_scan``, positional arguments as mamba's), the merge: the ground truth for fused
    kernels, and what runs on backends that have none."""
    b, h, w, d = x.shape
    k, length = N_DIRECTIONS, h * w
    rank, n_state = dt_weight.shape[2], A.shape[2]
    image = x.permute(0, 3, 1, 2)
    xs = torch.stack([along(image, i) for i in range(k)], dim=1)  # (B, K, D, L)
    per_direction = proj.permute(0, 3, 4, 1, 2)  # (B, K, R + 2N, H, W)
    ps = torch.stack([along(per_direction[:, i], i) for i in range(k)], dim=1)
    dts, Bs, Cs = torch.split(ps, [rank, n_state, n_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_weight)

    ys = scan(
        _scan_dtype(xs).reshape(b, k * d, length),
        _scan_dtype(dts).reshape(b, k * d, length),
        _scan_dtype(A).reshape(k * d, n_state),
        _scan_dtype(Bs),
        _scan_dtype(Cs),
        _scan_dtype(D).reshape(-1),
        _scan_dtype(dt_bias).reshape(-1),
        True,  # delta_softplus
    ).view(b, k, d, length)
    y = sum(back(ys[:, i], i, h, w) for i in range(k))  # (B, D, H, W)
    return y.permute(0, 2, 3, 1)
