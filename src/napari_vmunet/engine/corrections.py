"""The correction loop's two helpers: which slices to correct next, and labels that keep the
user's corrections.

After fine-tuning, segmenting again would replace the slices the user corrected by the
model's (close, but not theirs): :func:`keep_corrections` puts them back. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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



def slices_to_correct(uncertainty: np.ndarray, count: int,
                      corrected: Sequence[int] = ()) -> list[int]:
    """The ``count`` slices most worth correcting next: those the model is least sure of
    (``SegmentationDone.uncertainty``), most uncertain first, leaving out those already
    corrected."""
    done = set(corrected)
    order = np.argsort(-np.asarray(uncertainty), kind="stable")
    return [int(s) for s in order if int(s) not in done][:max(0, count)]
