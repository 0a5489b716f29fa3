"""The training loop shared by fine-tuning and data-set training.

A generator of events (:mod:`..events`): a step with its loss and learning rate, a validation
with Dice per class, the end. The best weights by validation Dice are kept in memory all along:
stopping early, a NaN loss or closing the generator never loses them (:meth:`Trainer.restore_best`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import torch

from ..augment import augment
from ..cuda_graphs import GraphedStep
from ..events import Notice, TrainingDone, TrainingStarted, TrainingStep, ValidationResult
from ..memory import halved_batch
from .data import SliceSet
from .losses import dice_per_class, predicted_labels, segmentation_loss
from .settings import TrainingSettings


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
        self.best_state = cpu_copy(model.state_dict())
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
            "step": self.step, "model": cpu_copy(self.model.state_dict()),
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
                batch, message = halved_batch(batch, self.device, "one slice for training")
                yield Notice(message)
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
            pred = predicted_labels(logits, self.num_classes)
            for i, (h, w) in enumerate(self.validation.sizes[start:start + 8]):
                predicted.append(pred[i, :h, :w].flatten())
                truth.append(self.validation.labels[start + i, :h, :w].flatten())
        dice = dice_per_class(torch.cat(predicted), torch.cat(truth), self.num_classes)
        mean = float(np.mean(dice))
        improved = mean > self.best_dice
        if improved:
            self.best_dice, self.best_step = mean, self.step
            self.best_state = cpu_copy(self.model.state_dict())
        self.history.append({"step": self.step, "dice": dice, "mean_dice": mean})
        return ValidationResult(self.step, dice, mean, self.best_dice, improved)


class LogitsOf(torch.nn.Module):
    """``model.forward_logits`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_logits(x)


def cpu_copy(state: dict) -> dict:
    """A state_dict's tensors copied to the CPU (kept weights must not follow later steps)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
