"""How a training run goes: one settings class, its defaults read by the widgets and the CLI.

No torch here: the Fine-tune widget shows these defaults before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

LEARN = ("classifier", "network")


@dataclass(frozen=True)
class TrainingSettings:
    """Fine-tuning a pixel classifier on a few corrected slices, by default;
    :data:`FINE_TUNING_NETWORK` has the defaults for fine-tuning the network itself and
    :data:`DATA_SET_TRAINING` those for training it on whole data sets."""

    # The classifier's: a small MLP on normalised inputs (AdamW, cosine schedule). 300 steps
    # rather than 200 lifted the lung CT tumour from 0.85 to 0.86 Dice (benchmarks/RESULTS.md,
    # 2026-12-04); a step costs milliseconds.
    steps: int = 300
    learning_rate: float = 3e-3
    batch_size: int = 8
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    validate_every: int = 20
    patience: int = 8  # validations without improvement before stopping early
    grad_clip: float = 1.0
    # Measured on four real volumes (benchmarks/RESULTS.md, 2026-12-03): training the decoder
    # on all three corrected slices generalised best and repeatably (seeds within 0.02 Dice);
    # the whole model, or a slice held out of three, left runs that collapsed to 0 on a seed.
    decoder_only: bool = True
    # What learns when fine-tuning: "classifier", a pixel head on the frozen network's
    # features and the corrected slices' shape (seconds, on a CPU too), or "network" (the
    # decoder, or the whole model without decoder_only). Measured with three corrected slices
    # on five real volumes, the classifier generalised better on four (+0.08 to +0.11 Dice)
    # and as well on the CT sample, 20-30x faster on a CPU (benchmarks/RESULTS.md, 2026-12-03
    # "a pixel classifier instead of training the network", and 2026-12-04).
    learn: str = "classifier"
    held_out: float = 0.0  # the share of corrected slices kept for validation (0: none)
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
        if self.learn not in LEARN:
            raise ValueError(f"learn must be one of {', '.join(LEARN)}, got {self.learn!r}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"the held-out share must be in [0, 1), got {self.held_out}")


FINE_TUNING = TrainingSettings()
# The network (its decoder) learns at a tenth of the classifier's rate, and each step is a
# forward and backward pass of the model: seconds on a CPU.
FINE_TUNING_NETWORK = replace(FINE_TUNING, learn="network", steps=200, learning_rate=3e-4)


def fine_tuning(learn: str = FINE_TUNING.learn) -> TrainingSettings:
    """The fine-tuning defaults when ``learn`` learns ("classifier" or "network")."""
    if learn not in LEARN:
        raise ValueError(f"learn must be one of {', '.join(LEARN)}, got {learn!r}")
    return FINE_TUNING if learn == "classifier" else FINE_TUNING_NETWORK

# Many volumes, every slice: longer, a higher rate, bigger batches, and augmentation wide
# enough for other voxel sizes and scanners.
DATA_SET_TRAINING = replace(FINE_TUNING_NETWORK, steps=2000, learning_rate=1e-3, batch_size=16,
                            zoom=0.25, gamma=0.4, decoder_only=False, held_out=0.1)
