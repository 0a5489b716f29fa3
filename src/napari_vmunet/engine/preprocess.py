"""A recipe's arithmetic on batches of slices: intensities in, model-sized tensors out, and the
model's output back to the slices' own size.

Everything runs on the model's device, one batch at a time, so a volume never exists as float
data in full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..recipes import Recipe

# np.percentile on a whole 512x512x600 volume copies 600 MB; a strided sample of this many
# voxels gives the same 0.5/99.5 percentiles to well under a grey level.
_PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class IntensityMap:
    """value -> (value - low) / (high - low), clipped, scaled to the recipe's value range.
    ``per_image`` means low/high come from each 2D image (the authors' ISIC min-max)."""

    low: float = 0.0
    high: float = 1.0
    per_image: bool = False


def intensity_map(volume: np.ndarray, recipe: Recipe) -> tuple[IntensityMap, str | None]:
    """The mapping for a whole image/volume, and a warning if it is degenerate."""
    if recipe.intensity == "minmax":
        return IntensityMap(per_image=True), None
    if recipe.intensity == "window":
        level, width = recipe.window
        return IntensityMap(level - width / 2, level + width / 2), None
    flat = volume.reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLE)
    sample = flat[::step].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return IntensityMap(0.0, 1.0), "the image has no finite values; it is treated as zeros"
    low, high = np.percentile(sample, recipe.percentiles)
    if not high > low:
        return IntensityMap(float(low), float(low) + 1.0), (
            "the image is constant (its percentiles coincide); the model sees a flat image"
        )
    return IntensityMap(float(low), float(high)), None


def normalise(x: torch.Tensor, mapping: IntensityMap, recipe: Recipe) -> torch.Tensor:
    """(n, c, h, w) float32 raw values -> the model's input range."""
    lo_out, hi_out = recipe.value_range
    if mapping.per_image:
        flat = x.flatten(1)
        low = flat.amin(1).view(-1, 1, 1, 1)
        span = (flat.amax(1).view(-1, 1, 1, 1) - low).clamp_min(1e-12)
        unit = (x - low) / span  # a constant image becomes 0, as the authors' would be NaN
    else:
        unit = ((x - mapping.low) / (mapping.high - mapping.low)).clamp_(0.0, 1.0)
    return unit * (hi_out - lo_out) + lo_out


@dataclass(frozen=True)
class Resize:
    """How a batch of (h, w) slices becomes model-sized, and back: resized to the recipe's
    input size, or resampled to its pixel size (``scaled``) and/or padded to the model's
    multiple (``pad``, bottom/right)."""

    size: tuple[int, int]  # what the model sees
    pad: tuple[int, int]
    mode: str
    scaled: tuple[int, int] | None = None  # the slice resampled to the recipe's pixel size

    @classmethod
    def plan(cls, shape: tuple[int, int], recipe: Recipe, multiple: int,
             pixel_spacing: tuple[float, float] | None = None) -> Resize:
        """``pixel_spacing``: the slices' (row, column) voxel size, when known."""
        if recipe.input_size is not None:
            side = math.ceil(recipe.input_size / multiple) * multiple
            return cls((side, side), (0, 0), recipe.interpolation)
        scaled = resampled_shape(shape, pixel_spacing, recipe.pixel_size)
        h, w = scaled or shape
        ph, pw = (-h) % multiple, (-w) % multiple
        return cls((h + ph, w + pw), (ph, pw), recipe.interpolation, scaled)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled is not None:
            x = resample(x, self.scaled, self.mode)
        if self.pad != (0, 0):
            # Replicate the border: zeros would look like an edge the model might segment.
            return F.pad(x, (0, self.pad[1], 0, self.pad[0]), mode="replicate")
        if tuple(x.shape[-2:]) == self.size:
            return x
        # No antialiasing: the authors resized without it (scipy zoom, torchvision on tensors
        # before 0.17), and a model works best on images prepared as it was trained.
        return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False)

    def to_image(self, y: torch.Tensor, shape: tuple[int, int], mode: str) -> torch.Tensor:
        """Model-sized maps back to ``shape``: crop the padding, undo the resampling, or
        resize (``mode`` 'nearest' for labels, 'bilinear' for probabilities)."""
        if self.pad != (0, 0):
            y = y[..., : self.size[0] - self.pad[0], : self.size[1] - self.pad[1]]
        if tuple(y.shape[-2:]) == tuple(shape):
            return y
        if mode == "nearest":
            return F.interpolate(y, size=shape, mode="nearest-exact")
        return F.interpolate(y, size=shape, mode="bilinear", align_corners=False)


def in_plane_spacing(spacing: Sequence[float] | None, slice_position: int | None,
                     spatial_dims: int) -> tuple[float, float] | None:
    """The (row, column) voxel size of the slices, from the voxel size of every spatial axis
    and the position of the slicing axis among them (None: a 2D image)."""
    if spacing is None:
        return None
    if len(spacing) != spatial_dims:
        raise ValueError(f"voxel size {tuple(spacing)} has {len(spacing)} values for "
                         f"{spatial_dims} spatial axes")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"voxel sizes must be positive, got {tuple(spacing)}")
    rest = [float(s) for i, s in enumerate(spacing) if i != slice_position]
    return rest[0], rest[1]


def resampled_shape(shape: tuple[int, int], pixel_spacing: tuple[float, float] | None,
                    pixel_size: float | None) -> tuple[int, int] | None:
    """The (h, w) of a slice resampled from ``pixel_spacing`` to square ``pixel_size`` pixels;
    None when nothing is to be done (no target, unknown spacing, or already within 2 %)."""
    if pixel_size is None or pixel_spacing is None:
        return None
    factors = [s / pixel_size for s in pixel_spacing]
    if all(abs(f - 1) < 0.02 for f in factors):
        return None
    return tuple(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))


def resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(n, c, h, w) images to ``size``; shrinking is antialiased so that fine detail does not
    alias into stripes (training and inference both come through here)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking)
