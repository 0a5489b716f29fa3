"""The user's corrections kept: labels where each corrected slice is exactly as the user
painted it and every other slice is what the (fine-tuned) model predicts.

After fine-tuning, segmenting again would replace the slices the user corrected by the
model's (close, but not theirs); this puts them back. No torch here.
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

