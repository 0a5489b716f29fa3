"""The engine: segmentation and (later) fine-tuning as generators of events. No Qt here."""

from .inference import (
    Notice,
    SegmentationDone,
    SegmentationStarted,
    Segmenter,
    SlicesDone,
    segment,
)

__all__ = ["Notice", "SegmentationDone", "SegmentationStarted", "Segmenter", "SlicesDone",
           "segment"]
