"""Controls and worker plumbing both dock widgets use: the recipe, CT window and device
choices, the layer-name pickers, and starting a napari worker wired to a widget's slots."""

from __future__ import annotations

from magicgui.widgets import ComboBox
from napari.qt.threading import create_worker

from ..recipes import CT_WINDOWS, RECIPES

CHECKPOINT_RECIPE = "the checkpoint's own"
NO_WINDOW = "recipe's window"


def recipe_controls() -> tuple[ComboBox, ComboBox]:
    """The recipe choice (the checkpoint's own, or a named one) and the CT window choice."""
    recipe = ComboBox(label="recipe", choices=[CHECKPOINT_RECIPE, *RECIPES],
                      value=CHECKPOINT_RECIPE,
                      tooltip="preprocessing; files from the authors' code carry none and "
                      "get a guess")
    window = ComboBox(label="CT window", choices=[NO_WINDOW, *CT_WINDOWS], value=NO_WINDOW)
    return recipe, window


def chosen_recipe(model, recipe_name: str, window_name: str):
    """The recipe picked in a widget: the checkpoint's own (or its guess) or a named one, on
    another CT window if one is picked."""
    from ..recipes import recipe_for

    recipe = recipe_for(model)[0] if recipe_name == CHECKPOINT_RECIPE else RECIPES[recipe_name]
    if window_name != NO_WINDOW:
        recipe = recipe.with_window(*CT_WINDOWS[window_name])
    return recipe


def device_control() -> ComboBox:
    """auto, and only the devices torch can use here."""
    from ..engine.device import available_devices

    return ComboBox(label="device", choices=["auto", *available_devices()], value="auto")


def layer_names(viewer, kind: str):
    """A choices callable: the names of the viewer's layers of type ``kind`` ("Image",
    "Labels"), for a ComboBox that follows the layer list."""
    def names(_widget=None):
        return [layer.name for layer in viewer.layers if type(layer).__name__ == kind]
    return names


def start_worker(function, *args, on_event=None, on_error=None, on_finished=None,
                 on_returned=None, **kwargs):
    """Run ``function`` in a napari worker (a generator's yields go to ``on_event``); errors
    reach ``on_error`` instead of napari's traceback dialog. Returns the started worker."""
    worker = create_worker(function, *args, _ignore_errors=True, **kwargs)
    for signal, slot in (("yielded", on_event), ("errored", on_error),
                         ("finished", on_finished), ("returned", on_returned)):
        if slot is not None:
            getattr(worker, signal).connect(slot)
    worker.start()
    return worker
