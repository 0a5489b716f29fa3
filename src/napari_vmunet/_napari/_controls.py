"""Controls both dock widgets use: the recipe, CT window and device choices, the layer
pickers, a row of buttons."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container

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


class LayerChoice(ComboBox):
    """The viewer's layers of one type (napari's ``Image``, ``Labels``), kept in step with the
    layer list by napari's ``reset_choices``. Its value is the layer itself, so the choice
    survives the layer being renamed or moved, and changes only when the layer is removed; it
    may also be set by name."""

    def __init__(self, viewer, kind: type, **kwargs) -> None:
        self._viewer, self._kind = viewer, kind
        super().__init__(choices=self._layers, **kwargs)

    def _layers(self, _widget=None) -> list[tuple[str, object]]:
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, self._kind)]

    @property
    def value(self):
        return ComboBox.value.fget(self)

    @value.setter
    def value(self, value) -> None:
        if isinstance(value, str):
            value = self._viewer.layers[value]
        ComboBox.value.fset(self, value)

    def reset_choices(self, *_) -> None:
        # magicgui matches entries by their text, so a renamed layer would lose its place and
        # the first layer would be chosen instead: keep the layer, and say "changed" only
        # when the choice really changed.
        before = self.value
        with self.changed.blocked():
            super().reset_choices()
            if before is not None and any(before is layer for layer in self.choices):
                self.value = before
        if self.value is not before:
            self.changed.emit(self.value)


def button_row(*buttons) -> Container:
    return Container(widgets=buttons, layout="horizontal", labels=False)
