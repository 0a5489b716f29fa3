"""The corrected slices' shapes carried to every other slice of the volume: where the user's
structure probably is, before looking at the image.

Between two corrected slices the shape is interpolated (the signed distances to their outlines,
weighted by how near each slice is: shape-based interpolation, as 3D Slicer's "fill between
slices"); beyond the first and last corrected slice it is extrapolated from the last two and
shrinks by at least SHRINK_PER_MM per mm, as anatomy tapers towards its ends. It is an input of
the pixel head (:mod:`..model.pixel_head`), which learns how far to trust it against the image.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

OUTSIDE_MM = 1000.0  # the distance to a class that a slice does not hold: far outside
# Beyond the last corrected slice the outline moves in by at least this many mm per mm. 1 mm
# erased a lung tumour and a brain lesion within two 5-6.5 mm slices; 0.5 lifted both
# (0.80 -> 0.84 Dice on the tumour's other slices) and did no harm on the lesion and on white
# matter (benchmarks/RESULTS.md, 2026-12-04).
SHRINK_PER_MM = 0.5


class ShapePrior:
    """``corrected``: slice index -> that slice's 2D labels (all the same shape); ``classes``:
    the foreground classes to carry (one channel each); ``pixel_mm``: the (row, column) pixel
    size and ``slice_mm`` the distance between slices, in mm (1 where unknown).

    ``prior(index)`` is (classes, h, w) float32, signed distance in mm, negative inside;
    ``leave_out=True`` carries the other corrected slices' shapes to a corrected slice as if
    it were not corrected (to train on: what the prior looks like where the user did not
    paint); the only corrected slice gets its own shape as carried to its neighbour."""

    def __init__(self, corrected: Mapping[int, np.ndarray], classes: Sequence[int],
                 pixel_mm: tuple[float, float] = (1.0, 1.0), slice_mm: float = 1.0):
        if not corrected:
            raise ValueError("a shape prior needs at least one corrected slice")
        self.slices = sorted(int(s) for s in corrected)
        self.classes = [int(c) for c in classes]
        self.slice_mm = float(slice_mm) if slice_mm and slice_mm > 0 else 1.0
        sampling = tuple(float(p) if p and p > 0 else 1.0 for p in pixel_mm)
        self._distance = {s: np.stack([_signed_distance(np.asarray(corrected[s]) == c, sampling)
                                       for c in self.classes]) for s in self.slices}
        self.shape = next(iter(self._distance.values())).shape

    def __call__(self, index: int, leave_out: bool = False) -> np.ndarray:
        index = int(index)
        if index in self._distance and not leave_out:
            return self._distance[index]
        known = [s for s in self.slices if s != index]
        if not known:
            # one corrected slice, left out: as its neighbour would see it, one slice on (with
            # nothing at all to go on, the head learned to ignore the prior it then gets)
            return self._shrunk(index, 1)
        below = [s for s in known if s < index]
        above = [s for s in known if s > index]
        if below and above:
            a, b = below[-1], above[0]
            return ((b - index) * self._distance[a] + (index - a) * self._distance[b]) / (b - a)
        side = below[::-1] if below else above  # nearest first
        a = side[0]
        shrunk = self._shrunk(a, abs(index - a))
        if len(side) > 1:
            b = side[1]
            trend = self._distance[a] + (self._distance[a] - self._distance[b]) * (
                abs(index - a) / abs(a - b))
            shrunk = np.maximum(trend, shrunk)
        return shrunk.astype(np.float32, copy=False)

    def _shrunk(self, index: int, slices: int) -> np.ndarray:
        """Corrected slice ``index``'s shape carried ``slices`` slices on, shrinking."""
        return self._distance[index] + slices * self.slice_mm * SHRINK_PER_MM

    def stack(self, indices: Sequence[int], leave_out: bool = False) -> np.ndarray:
        """(len(indices), classes, h, w)."""
        return np.stack([self(i, leave_out) for i in indices])


def _signed_distance(mask: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """mm to the outline: negative inside, positive outside; far outside for an empty mask."""
    if not mask.any():
        return np.full(mask.shape, OUTSIDE_MM, np.float32)
    if mask.all():
        return np.full(mask.shape, -OUTSIDE_MM, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return (outside - inside).astype(np.float32)
