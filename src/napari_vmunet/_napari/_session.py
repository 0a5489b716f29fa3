"""The model the Segment and Fine-tune widgets of one viewer share.

The Segment widget loads a checkpoint; the Fine-tune widget trains a copy of it and, on "Use
for Segment", hands the result back. Each viewer has its own session, so two windows never
see each other's models. No torch here: a model is just an object to this module.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal


@dataclass(frozen=True)
class CurrentModel:
    model: Any
    path: Path | None  # the file it came from; None for unsaved fine-tuned weights
    title: str  # what the model card calls it


class ModelSession:
    """Holds the current model; ``changed`` fires (on the caller's thread: the GUI's) when
    another widget puts a new one in."""

    changed = Signal(object)  # the new CurrentModel

    def __init__(self) -> None:
        self.current: CurrentModel | None = None

    def set(self, model, path: Path | None, title: str) -> None:
        self.current = CurrentModel(model, path, title)
        self.changed.emit(self.current)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> ModelSession:
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = ModelSession()
    return _SESSIONS[viewer]
