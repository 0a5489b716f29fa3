"""Clean-up of a finished segmentation, as a recipe asks for it.

A slice-by-slice model sees one slice at a time; in 3D its mask can carry small islands (a bit
of eye or neck that looks like cortex on one slice) and pinholes. Brain-extraction tools (BET,
ROBEX) keep one connected brain; :func:`keep_largest` does the same for every class.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest(labels: np.ndarray, num_classes: int) -> int:
    """Keep only the largest connected region of each class (face connectivity, in as many
    dimensions as ``labels`` has) and fill the background holes enclosed by it, in place.

    Returns the number of voxels changed."""
    changed = 0
    for value in range(1, max(2, num_classes)):
        mask = labels == value
        if not mask.any():
            continue
        regions, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(regions.ravel())
            sizes[0] = 0
            keep = regions == int(np.argmax(sizes))
            dropped = mask & ~keep
            labels[dropped] = 0
            changed += int(dropped.sum())
            mask = keep
        # Only background is filled: another class inside this one is the user's business.
        holes = ndimage.binary_fill_holes(mask) & (labels == 0)
        labels[holes] = value
        changed += int(holes.sum())
    return changed
