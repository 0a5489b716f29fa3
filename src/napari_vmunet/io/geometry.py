"""Where an image's voxels are: the :class:`Geometry` every format reads and writes.

No torch, no Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_MM_PER_UNIT = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "m": 1000.0, "meter": 1000.0,
                "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "nm": 1e-6}


@dataclass
class Geometry:
    """Where an array's voxels are in the world.

    ``affine`` maps (index along spatial axis 0, 1, 2, 1) to world millimetres; for a 2D image
    the third index is unused. ``spacing`` is the voxel size along each spatial axis;
    ``spatial_axes`` are the array axes that are space (the rest is ``channel_axis``);
    ``world`` names the world frame ("RAS" for NIfTI, the file's own for NRRD, None if unknown).
    ``header`` is what the format needs to write a matching file (nibabel header, NRRD fields,
    TIFF resolution); ``axis_names`` are for display.
    """

    affine: np.ndarray
    spacing: tuple[float, ...]
    spatial_axes: tuple[int, ...]
    channel_axis: int | None = None
    world: str | None = None
    units: str = "mm"
    axis_names: tuple[str, ...] = ()
    source_format: str = "array"
    header: Any = field(default=None, repr=False)

    @classmethod
    def identity(cls, shape: tuple[int, ...], channel_axis: int | None = None) -> Geometry:
        spatial = tuple(i for i in range(len(shape)) if i != channel_axis)
        return cls(np.eye(4), (1.0,) * len(spatial), spatial, channel_axis, units="pixel")

    def for_labels(self) -> Geometry:
        """The geometry of an array of this image's spatial shape (channels dropped)."""
        return replace(self, spatial_axes=tuple(range(len(self.spatial_axes))),
                       channel_axis=None)

    def spacing_mm(self) -> tuple[float, ...] | None:
        """The voxel size in millimetres, or None when the file does not say (pixels, or a
        unit that is not a length)."""
        factor = _MM_PER_UNIT.get(self.units)
        return None if factor is None else tuple(s * factor for s in self.spacing)

    def axial_axis(self) -> int:
        """The array axis to slice along by default: the spatial axis closest to the world's
        superior-inferior direction when the orientation is known (axial slices), else the
        axis with the coarsest spacing, else the first."""
        n = len(self.spatial_axes)
        if n < 3:
            return self.spatial_axes[0]
        if self.world is not None:
            directions = self.affine[:3, :3]
            norms = np.linalg.norm(directions, axis=0)
            alignment = np.abs(directions[2]) / np.where(norms > 0, norms, 1)
            best = int(np.argmax(alignment))
            if alignment[best] > 0.5:
                return self.spatial_axes[best]
        coarsest = int(np.argmax(self.spacing))
        if self.spacing[coarsest] > min(self.spacing) * 1.01:
            return self.spatial_axes[coarsest]
        return self.spatial_axes[0]
