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
    max_zoom: float = 0.0,
    intensity_jitter: float = 0.1,
    max_gamma: float = 0.0,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (n, c, h, w) float, labels (n, h, w) int64 -> augmented copies.

    ``max_zoom`` 0.25 zooms each sample by a factor in [1/1.25, 1.25]: heads scanned at other
    voxel sizes look larger or smaller, and a model trained at one resolution should not care.
    ``max_gamma`` 0.4 applies a contrast curve x**g, g in [1/1.4, 1.4] (another scanner, another
    sequence), before the scale/shift jitter.
    """
    n, _, h, w = images.shape
    device = images.device

    def uniform(low, high):
        return (torch.rand(n, generator=generator) * (high - low) + low).to(device)

    angle = uniform(-max_rotation_degrees, max_rotation_degrees) * math.pi / 180
    quarter_turns = torch.randint(0, 4 if h == w else 1, (n,), generator=generator).to(device)
    angle = angle + quarter_turns * (math.pi / 2)
    flip_x = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    flip_y = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    zoom = torch.exp(uniform(-math.log1p(max_zoom), math.log1p(max_zoom)))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
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

    span = value_range[1] - value_range[0]
    if max_gamma:
        gamma = torch.exp(uniform(-math.log1p(max_gamma), math.log1p(max_gamma))).view(n, 1, 1, 1)
        unit = ((images - value_range[0]) / span).clamp(0, 1)
        images = unit**gamma * span + value_range[0]
    if intensity_jitter:
        scale = uniform(1 - intensity_jitter, 1 + intensity_jitter).view(n, 1, 1, 1)
        shift = (uniform(-intensity_jitter, intensity_jitter) * span).view(n, 1, 1, 1)
        images = (images - value_range[0]) * scale + value_range[0] + shift
    return images, labels
