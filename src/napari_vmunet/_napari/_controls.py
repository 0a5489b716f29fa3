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


class KeptChoice(ComboBox):
    """A ComboBox whose value survives ``reset_choices`` (which napari calls at every change of
    the layer list) while it is still among the choices. magicgui matches entries by their
    text, so an entry whose text changed (a renamed layer, a file shown with its folder) would
    lose its place and the first entry be chosen; here ``changed`` fires only when the value
    really changed."""

    _resetting = False

    def reset_choices(self, *_) -> None:
        before = self.value
        # Quiet while the entries are rebuilt, by a flag rather than changed.blocked(): that
        # would end a caller's own blocking of the signal.
        self._resetting = True
        try:
            super().reset_choices()
            if before is not None and before in self.choices:
                self.value = before
        finally:
            self._resetting = False
        if self.value != before:  # (equal, not identical: Qt hands back a new string)
            self.changed.emit(self.value)

    def _on_value_change(self, value=None) -> None:  # magicgui's: the entry shown changed
        if not self._resetting:
            super()._on_value_change(value)


class LayerChoice(KeptChoice):
    """The viewer's layers of one type (napari's ``Image``, ``Labels``). Its value is the layer
    itself, so the choice survives the layer being renamed or moved; it may be set by name."""

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


def button_row(*buttons) -> Container:
    return Container(widgets=buttons, layout="horizontal", labels=False)
