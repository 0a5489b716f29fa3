"""The correction loop's helpers: which slices to correct next, and labels that keep the
user's corrections and follow them.

After fine-tuning, segmenting again would replace the slices the user corrected by the
model's (close, but not theirs): :func:`keep_corrections` puts them back. A model tuned on a
few slices of a new structure also finds look-alikes elsewhere in the volume (vessels beside a
tumour, other tissue of the same intensity); :func:`connected_to_corrections` keeps only the
regions that reach a corrected slice's labels, which is what the user pointed at. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def keep_corrections(predicted: np.ndarray, corrected: np.ndarray, slices: Sequence[int],
                     axis: int | None) -> np.ndarray:
    """A copy of ``predicted`` in which the ``slices`` along ``axis`` are ``corrected``'s (a 2D
    image, ``axis`` None: the corrected image itself). Both arrays cover the same voxels."""
    predicted, corrected = np.asarray(predicted), np.asarray(corrected)
    if predicted.shape != corrected.shape:
        raise ValueError(f"the prediction has shape {predicted.shape} but the corrected labels "
                         f"{corrected.shape}; they must cover the same voxels")
    dtype = np.promote_types(predicted.dtype, corrected.dtype)
    if axis is None:
        return corrected.astype(dtype, copy=True)
    merged = predicted.astype(dtype, copy=True)
    index = [slice(None)] * merged.ndim
    index[axis] = list(slices)
    merged[tuple(index)] = corrected[tuple(index)]
    return merged


def connected_to_corrections(merged: np.ndarray, slices: Sequence[int],
                             axis: int | None) -> int:
    """Remove from ``merged`` (labels whose ``slices`` along ``axis`` are the user's, from
    :func:`keep_corrections`), in place, the regions of each class that touch none of that
    class's voxels on the corrected slices; the number of voxels removed. Regions are 3D,
    connected through faces, edges and corners (slices are often thick, and a structure shifts
    between them). A class found on no corrected slice is left as it is: the corrections say
    nothing about it. A corrected slice the user emptied therefore also cuts a region in two:
    what lies beyond it, reaching no correction, goes. A 2D image (``axis`` None) is left as
    it is."""
    if axis is None or merged.ndim != 3 or not len(slices):
        return 0
    removed = 0
    on_corrected = np.zeros(merged.shape, bool)
    index = [slice(None)] * merged.ndim
    index[axis] = list(slices)
    on_corrected[tuple(index)] = True
    everywhere = ndimage.generate_binary_structure(3, 3)
    for c in np.unique(merged[on_corrected]):
        if c == 0:
            continue
        mask = merged == c
        regions, _ = ndimage.label(mask, structure=everywhere)
        unreached = mask & ~np.isin(regions, np.unique(regions[on_corrected & mask]))
        merged[unreached] = 0
        removed += int(np.count_nonzero(unreached))
    return removed


def applied_labels(predicted: np.ndarray, corrected: np.ndarray, slices: Sequence[int],
                   axis: int | None, only_connected: bool = True) -> tuple[np.ndarray, int]:
    """What Apply writes, in the CLI and in napari: ``predicted`` with the corrected ``slices``
    as the user painted them (:func:`keep_corrections`) and, ``only_connected``, without the
    regions that reach none of their labels (:func:`connected_to_corrections`); and how many
    voxels those regions held."""
    merged = keep_corrections(predicted, corrected, slices, axis)
    return merged, connected_to_corrections(merged, slices, axis) if only_connected else 0


def slices_to_correct(uncertainty: np.ndarray, count: int, corrected: Sequence[int] = (),
                      among: Sequence[int] | None = None) -> list[int]:
    """The ``count`` slices most worth correcting next: those the model is least sure of
    (``SegmentationDone.uncertainty``), most uncertain first, leaving out those already
    corrected and, given ``among``, any other slice (:func:`structure_slices`).

    Each suggestion also keeps apart from the corrected slices and the other suggestions: by
    at least half the gap that the corrected and suggested slices would leave if spread evenly
    over ``among`` (or the whole axis), closer only when too few slices are that far apart.
    Without it the suggestions bunched: slices 83 and 84 of white matter corrected on 47, 77
    and 107, two slices that teach the model nearly the same thing (benchmarks/RESULTS.md,
    2026-12-03, "suggestions kept apart")."""
    unsure = np.asarray(uncertainty, dtype=float)
    done = {int(s) for s in corrected}
    pool = range(len(unsure)) if among is None else sorted({int(s) for s in among})
    order = sorted((s for s in pool if s not in done), key=lambda s: -unsure[s])
    gap = len(pool) / (len(done) + count + 1)
    chosen: list[int] = []
    for apart in range(math.ceil(gap / 2), -1, -1):  # closer only when it must
        for s in order:
            if len(chosen) >= count:
                return chosen
            if s not in chosen and all(abs(s - t) >= apart for t in (*done, *chosen)):
                chosen.append(s)
    return chosen


def structure_slices(labels: np.ndarray, axis: int, margin: int = 0) -> list[int]:
    """The slices along ``axis`` from the first holding a label to the last, and ``margin``
    more on each side: where the user's structure is. After Apply, labels beyond them reach no
    correction and are left out anyway, so a slice the model is unsure of far from the
    structure is not worth the user's time (measured: suggestions from the whole volume picked
    such slices and lost 0.05-0.08 Dice of the volume to evenly spaced ones on two of four
    volumes, benchmarks/RESULTS.md 2026-12-03). With one slice more on each side, a brain
    lesion's suggestion fell on an empty slice past its end and lost 0.02-0.03 to evenly spaced
    slices; without, the suggestions were level with them there and better on two other
    volumes (2026-12-04)."""
    along = np.moveaxis(np.asarray(labels), axis, 0)
    holding = np.flatnonzero(along.reshape(along.shape[0], -1).any(1))
    if not holding.size:
        return []
    return list(range(max(0, int(holding[0]) - margin),
                      min(along.shape[0], int(holding[-1]) + margin + 1)))
