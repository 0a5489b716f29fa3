"""The training loss and the validation metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def predicted_labels(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, classes, H, W) logits -> (B, H, W) labels: above even odds for one class (a
    logit of 0), the most likely class otherwise."""
    return (logits[:, 0] >= 0).long() if num_classes == 1 else logits.argmax(1)


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
