"""Preprocessing recipes: how a checkpoint expects its images, as data that travels with it.

A checkpoint is only meaningful with the preprocessing it was trained with: the authors' ISIC
models see RGB in [0, 255] at 256², their Synapse models CT windowed to [0, 1] at 224². A
:class:`Recipe` says exactly that (intensity mapping, colour, input size, interpolation, how
outputs become labels) and is stored in our checkpoints' metadata. The authors' ``.pth`` files
carry none, so :func:`recipe_for` guesses from the number of classes and says it guessed.

No torch here: recipes are read by the widgets before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from numbers import Real
from typing import Any, Literal

# Level/width in Hounsfield units; the usual radiology presets.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft tissue": (50.0, 350.0),
    "synapse": (75.0, 400.0),  # the authors' clip to [-125, 275] HU
}


@dataclass(frozen=True)
class Recipe:
    """How to turn raw pixel values into model input, and model output into labels.

    intensity:
        ``"minmax"``: each 2D image is rescaled to ``value_range`` (the authors' ISIC pipeline);
        ``"window"``: values are clipped to ``window`` = (level, width) and mapped to
        ``value_range`` (CT in Hounsfield units);
        ``"percentile"``: the whole volume's ``percentiles`` are mapped to ``value_range`` and
        values outside are clipped (MRI, whose intensities have no absolute scale).
    input_size:
        slices are resized to ``input_size`` x ``input_size`` (the training size), or, when None,
        run at native resolution, padded to the model's multiple of 32.
    pixel_size:
        at native resolution, slices are first resampled so that one pixel is ``pixel_size``
        (in the image's units, mm) on each side, as in training; None runs the pixels as they
        are. Images whose voxel size is unknown run as they are (with a notice).
    labels_at_input_size:
        True: argmax/threshold at the model's size, then nearest-neighbour back (the authors'
        Synapse test); False: probabilities are resized back, then thresholded (smoother edges).
    keep_largest:
        after the whole image is done, keep only the largest connected region of each class
        (3D in a volume) and fill the holes inside it: one brain, no islands in the neck.
    """

    name: str
    description: str
    intensity: Literal["minmax", "window", "percentile"]
    value_range: tuple[float, float] = (0.0, 1.0)
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    color: Literal["gray", "rgb"] = "gray"
    input_size: int | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    pixel_size: float | None = None
    labels_at_input_size: bool = False
    threshold: float = 0.5
    keep_largest: bool = False
    class_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self):
        if self.intensity not in ("minmax", "window", "percentile"):
            raise ValueError(f"unknown intensity mapping {self.intensity!r}")
        if self.intensity == "window" and (self.window is None or self.window[1] <= 0):
            raise ValueError("a 'window' recipe needs window=(level, width) with width > 0")
        if self.color not in ("gray", "rgb"):
            raise ValueError(f"color must be 'gray' or 'rgb', got {self.color!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got "
                             f"{self.interpolation!r}")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError("input_size must be positive or None (native resolution)")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise ValueError(f"pixel_size must be positive or None, got {self.pixel_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        for name in ("value_range", "window", "percentiles", "class_names"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    def with_window(self, level: float, width: float) -> Recipe:
        """The same recipe on another CT window (level/width in HU)."""
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        return replace(self, intensity="window", window=(float(level), float(width)),
                       name=f"{self.name} (window {level:g}/{width:g})")

    def at_native_resolution(self) -> Recipe:
        """Run at the image's own resolution (padded to the model's multiple), not resized."""
        return replace(self, input_size=None, name=f"{self.name} (native resolution)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        """The recipe a dict describes (as stored in a checkpoint), checked field by field.
        Raises ``ValueError`` that names the recipe and what is wrong with it. Fields this
        version does not know (from a newer one) are left out."""
        name = d.get("name") if isinstance(d.get("name"), str) else None
        try:
            missing = [f for f in _REQUIRED if f not in d]
            if missing:
                raise ValueError(f"it has no {' and no '.join(missing)}")
            values = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            for key, value in values.items():
                _check_field(key, value)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"recipe {name or dict(d)!r} is not a valid recipe: {exc}") from None


_REQUIRED = ("name", "description", "intensity")
_PAIRS = ("value_range", "window", "percentiles")


def _check_field(key: str, value: Any) -> None:
    """The types Recipe's fields take (its own checks then see the values)."""
    def number(v):
        return isinstance(v, Real) and not isinstance(v, bool)

    if key in ("name", "description", "intensity", "color", "interpolation"):
        ok = isinstance(value, str)
    elif key in _PAIRS:
        ok = (value is None and key == "window") or (
            isinstance(value, (list, tuple)) and len(value) == 2 and all(map(number, value)))
    elif key == "input_size":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif key in ("pixel_size", "threshold"):
        ok = (value is None and key == "pixel_size") or number(value)
    elif key in ("labels_at_input_size", "keep_largest"):
        ok = isinstance(value, bool)
    else:  # class_names
        ok = value is None or (isinstance(value, (list, tuple))
                               and all(isinstance(n, str) for n in value))
    if not ok:
        raise ValueError(f"{key} cannot be {value!r}")


