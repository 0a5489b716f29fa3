"""The engine: segmentation and training as generators of events (:mod:`.events`). No Qt here.

Importing the engine imports no torch: the events and :mod:`.training.settings` are read by the
widgets before a model is loaded. The names below load their modules when first used.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "inference": ["Segmenter", "segment"],
    "training.finetuner": ["FineTuner"],
    "training.trainer": ["Trainer"],
    "training.settings": ["TrainingSettings"],
    "events": ["Notice", "SegmentationStarted", "SlicesDone", "SegmentationDone",
               "TrainingStarted", "TrainingStep", "ValidationResult", "TrainingDone"],
})
