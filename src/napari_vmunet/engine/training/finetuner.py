"""Fine-tuning on the slices a user corrected in one image or volume.

    tuner = FineTuner(model, volume, labels, slices=[40, 52, 60], axis=0)
    for event in tuner.run():
        ...
    tuner.restore_best()   # also done at the end of run()
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict

import numpy as np
import torch

from ...recipes import Recipe, recipe_for
from ..device import resolve_device
from ..events import Notice
from ..preprocess import in_plane_spacing
from ..shape_prior import ShapePrior
from .classifier import ClassifierTrainer
from .data import prepare_slices, split_slices
from .settings import TrainingSettings
from .trainer import Trainer


class FineTuner:
    """Fine-tune ``model`` on the corrected slices of one image or volume.

    ``slices``: indices along ``axis`` that the user corrected (None: every slice holding a
    label). ``settings.held_out`` of them (none by default) are kept out of training to
    validate on; otherwise the training slices are also the validation slices (and a notice
    says so). ``settings.learn``: a pixel head on the frozen network learns ("classifier",
    attached in :meth:`run`; apply it with :meth:`shape_prior`) or the network itself
    ("network", any head detached). Labels beyond the model's classes are refused unless
    ``extend_classes`` (the head grows; the existing classes keep their weights).
    ``spacing``: the voxel size along each axis of ``labels``, in mm (recipes that resample
    to a pixel size, and the shape prior, use it).
    """

    def __init__(self, model, image: np.ndarray, labels: np.ndarray,
                 slices: Sequence[int] | None = None, axis: int | None = 0,
                 recipe: Recipe | None = None, settings: TrainingSettings | None = None,
                 device="auto", extend_classes: bool = False,
                 spacing: Sequence[float] | None = None):
        self.settings = settings or TrainingSettings()
        self.device = resolve_device(device)
        image, labels = np.asarray(image), np.asarray(labels)
        self.notes: list[str] = []
        if recipe is None:
            recipe, note = recipe_for(model)
            if note:
                self.notes.append(note)
        self.recipe = recipe
        self.slices, self.axis = _check_inputs(image, labels, slices, axis)
        self._image, self._labels = image, labels  # references; slices are copied in run()
        self._spacing = None if spacing is None else tuple(float(v) for v in spacing)
        self._pixel_spacing = in_plane_spacing(spacing, self.axis, labels.ndim)
        classes_needed = int(labels.max()) + 1 if labels.size else 1
        allowed = max(2, model.config.num_classes)
        if classes_needed > allowed:
            if not extend_classes:
                raise ValueError(
                    f"the labels use values up to {classes_needed - 1} but the model knows "
                    f"{allowed} classes (0..{allowed - 1}); allow extending its head "
                    "(extend_classes / --extend-classes) or relabel"
                )
            model.extend_head(classes_needed)
            self.notes.append(f"the model's head was extended to {classes_needed} classes")
        self.model = model.to(self.device)

        self.trainer: Trainer | None = None

    def run(self) -> Iterator:
        held_out = self.settings.held_out
        train_idx, val_idx = split_slices(self.slices, self.settings.seed, held_out)
        if not val_idx:
            val_idx = train_idx
            self.notes.append(
                f"all {len(self.slices)} corrected slice(s) train the model: the validation "
                "Dice says how well it fits them, not how it does on other slices"
                + ("" if held_out <= 0 else " (correct 3 or more to hold some out)"))
        multiple = self.model.config.size_multiple
        data = prepare_slices(self._image, self._labels, self.slices, self.axis, self.recipe,
                              multiple, self.device, pixel_spacing=self._pixel_spacing)
        position = {s: i for i, s in enumerate(self.slices)}
        train = data.subset([position[s] for s in train_idx])
        validation = data.subset([position[s] for s in val_idx])
        if self.settings.learn == "classifier":
            self.trainer = self._classifier_trainer(train, validation, train_idx, val_idx)
        else:
            self.model.detach_pixel_head()  # the network learns; its own output layer serves
            self.trainer = Trainer(self.model, train, validation, self.settings, self.device,
                                   value_range=self.recipe.value_range)
        for note in self.notes:
            yield Notice(note)
        yield from self.trainer.run()

    def _classifier_trainer(self, train, validation, train_idx, val_idx) -> ClassifierTrainer:
        """A new pixel head, trained on the model grid with the shape prior that the
        training slices give each slice (the others', for a training slice)."""
        classes = self.foreground_classes()
        self.model.attach_pixel_head(priors=len(classes) if self.axis is not None else 0)
        if self.axis is None:  # a 2D image: no other slices to carry a shape to
            return ClassifierTrainer(self.model, train, validation, None, None, self.settings,
                                     self.device)
        rows, cols = np.moveaxis(self._labels, self.axis, 0).shape[1:]
        h, w = train.sizes[0]
        pixel_mm = self._pixel_spacing or (1.0, 1.0)
        labels = train.labels.cpu().numpy()
        prior = ShapePrior({s: labels[i, :h, :w] for i, s in enumerate(train_idx)}, classes,
                           (pixel_mm[0] * rows / h, pixel_mm[1] * cols / w), self.slice_mm)
        size = tuple(train.images.shape[-2:])

        def priors(slices):
            p = prior.stack(slices, leave_out=True)
            p = np.pad(p, ((0, 0), (0, 0), (0, size[0] - h), (0, size[1] - w)), mode="edge")
            return torch.from_numpy(p).to(self.device)

        return ClassifierTrainer(self.model, train, validation, priors(train_idx),
                                 priors(val_idx), self.settings, self.device)

    def foreground_classes(self) -> list[int]:
        """The classes a shape prior is carried for: the model's foreground classes."""
        n = self.model.config.num_classes
        return [1] if n == 1 else list(range(1, n))

    @property
    def slice_mm(self) -> float:
        """The distance between slices along the slicing axis, in mm (1 where unknown)."""
        if self._spacing is None or self.axis is None:
            return 1.0
        return float(self._spacing[self.axis])

    def shape_prior(self) -> ShapePrior | None:
        """The corrected slices' shapes on the image's grid, for applying a model whose pixel
        head reads a prior (:meth:`Segmenter.run`'s ``prior``); None otherwise."""
        if self.axis is None or not self.model.config.head_priors:
            return None
        moved = np.moveaxis(self._labels, self.axis, 0)
        return ShapePrior({s: moved[s] for s in self.slices}, self.foreground_classes(),
                          self._pixel_spacing or (1.0, 1.0), self.slice_mm)

    def restore_best(self) -> None:
        if self.trainer is not None:
            self.trainer.restore_best()

    def provenance(self) -> dict:
        t = self.trainer
        return {
            "fine_tuned_on_slices": list(self.slices), "slicing_axis": self.axis,
            "steps": t.step if t else 0, "best_step": t.best_step if t else 0,
            "validation_dice": t.best_dice if t else None,
            "settings": asdict(self.settings),
        }


def _check_inputs(image, labels, slices, axis):
    if labels.shape != image.shape[: labels.ndim] or labels.ndim not in (2, 3):
        raise ValueError(f"labels have shape {labels.shape} but the image has {image.shape}; "
                         "they must cover the same voxels")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels cannot be negative")
    if labels.ndim == 2:
        if not labels.any():
            raise ValueError("the labels are empty: paint the structure before fine-tuning")
        return [0], None
    axis = axis % 3
    n = labels.shape[axis]
    moved = np.moveaxis(labels, axis, 0)
    if slices is None:
        slices = [i for i in range(n) if moved[i].any()]
        if not slices:
            raise ValueError("no slice holds a label: paint the structure on the slices you "
                             "corrected before fine-tuning")
    slices = sorted({int(s) for s in slices})
    if not slices:
        raise ValueError("no corrected slices given: correct at least one slice first")
    bad = [s for s in slices if not -n <= s < n]
    if bad:
        raise ValueError(f"slice {bad[0]} does not exist: axis {axis} has slices 0..{n - 1}")
    slices = sorted({s % n for s in slices})
    if not any(moved[s].any() for s in slices):
        raise ValueError(f"the corrected slices {slices[:10]} hold no labels at all; paint the "
                         "structure on at least one of them")
    return slices, axis
