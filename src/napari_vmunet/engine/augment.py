"""Training augmentation as plain torch ops on the device, one batch at a time.

Geometry (flips, 90° turns on square slices, small rotations) is folded into one affine grid per
sample and applied with a single ``grid_sample``: bilinear for the image, nearest for the labels,
so labels stay labels. Intensity jitter scales and shifts each sample's (already normalised)
values. Deterministic given the generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    *,
    max_rotation_degrees: float = 15.0,
    intensity_jitter: float = 0.1,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (n, c, h, w) float, labels (n, h, w) int64 -> augmented copies."""
    n, _, h, w = images.shape
    device = images.device

    def uniform(low, high):
        return (torch.rand(n, generator=generator) * (high - low) + low).to(device)

    angle = uniform(-max_rotation_degrees, max_rotation_degrees) * math.pi / 180
    quarter_turns = torch.randint(0, 4 if h == w else 1, (n,), generator=generator).to(device)
    angle = angle + quarter_turns * (math.pi / 2)
    flip_x = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    flip_y = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # grid_sample works in normalised coordinates; for non-square slices, rotate in pixel units.
    aspect = w / h
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y / aspect
    theta[:, 1, 0] = sin * flip_x * aspect
    theta[:, 1, 1] = cos * flip_y
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].long()

    if intensity_jitter:
        span = value_range[1] - value_range[0]
        scale = uniform(1 - intensity_jitter, 1 + intensity_jitter).view(n, 1, 1, 1)
        shift = (uniform(-intensity_jitter, intensity_jitter) * span).view(n, 1, 1, 1)
        images = (images - value_range[0]) * scale + value_range[0] + shift
    return images, labels
