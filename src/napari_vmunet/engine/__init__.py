"""The engine: segmentation and training as generators of events (:mod:`.events`). No Qt here.

Importing the engine imports no torch: the events and :mod:`.training.settings` are read by the
widgets before a model is loaded. The names below load their modules when first used.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Segmenter": ".inference",
    "segment": ".inference",
    "FineTuner": ".training.finetuner",
    "Trainer": ".training.trainer",
    "TrainingSettings": ".training.settings",
    **dict.fromkeys(("Notice", "SegmentationStarted", "SlicesDone", "SegmentationDone",
                     "TrainingStarted", "TrainingStep", "ValidationResult", "TrainingDone"),
                    ".events"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
