"""What long work tells its caller: segmenting and training are generators of these events.

A caller shows slices as they finish, draws a curve, prints, or stops at any event (closing the
generator stops the work). Plain data, no torch: the widgets and the command line read them
without importing the engine's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ..recipes import Recipe


@dataclass
class Notice:
    """Something the user should know (a guessed recipe, replaced NaNs, a smaller batch)."""

    message: str


# -- segmenting --------------------------------------------------------------------------------


@dataclass
class SegmentationStarted:
    slices: int
    batch_size: int
    device: str
    scan_backend: str
    recipe: Recipe


@dataclass
class SlicesDone:
    """Slices ``start:stop`` along the slicing axis are finished; ``labels`` is a view of them
    in the output, shaped (stop - start, *slice shape)."""

    start: int
    stop: int
    total: int
    labels: np.ndarray


@dataclass
class SegmentationDone:
    labels: np.ndarray
    probabilities: np.ndarray | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    # per slice along the slicing axis, with ``uncertainty=True``: the voxels the model is
    # unsure of (:func:`napari_vmunet.engine.inference.uncertain_voxels`)
    uncertainty: np.ndarray | None = None


# -- training ----------------------------------------------------------------------------------


@dataclass
class TrainingStarted:
    train_slices: int
    validation_slices: int
    steps: int
    batch_size: int
    device: str


@dataclass
class TrainingStep:
    step: int
    loss: float
    learning_rate: float
    images_per_second: float
    eta_seconds: float


@dataclass
class ValidationResult:
    step: int
    dice: list[float]  # per foreground class
    mean_dice: float
    best_dice: float
    improved: bool


@dataclass
class TrainingDone:
    best_dice: float
    best_step: int
    steps_run: int
    seconds: float
    stop_reason: str  # "finished", "early stop", "NaN loss"
    history: list[dict] = field(default_factory=list)
