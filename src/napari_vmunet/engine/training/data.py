"""Training data: the corrected slices of a volume (or whole labelled volumes) cut out and
brought to the model's grid exactly as the Segmenter will see them at inference time
(:mod:`..preprocess`), so what is learnt is what is used; and the validation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...recipes import Recipe
from ..preprocess import (
    IntensityMap,
    in_plane_spacing,
    intensity_map,
    normalise,
    resample,
    resampled_shape,
)


@dataclass
class SliceSet:
    """Prepared training slices on the device: images (n, c, H, W) in the model's input range,
    labels (n, H, W) int64, and the true (h, w) of each slice before padding."""

    images: torch.Tensor
    labels: torch.Tensor
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Sequence[int]) -> SliceSet:
        index = list(index)
        return SliceSet(self.images[index], self.labels[index], [self.sizes[i] for i in index])

    @staticmethod
    def concat(sets: Sequence[SliceSet]) -> SliceSet:
        return SliceSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                        [size for s in sets for size in s.sizes])


def prepare_slices(volume: np.ndarray, labels: np.ndarray, indices: Sequence[int] | None,
                   axis: int | None, recipe: Recipe, multiple: int, device: torch.device,
                   size: int | None = None, mapping: IntensityMap | None = None,
                   pixel_spacing: tuple[float, float] | None = None) -> SliceSet:
    """Cut 2D slices out of a volume (or take a 2D image) and bring them to the model's grid.

    ``size``: a common square side for slices of different volumes (padded, or shrunk to fit
    first); otherwise the recipe's input size, or the slice padded to ``multiple``.
    ``pixel_spacing``: the slices' (row, column) voxel size; with a recipe that has a pixel
    size, slices are resampled to it first, exactly as :class:`Segmenter` will.
    """
    volume, labels = np.asarray(volume), np.asarray(labels)
    if volume.shape[: labels.ndim] != labels.shape:
        raise ValueError(f"labels have shape {labels.shape} but the image has {volume.shape}; "
                         "they must cover the same voxels")
    if mapping is None:
        mapping, _ = intensity_map(volume, recipe)
    if labels.ndim == 2:
        images_np, labels_np = volume[None], labels[None]
    else:
        images_np, labels_np = np.moveaxis(volume, axis, 0), np.moveaxis(labels, axis, 0)
        images_np, labels_np = images_np[list(indices)], labels_np[list(indices)]
    x = torch.from_numpy(np.ascontiguousarray(images_np, dtype=np.float32)).to(device)
    x = torch.nan_to_num(x, nan=mapping.low, posinf=mapping.high, neginf=mapping.low)
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 4:
        x = x[:, :3]
    y = torch.from_numpy(np.ascontiguousarray(labels_np).astype(np.int64)).to(device)
    x = normalise(x, mapping, recipe)
    if recipe.input_size is None:
        scaled = resampled_shape(tuple(x.shape[-2:]), pixel_spacing, recipe.pixel_size)
        if scaled is not None:
            x = resample(x, scaled, recipe.interpolation)
            y = F.interpolate(y[:, None].float(), size=scaled, mode="nearest-exact")[:, 0].long()
    h, w = x.shape[-2:]
    sizes = [(h, w)] * x.shape[0]
    if size is None and recipe.input_size is not None:
        size = math.ceil(recipe.input_size / multiple) * multiple
        x = F.interpolate(x, size=(size, size), mode=recipe.interpolation, align_corners=False)
        y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].long()
        return SliceSet(x, y, [(size, size)] * x.shape[0])
    if size is not None and max(h, w) > size:  # shrink to fit, keeping the aspect ratio
        scale = size / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        y = F.interpolate(y[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].long()
        sizes = [(h, w)] * x.shape[0]
    target_h = size or math.ceil(h / multiple) * multiple
    target_w = size or math.ceil(w / multiple) * multiple
    x = F.pad(x, (0, target_w - w, 0, target_h - h), mode="replicate")
    y = F.pad(y, (0, target_w - w, 0, target_h - h))
    return SliceSet(x, y, sizes)


def volume_slices(image: np.ndarray, labels: np.ndarray, axes: Sequence[int], recipe: Recipe,
                  multiple: int, device: torch.device, size: int,
                  spacing: Sequence[float] | None = None) -> SliceSet:
    """Every slice of a labelled volume along each of ``axes`` (a 2D image: itself), brought to
    a common ``size`` x ``size`` so that slices of different volumes and axes batch together.
    ``spacing``: the voxel size along each axis of ``labels`` (for recipes with a pixel size)."""
    if labels.ndim == 2:
        return prepare_slices(image, labels, None, None, recipe, multiple, device, size,
                              pixel_spacing=in_plane_spacing(spacing, None, 2))
    mapping, _ = intensity_map(image, recipe)  # one volume, one mapping, whatever the axis
    sets = [prepare_slices(image, labels, range(labels.shape[a]), a, recipe, multiple, device,
                           size, mapping, in_plane_spacing(spacing, a, 3)) for a in axes]
    return SliceSet.concat(sets)


def split_slices(slices: Sequence[int], seed: int,
                 fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """A ``fraction`` of the slices (at least one once there are three, none for a fraction of
    0) for validation, spread over the volume so that validation is not one end of it."""
    slices = sorted(slices)
    if len(slices) < 3 or fraction <= 0:
        return slices, []
    n_val = max(1, round(len(slices) * fraction))
    rng = np.random.default_rng(seed)
    stride = len(slices) / n_val
    val = sorted({slices[min(len(slices) - 1, int(i * stride + rng.random() * stride))]
                  for i in range(n_val)})
    return [s for s in slices if s not in val], val
