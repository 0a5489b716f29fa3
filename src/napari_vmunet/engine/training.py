"""Fine-tuning on the slices a user corrected, and training on whole data sets.

Like segmentation, training is a generator of small events (a step with its loss and learning
rate, a validation with Dice per class, the end), so the plugin can draw a live curve and stop
at any event, the CLI can print, and tests can iterate. The best weights by validation Dice are
kept in memory all along: stopping early, a NaN loss or closing the generator never loses them
(:meth:`Trainer.restore_best`).

    tuner = FineTuner(model, volume, labels, slices=[40, 52, 60], axis=0)
    for event in tuner.run():
        ...
    tuner.restore_best()   # also done at the end of run()

Recipe: slices are normalised exactly as the Segmenter will see them at inference time
(``engine.preprocess``), so what is learnt is what is used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..recipes import Recipe, recipe_for
from .augment import augment
from .cuda_graphs import GraphedStep
from .device import resolve_device
from .inference import Notice  # one event type for "tell the user", segmenting or training
from .preprocess import (
    IntensityMap,
    in_plane_spacing,
    intensity_map,
    normalise,
    resample,
    resampled_shape,
)


@dataclass(frozen=True)
class TrainingSettings:
    steps: int = 200
    learning_rate: float = 3e-4
    batch_size: int = 8
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    validate_every: int = 20
    patience: int = 8  # validations without improvement before stopping early
    grad_clip: float = 1.0
    decoder_only: bool = False
    augment: bool = True
    zoom: float = 0.1  # augmentation: scale by up to +-10 %
    gamma: float = 0.0  # augmentation: contrast curve x**g, g up to 1 + gamma
    bf16: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.validate_every < 1:
            raise ValueError("steps, batch size and validation interval must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning rate must be in (0, 1), got {self.learning_rate}")


# -- events ----------------------------------------------------------------------------------


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


# -- data ------------------------------------------------------------------------------------


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



# -- losses and metrics ----------------------------------------------------------------------


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + Dice from logits for one class, CE + Dice for several (the authors' BceDice and
    CeDice, computed from logits so that mixed precision is safe)."""
    if logits.shape[1] == 1:
        target = labels[:, None].float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        return bce + (1 - dice.mean())
    ce = F.cross_entropy(logits, labels)
    p = torch.softmax(logits, 1)
    t = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (p * t).sum((0, 2, 3))
    dice = (2 * inter + 1e-5) / ((p * p).sum((0, 2, 3)) + (t * t).sum((0, 2, 3)) + 1e-5)
    return ce + (1 - dice.mean())


