"""A pixel classifier on what the network sees: the quick way to teach a model a new structure.

Trained in seconds on a few corrected slices (:mod:`...engine.training.classifier`), it labels
each pixel from the frozen network's own features there (the first two encoder stages and the
decoder's last, brought to full resolution), a bank of intensity filters (smoothed intensity,
edges and blobs at three scales, as ilastik's pixel classifier uses), and, when the corrected
slices of the same volume are known, their shape carried to this slice (a signed distance in
mm, see :class:`...engine.shape_prior.ShapePrior`). Measured on five real volumes with three
corrected slices it generalised better than training the decoder on four and as well on the
fifth, in a twentieth of the time or less (benchmarks/RESULTS.md, 2026-12-03 and 2026-12-04).

The first layer is linear, and so are the normalisation and bilinear upsampling: each group of
features is multiplied at its own resolution and only the hidden width is brought to full
resolution, which keeps applying the head cheap next to the network itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIGMAS = (1.0, 2.0, 4.0)  # filter scales in model pixels
FILTERS = 1 + 3 * len(SIGMAS)  # intensity; smoothed, gradient magnitude, Laplacian per scale
# The shape prior enters as tanh(distance / 6 mm): near the edge it counts. 6 mm did better on
# the lung CT tumour than 10 (0.85-0.86 vs 0.85) or 15 mm (0.82-0.84), and no worse on a brain
# lesion (benchmarks/RESULTS.md, 2026-12-04).
PRIOR_SCALE_MM = 6.0


def intensity_filters(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, FILTERS, H, W): the intensity, then per scale its Gaussian
    smoothing, gradient magnitude and Laplacian (borders reflected)."""
    out = [x]
    for sigma in SIGMAS:
        radius = math.ceil(3 * sigma)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        g = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        g = F.conv2d(F.conv2d(g, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        p = F.pad(g, (1, 1, 1, 1), mode="replicate")
        dy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
        dx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
        laplacian = (p[..., 2:, 1:-1] + p[..., :-2, 1:-1] + p[..., 1:-1, 2:] + p[..., 1:-1, :-2]
                     - 4 * g)
        # scale-normalised, as ilastik's: the same edge reads alike at every scale
        out += [g, sigma * torch.sqrt(dx * dx + dy * dy + 1e-12), sigma * sigma * laplacian]
    return torch.cat(out, 1)


class PixelHead(nn.Module):
    """Per-pixel MLP (two hidden layers of ``hidden``) over the network's features, the
    intensity filters and ``priors`` shape-prior channels (one per foreground class; 0 for
    none). ``mean``/``std`` normalise the inputs (set from the training pixels)."""

    def __init__(self, dims: tuple[int, ...], num_classes: int, hidden: int = 32,
                 priors: int = 1):
        super().__init__()
        self.widths = (dims[0], dims[1], dims[0])  # stage-0 input, stage-1 input, decoded
        self.priors = priors
        n = sum(self.widths) + FILTERS + priors
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.first = nn.Linear(n, hidden)
        self.hidden = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                    nn.Linear(hidden, num_classes))

    def features(self, x, skips, decoded, prior=None) -> torch.Tensor:
        """Every input at full resolution, (B, n, H, W), unnormalised: for training,
        where the same pixels are seen many times."""
        size = x.shape[-2:]
        parts = [_full(skips[0], size), _full(skips[1], size), _full(decoded, size),
                 intensity_filters(_grey(x)), self._prior(prior, x)]
        return torch.cat(parts, 1)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """(..., n) unnormalised features -> (..., classes) logits."""
        return self.hidden(self.first((z - self.mean) / self.std))

    def forward(self, x, skips, decoded, prior=None) -> torch.Tensor:
        """Logits (B, classes, H, W) for model inputs ``x`` (B, C, H, W), the encoder's stage
        inputs ``skips`` and the decoder's output ``decoded`` (channels last), and ``prior``
        (B, priors, H, W) or None (no corrections known: read as on the edge, which a head
        trained with a prior may take for outside)."""
        size = x.shape[-2:]
        w = self.first.weight / self.std  # normalisation folded into the first layer
        b = self.first.bias - w @ self.mean
        *network, local = torch.split(w, [*self.widths, FILTERS + self.priors], dim=1)
        # channels last throughout: the hidden layers work on each pixel's vector
        pixel = torch.cat([intensity_filters(_grey(x)), self._prior(prior, x)], 1)
        h = torch.addmm(b, pixel.permute(0, 2, 3, 1).reshape(-1, local.shape[1]), local.T)
        h = h.view(x.shape[0], *size, -1)
        for part, weight in zip((skips[0], skips[1], decoded), network, strict=True):
            h += _full_last(F.linear(part, weight), size)
        return self.hidden(h).permute(0, 3, 1, 2).contiguous()

    def _prior(self, prior, x) -> torch.Tensor:
        b, _, h, w = x.shape
        if prior is None:
            return x.new_zeros(b, self.priors, h, w)
        return torch.tanh(prior / PRIOR_SCALE_MM).to(x.dtype)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1] if x.shape[1] == 1 else x.mean(1, keepdim=True)


def _full_last(t: torch.Tensor, size) -> torch.Tensor:
    """Channels-last (B, h, w, C) at full resolution, bilinear, still channels last."""
    if tuple(t.shape[1:3]) == tuple(size):
        return t
    up = F.interpolate(t.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1)


def _full(t: torch.Tensor, size) -> torch.Tensor:
    """Channels-last (B, h, w, C) -> (B, C, H, W) at full resolution, bilinear."""
    t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)