RECIPES: dict[str, Recipe] = {
    "isic": Recipe(
        "isic", "the authors' ISIC skin-lesion preprocessing: RGB, each image min-max to "
        "[0, 255], bilinear resize to 256², sigmoid > 0.5",
        intensity="minmax", value_range=(0.0, 255.0), color="rgb", input_size=256,
        class_names=("lesion",),
    ),
    "synapse-ct": Recipe(
        "synapse-ct", "the authors' Synapse CT preprocessing: HU clipped to [-125, 275] -> "
        "[0, 1], slices resized to 224² (cubic), argmax, nearest back",
        intensity="window", window=CT_WINDOWS["synapse"], input_size=224,
        interpolation="bicubic", labels_at_input_size=True,
        class_names=("background", "aorta", "gallbladder", "left kidney", "right kidney", "liver",
                     "pancreas", "spleen", "stomach"),
    ),
    "mri": Recipe(
        "mri", "MRI: the volume's 0.5-99.5 percentiles -> [0, 1], native resolution",
        intensity="percentile",
    ),
    "t1-brain": Recipe(
        "t1-brain", "T1 brain extraction: the volume's 0.5-99.5 percentiles -> [0, 1], slices "
        "resampled to 1 mm pixels, the largest region kept and its holes filled",
        intensity="percentile", pixel_size=1.0, keep_largest=True, class_names=("brain",),
    ),
    "ct": Recipe(
        "ct", "CT: abdomen window (40/400 HU) -> [0, 1], native resolution",
        intensity="window", window=CT_WINDOWS["abdomen"],
    ),
}


def get_recipe(name: str, window: tuple[float, float] | str | None = None) -> Recipe:
    """A named recipe, optionally on another CT window (see :func:`parse_window`)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    return recipe.with_window(*parse_window(window)) if window is not None else recipe


def parse_window(window: tuple[float, float] | str) -> tuple[float, float]:
    """A CT window as (level, width) in HU, from a preset name (:data:`CT_WINDOWS`), a
    "LEVEL,WIDTH" text or the pair itself."""
    if isinstance(window, str):
        if window in CT_WINDOWS:
            return CT_WINDOWS[window]
        try:
            level, width = (float(v) for v in window.split(","))
        except ValueError:
            raise ValueError(f"a CT window is LEVEL,WIDTH in HU (e.g. 40,400) or one of "
                             f"{', '.join(CT_WINDOWS)}; got {window!r}") from None
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise ValueError(f"a CT window's width must be positive, got {width:g}")
    return level, width


def chosen_recipe(model, name: str | None = None,
                  window: tuple[float, float] | str | None = None) -> Recipe | None:
    """The recipe a user picked (the command line's --recipe and --window, a widget's recipe
    and CT window): a named one or the model's own, on another CT window if one is given.
    None when nothing was picked: the engine then takes the model's own, and says so where it
    has to guess."""
    if name is None and window is None:
        return None
    recipe = get_recipe(name) if name is not None else recipe_for(model)[0]
    return recipe.with_window(*parse_window(window)) if window is not None else recipe


def recipe_for(model) -> tuple[Recipe, str | None]:
    """The model's own recipe, or a guess for files without one (with a note saying so)."""
    if model.info.recipe is not None:
        return model.info.recipe, None
    classes = model.config.num_classes
    if classes == 1:
        guess = RECIPES["isic"]
    elif classes == 9:
        guess = RECIPES["synapse-ct"]
    else:
        guess = RECIPES["mri"]
    return guess, (
        f"this checkpoint stores no preprocessing; guessed '{guess.name}' from its "
        f"{classes} class{'es' if classes > 1 else ''} ({guess.description}). Choose another "
        "recipe if its images were prepared differently."
    )
