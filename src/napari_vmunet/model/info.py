"""What a loaded model's checkpoint said about it: one object, checked when it is made.

A VM-UNet's weights say nothing of how its images were prepared, what its classes are called or
where it came from; our checkpoints store that beside the weights, the authors' files do not.
:class:`ModelInfo` holds it for a model (``model.info``), parsed and validated when a file is
read and again before one is written, so a wrong recipe is refused where it is made, not when
the file is used. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..recipes import Recipe


@dataclass(frozen=True)
class ModelInfo:
    """recipe: the preprocessing the model was trained with (None: not known, as for the
    authors' files). class_names: one name per output (the foreground alone for one class).
    provenance: what made the model (data, slices, steps, parent). path and sha256: the file it
    was loaded from (None for a model made in this session)."""

    recipe: Recipe | None = None
    class_names: tuple[str, ...] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, num_classes: int, recipe=None, class_names=None, provenance=None, *,
              path: Path | None = None, sha256: str | None = None) -> ModelInfo:
        """From what a file (or a caller) gives: a recipe as a :class:`Recipe` or its dict,
        class names as a list. Raises ``ValueError`` saying which part is wrong."""
        return cls(parse_recipe(recipe), parse_class_names(class_names, num_classes),
                   dict(provenance or {}), path, sha256)

    def with_classes(self, num_classes: int) -> ModelInfo:
        """The info of this model's head grown to ``num_classes`` outputs: a one-class model's
        name list gains "background" in front, new classes are called "class <i>"."""
        if not self.class_names:
            return self
        names = list(self.class_names)
        if len(names) == 1 and num_classes > 1:
            names = ["background", *names]
        names += [f"class {i}" for i in range(len(names), num_classes)]
        return replace(self, class_names=tuple(names))


def parse_recipe(recipe) -> Recipe | None:
    """A :class:`Recipe` from a Recipe, its dict (as stored in a file) or None."""
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, Mapping):
        raise ValueError(f"a recipe is a Recipe or its dict, got {type(recipe).__name__}")
    return Recipe.from_dict(recipe)


def parse_class_names(names, num_classes: int) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(
            isinstance(n, str) for n in names):
        raise ValueError(f"class names are a list of strings, got {names!r}")
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names ({', '.join(names)}) for a model of "
                         f"{num_classes} class{'es' if num_classes > 1 else ''}")
    return tuple(names)
