"""Overlap metrics on numpy masks (no torch: scripts and the CLI use them on label files)."""

from __future__ import annotations

import numpy as np


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks (nonzero = inside), pooled over all voxels; 0 when both are
    empty."""
    a, b = np.asarray(predicted) > 0, np.asarray(reference) > 0
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))
