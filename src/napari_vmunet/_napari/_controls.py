"""Controls both dock widgets use: the recipe, CT window and device choices, the layer
pickers, a row of buttons."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container

from ..recipes import CT_WINDOWS, RECIPES


def recipe_controls() -> tuple[ComboBox, ComboBox]:
    """The recipe choice (the checkpoint's own, or a named one) and the CT window choice; their
    values are what :func:`napari_vmunet.recipes.chosen_recipe` takes (None: not chosen)."""
    recipe = ComboBox(label="recipe", choices=[("the checkpoint's own", None),
                                               *((name, name) for name in RECIPES)],
                      value=None,
                      tooltip="preprocessing; files from the authors' code carry none and "
                      "get a guess")
    window = ComboBox(label="CT window", choices=[("recipe's window", None),
                                                  *((name, name) for name in CT_WINDOWS)],
                      value=None)
    return recipe, window


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
