"""Training a pixel head (:mod:`...model.pixel_head`) on a few corrected slices: seconds, on a
CPU too, since the network itself does not learn.

The network runs once over the corrected slices; its features there, the intensity filters and
the shape prior are sampled into a table of pixels (at most MAX_PIXELS_PER_CLASS of a class per
slice, stored as float16), and the head's MLP is fitted on that table: each step draws as many
pixels of every class, weighted back to the class's share of the slices' area, so that the
head learns the true odds of a pixel being the structure (a rare structure stays rare). The
prior each corrected slice trains with is the one the *other* corrected slices give it
(:class:`..shape_prior.ShapePrior` with ``leave_out``): what the head will see on the slices
the user did not paint. Weighting by a subsample's share instead, or hiding the prior in a
quarter of the steps (to teach the head to do without one), cost the lung CT tumour 0.04-0.13
Dice (benchmarks/RESULTS.md, 2026-12-04); a model saved from here therefore expects the prior
(the Segmenter says so when it gets none). Events are the network trainer's (:mod:`..events`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..events import TrainingDone, TrainingStarted, TrainingStep, ValidationResult
from .data import SliceSet
from .losses import dice_per_class, predicted_labels
from .settings import TrainingSettings
from .trainer import cpu_copy

PIXELS_PER_CLASS = 2048  # per step
MAX_PIXELS_PER_CLASS = 150_000  # per slice kept in the table: all of a 384² slice


class ClassifierTrainer:
    """Fits ``model.pixel_head`` on ``train`` (with ``train_priors``, (n, priors, H, W) in mm
    on the model grid, or None) and reports Dice on ``validation`` (with its priors)."""

    def __init__(self, model, train: SliceSet, validation: SliceSet,
                 train_priors: torch.Tensor | None, validation_priors: torch.Tensor | None,
                 settings: TrainingSettings, device: torch.device):
        if model.pixel_head is None:
            raise ValueError("the model has no pixel head to train (attach_pixel_head)")
        self.model, self.head = model, model.pixel_head
        self.train, self.validation = train, validation
        self.train_priors, self.validation_priors = train_priors, validation_priors
        self.settings, self.device = settings, device
        self.num_classes = model.config.num_classes
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.step, self.best_dice, self.best_step = 0, -1.0, 0
        self.history: list[dict] = []
        self._validation_inputs = None
        self.best_state: dict | None = None

    def run(self) -> Iterator:
        s = self.settings
        start = time.perf_counter()
        yield TrainingStarted(len(self.train), len(self.validation), s.steps,
                              PIXELS_PER_CLASS, str(self.device))
        torch.manual_seed(s.seed)
        for p in self.model.parameters():
            p.requires_grad_(False)
        head = self.head
        with torch.no_grad():
            table, labels, counts, mean, std = self._pixel_table()
            head.mean.copy_(mean)
            head.std.copy_(std.clamp_min(1e-6))
        for p in head.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.parameters(), lr=s.learning_rate,
                                      weight_decay=s.weight_decay)
        classes = torch.unique(labels)
        members = [torch.nonzero(labels == c)[:, 0] for c in classes]
        share = counts[classes] / counts.sum()
        # each class's pixels of a step weigh the class's share of the slices' area
        weight = (share.repeat_interleave(PIXELS_PER_CLASS) * len(members)).to(self.device)
        head.train()
        while self.step < s.steps:
            rate = s.learning_rate * 0.5 * (1 + np.cos(np.pi * self.step / s.steps))
            for group in optimizer.param_groups:
                group["lr"] = rate
            index = torch.cat([m[torch.randint(len(m), (PIXELS_PER_CLASS,),
                                               generator=self.generator)] for m in members])
            logits = head.classify(table[index].to(self.device, torch.float32))
            target = labels[index].to(self.device)
            if self.num_classes == 1:
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(),
                                                          weight=weight)
            else:
                loss = (F.cross_entropy(logits, target, reduction="none") * weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.step += 1
            elapsed = time.perf_counter() - start
            value = float(loss.detach())
            self.history.append({"step": self.step, "loss": value, "lr": rate})
            yield TrainingStep(self.step, value, rate, self.step * len(index) / elapsed,
                               elapsed / self.step * (s.steps - self.step))
            if self.step % s.validate_every == 0 or self.step == s.steps:
                yield self.validate()
        head.eval()
        for p in head.parameters():
            p.requires_grad_(False)
        yield TrainingDone(self.best_dice, self.best_step, self.step,
                           time.perf_counter() - start, "finished", self.history)

    def restore_best(self) -> None:
        """Back to the weights of the last validation (stopped between two, the steps after
        it are dropped). The head trains for a fixed budget and keeps its last weights, not the
        best on the slices it was fitted on, which says little about the others."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    @torch.no_grad()
    def _pixel_table(self):
        """Every class's pixels of the training slices (up to MAX_PIXELS_PER_CLASS per slice,
        drawn at random) as rows of features, float16 on the CPU; their labels; how many
        pixels of each class the slices hold in all (the table's rows of a class stand for
        them); and the rows' mean and standard deviation (float32, from float64 sums)."""
        rows, labels = [], []
        counts = torch.zeros(max(2, self.num_classes))
        total = square = 0.0
        for i in range(len(self.train)):
            h, w = self.train.sizes[i]
            features = self._features(self.train, self.train_priors, i)[0, :, :h, :w]
            y = self.train.labels[i, :h, :w].flatten().cpu()
            features = features.flatten(1).T.cpu()
            for c in torch.unique(y):
                where = torch.nonzero(y == c)[:, 0]
                counts[c] += len(where)
                if len(where) > MAX_PIXELS_PER_CLASS:
                    keep = torch.randperm(len(where), generator=self.generator)
                    where = where[keep[:MAX_PIXELS_PER_CLASS]]
                kept = features[where].double()
                total, square = total + kept.sum(0), square + (kept * kept).sum(0)
                rows.append(kept.half())
                labels.append(y[where])
        table = torch.cat(rows)
        mean = total / len(table)
        std = (square / len(table) - mean * mean).clamp_min(0).sqrt()
        return table, torch.cat(labels), counts, mean.float(), std.float()

    def _network(self, x: torch.Tensor):
        """The network's part of the head's inputs, in the precision the Segmenter will use
        (bf16 autocast on CUDA): the head learns the features it will be given."""
        bf16 = self.settings.bf16 and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            skips, decoded = self.model.head_inputs(x)
        return [t.float() for t in skips], decoded.float()

    def _features(self, data: SliceSet, priors, i: int) -> torch.Tensor:
        x = data.images[i : i + 1]
        skips, decoded = self._network(x)
        prior = None if priors is None else priors[i : i + 1]
        return self.head.features(x, skips, decoded, prior)

    @torch.no_grad()
    def validate(self) -> ValidationResult:
        if self._validation_inputs is None:  # the network's part is the same every time
            images, priors = self.validation.images, self.validation_priors
            self._validation_inputs = [
                (images[i : i + 1], *self._network(images[i : i + 1]),
                 None if priors is None else priors[i : i + 1]) for i in range(len(images))]
        self.head.eval()
        predicted, truth = [], []
        for i, inputs in enumerate(self._validation_inputs):
            pred = predicted_labels(self.head(*inputs).float(), self.num_classes)
            h, w = self.validation.sizes[i]
            predicted.append(pred[0, :h, :w].flatten())
            truth.append(self.validation.labels[i, :h, :w].flatten())
        self.head.train()
        dice = dice_per_class(torch.cat(predicted), torch.cat(truth), self.num_classes)
        mean = float(np.mean(dice))
        improved = mean > self.best_dice
        # what is kept is the latest validated weights, and "best" reports them
        self.best_dice, self.best_step = mean, self.step
        self.best_state = cpu_copy(self.model.state_dict())
        self.history.append({"step": self.step, "dice": dice, "mean_dice": mean})
        return ValidationResult(self.step, dice, mean, self.best_dice, improved)