def dice_per_class(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class over all given voxels pooled (1.0 when a class is absent
    from both)."""
    classes = [1] if num_classes == 1 else range(1, num_classes)
    scores = []
    for c in classes:
        p, t = predicted == c, labels == c
        denominator = int(p.sum() + t.sum())
        scores.append(1.0 if denominator == 0 else 2 * int((p & t).sum()) / denominator)
    return scores


# -- the loop --------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on a :class:`SliceSet`, validating on another; the shared loop of
    fine-tuning and data-set training. ``ddp_model``, a DistributedDataParallel wrapper of
    ``LogitsOf(model)``, replaces the forward pass when training on several processes."""

    def __init__(self, model, train: SliceSet, validation: SliceSet,
                 settings: TrainingSettings, device: torch.device, ddp_model=None,
                 rank: int = 0, value_range: tuple[float, float] = (0.0, 1.0)):
        self.model, self.train, self.validation = model, train, validation
        self.settings, self.device, self.rank = settings, device, rank
        self.value_range = value_range
        self.forward = ddp_model if ddp_model is not None else model.forward_logits
        self.num_classes = model.config.num_classes
        self.best_state = _cpu_copy(model.state_dict())
        self.best_dice, self.best_step = -1.0, 0
        self.history: list[dict] = []
        self.step = 0
        self.parameters = self._trainable_parameters()
        cuda = device.type == "cuda"
        # On CUDA, AdamW runs fused (one kernel for all parameters) and reads its learning rate
        # from a tensor that the schedule fills, so that a captured step sees each new rate.
        self._learning_rate = (torch.tensor(settings.learning_rate, device=device) if cuda
                               else None)
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=self._learning_rate if cuda else settings.learning_rate,
            weight_decay=settings.weight_decay, fused=cuda or None)
        # One process on CUDA: the whole step is replayed as a CUDA graph (no launch overhead).
        # Under DistributedDataParallel its gradient all-reduce would have to be captured too.
        self._graphed = GraphedStep(self._update) if cuda and ddp_model is None else None
        self.generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)

    def learning_rate(self, step: int) -> float:
        """The rate of 0-based ``step``: a linear warm-up, then a cosine down to 1 % of the peak."""
        s = self.settings
        warmup = max(1, round(s.steps * s.warmup_fraction))
        if step < warmup:
            return s.learning_rate * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, s.steps - warmup))
        return s.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

    def _trainable_parameters(self):
        for name, p in self.model.named_parameters():
            encoder = name.startswith(("vmunet.patch_embed", "vmunet.layers."))
            p.requires_grad_(not (self.settings.decoder_only and encoder))
        return [p for p in self.model.parameters() if p.requires_grad]

    def restore_best(self) -> None:
        self.model.load_state_dict(self.best_state)

    def state(self) -> dict:
        """Everything needed to resume (tensors, numbers and lists only: loadable with
        ``torch.load(weights_only=True)``)."""
        return {
            "step": self.step, "model": _cpu_copy(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "best_state": self.best_state, "best_dice": self.best_dice,
            "best_step": self.best_step, "generator": self.generator.get_state(),
            "history": self.history,
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        # AdamW's moments resume; how it runs is this run's: a state saved on another device
        # or by an earlier version (unfused, its rate a number) must not switch this one's
        # fused kernel or rate tensor off
        saved = state["optimizer"]
        ours = [{k: v for k, v in group.items() if k != "params"}
                for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict({**saved, "param_groups": [
            {**old, **new} for old, new in zip(saved["param_groups"], ours, strict=True)]})
        for group in self.optimizer.param_groups:  # loading copied the rate tensor
            group["lr"] = (self._learning_rate if self._learning_rate is not None
                           else self.settings.learning_rate)
        self.best_state, self.best_dice = state["best_state"], state["best_dice"]
        self.best_step, self.step = state["best_step"], state["step"]
        self.generator.set_state(state["generator"])
        self.history = list(state["history"])

    def run(self) -> Iterator:
        try:
            yield from self._run()
        finally:  # finished, stopped or failed: the CUDA graph's memory goes back
            if self._graphed is not None:
                self._graphed.release()
                self.optimizer.zero_grad(set_to_none=True)  # the gradients live in its memory

    def _run(self) -> Iterator:
        s = self.settings
        # Stochastic depth draws from torch's global generator: seeding it makes a run
        # repeatable (batches and augmentation use self.generator).
        torch.manual_seed(s.seed * 1000 + self.rank + self.step)
        start = time.perf_counter()
        batch = min(s.batch_size, max(1, len(self.train)))
        yield TrainingStarted(len(self.train), len(self.validation), s.steps, batch,
                              str(self.device))
        first_step = self.step
        stale, reason = 0, "finished"
        seen = 0
        while self.step < s.steps:
            self.model.train()
            index = torch.randint(len(self.train), (batch,), generator=self.generator)
            x, y = self.train.images[index], self.train.labels[index]
            if s.augment:
                x, y = augment(x, y, self.generator, value_range=self.value_range,
                               max_zoom=s.zoom, max_gamma=s.gamma)
            try:
                loss = self._step(x, y)
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise MemoryError("one slice does not fit in GPU memory for training; use "
                                      "--device cpu or a smaller model") from None
                batch //= 2
                torch.cuda.empty_cache()
                yield Notice(f"out of GPU memory: continuing with batches of {batch}")
                continue
            self.step += 1
            seen += batch
            if not math.isfinite(loss):
                reason = "NaN loss"
                yield Notice(f"the loss became {loss} at step {self.step}: training stopped and "
                             f"the best weights (step {self.best_step}) restored; try a lower "
                             "learning rate")
                break
            elapsed = time.perf_counter() - start
            rate = seen / elapsed
            eta = elapsed / (self.step - first_step) * (s.steps - self.step)
            lr = self.learning_rate(self.step - 1)  # the rate the step just taken used
            self.history.append({"step": self.step, "loss": loss, "lr": lr})
            yield TrainingStep(self.step, loss, lr, rate, eta)
            if self.step % s.validate_every == 0 or self.step == s.steps:
                result = self.validate()
                yield result
                stale = 0 if result.improved else stale + 1
                if stale >= s.patience:
                    reason = "early stop"
                    yield Notice(f"no better validation Dice for {stale} validations: stopped "
                                 f"early at step {self.step}")
                    break
        self.restore_best()
        yield TrainingDone(self.best_dice, self.best_step, self.step,
                           time.perf_counter() - start, reason, self.history)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step on a batch at the schedule's rate; the loss."""
        rate = self.learning_rate(self.step)
        if self._learning_rate is not None:
            self._learning_rate.fill_(rate)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = rate
        return float((self._graphed or self._update)(x, y))

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward and AdamW on one batch; the loss as a tensor. On CUDA the
        host never waits on the GPU here, so that the step can be captured as a CUDA graph."""
        bf16 = self.settings.bf16 and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = self.forward(x)
        loss = segmentation_loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # gradients that are not finite (a NaN loss, an overflow) must not reach the weights
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        if self._learning_rate is None:
            if torch.isfinite(norm):
                self.optimizer.step()
        else:
            # fused AdamW skips the whole update itself when handed ``found_inf``, as under
            # GradScaler; ``capturable`` only allows the capture and leaves its arithmetic as is
            self.optimizer.found_inf = (~torch.isfinite(norm)).float()
            for group in self.optimizer.param_groups:
                group["capturable"] = torch.cuda.is_current_stream_capturing()
            self.optimizer.step()
            del self.optimizer.found_inf
        return loss.detach()

    @torch.no_grad()
    def validate(self) -> ValidationResult:
        self.model.eval()
        predicted, truth = [], []
        bf16 = self.settings.bf16 and self.device.type == "cuda"
        for start in range(0, len(self.validation), 8):
            x = self.validation.images[start:start + 8]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                logits = self.model.forward_logits(x).float()
            pred = (logits[:, 0] >= 0).long() if self.num_classes == 1 else logits.argmax(1)
            for i, (h, w) in enumerate(self.validation.sizes[start:start + 8]):
                predicted.append(pred[i, :h, :w].flatten())
                truth.append(self.validation.labels[start + i, :h, :w].flatten())
        dice = dice_per_class(torch.cat(predicted), torch.cat(truth), self.num_classes)
        mean = float(np.mean(dice))
        improved = mean > self.best_dice
        if improved:
            self.best_dice, self.best_step = mean, self.step
            self.best_state = _cpu_copy(self.model.state_dict())
        self.history.append({"step": self.step, "dice": dice, "mean_dice": mean})
        return ValidationResult(self.step, dice, mean, self.best_dice, improved)


class LogitsOf(torch.nn.Module):
    """``model.forward_logits`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_logits(x)


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


# -- fine-tuning on corrected slices ---------------------------------------------------------


class FineTuner:
    """Fine-tune ``model`` on the corrected slices of one image or volume.

    ``slices``: indices along ``axis`` that the user corrected (None: every slice holding a
    label). With three or more, about a fifth (at least one) are held out for validation;
    with fewer, training slices are also the validation slices (and a notice says so).
    Labels beyond the model's classes are refused unless ``extend_classes`` (the head grows;
    the existing classes keep their weights). ``spacing``: the voxel size along each axis of
    ``labels``, for recipes that resample to a pixel size.
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
            extend_head(model, classes_needed)
            self.notes.append(f"the model's head was extended to {classes_needed} classes")
        self.model = model.to(self.device)

        self.trainer: Trainer | None = None

    def run(self) -> Iterator:
        train_idx, val_idx = split_slices(self.slices, self.settings.seed)
        if not val_idx:
            val_idx = train_idx
            self.notes.append(f"only {len(self.slices)} corrected slice(s): validating on the "
                              "training slices (correct 3 or more for an honest validation)")
        multiple = self.model.config.size_multiple
        data = prepare_slices(self._image, self._labels, self.slices, self.axis, self.recipe,
                              multiple, self.device, pixel_spacing=self._pixel_spacing)
        position = {s: i for i, s in enumerate(self.slices)}
        train = data.subset([position[s] for s in train_idx])
        validation = data.subset([position[s] for s in val_idx])
        self.trainer = Trainer(self.model, train, validation, self.settings, self.device,
                               value_range=self.recipe.value_range)
        for note in self.notes:
            yield Notice(note)
        yield from self.trainer.run()

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


def split_slices(slices: Sequence[int], seed: int,
                 fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """A ``fraction`` of the slices (at least one once there are three) for validation, spread
    over the volume so that validation is not one end of it."""
    slices = sorted(slices)
    if len(slices) < 3:
        return slices, []
    n_val = max(1, round(len(slices) * fraction))
    rng = np.random.default_rng(seed)
    stride = len(slices) / n_val
    val = sorted({slices[min(len(slices) - 1, int(i * stride + rng.random() * stride))]
                  for i in range(n_val)})
    return [s for s in slices if s not in val], val


def extend_head(model, num_classes: int) -> None:
    """Grow the head to ``num_classes`` keeping what it knows. A one-class (sigmoid) model
    becomes [background logit 0, its logit], which gives the same probabilities under softmax;
    new classes start with small weights and a low bias, i.e. improbable."""
    old = model.vmunet.final_conv
    old_classes = model.config.num_classes
    new = torch.nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
    with torch.no_grad():
        new.weight.normal_(0, 1e-3)
        if old_classes == 1:
            new.weight[0].zero_()
            new.bias[0] = 0.0
            new.weight[1] = old.weight[0]
            new.bias[1] = old.bias[0]
            first_new = 2
        else:
            new.weight[:old_classes] = old.weight
            new.bias[:old_classes] = old.bias
            first_new = old_classes
        # e^-10 of the mass: existing predictions are unchanged, yet the gradient of the
        # cross-entropy for a painted new class is strong.
        new.bias[first_new:] = min(0.0, float(old.bias.min())) - 10.0
    model.vmunet.final_conv = new
    model.config = replace(model.config, num_classes=num_classes)
    names = getattr(model, "class_names", None)
    if names:
        base = ["background", *names] if old_classes == 1 else list(names)
        model.class_names = base + [f"class {i}" for i in range(len(base), num_classes)]
