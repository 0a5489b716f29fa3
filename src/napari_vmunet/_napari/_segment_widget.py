"""The Segment dock widget: pick a model and an image layer, click Segment, watch slices arrive.

Long work (loading a model, segmenting) runs in napari workers; the widget only touches layers
from the workers' signals, which napari delivers on the GUI thread. Every run writes a new
Labels layer, so the corrections painted on an earlier result are never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..bundled import default_checkpoint
from ..io import Geometry
from ..recipes import CT_WINDOWS, RECIPES
from ._layers import GEOMETRY_KEY, layer_spacing_mm

BUNDLED = "bundled: T1 brain extraction"
OPEN = "Open checkpoint…"
CHECKPOINT_RECIPE = "the checkpoint's own"
NO_WINDOW = "recipe's window"


def _devices() -> list[str]:
    from ..engine.device import available_devices

    return ["auto", *available_devices()]


class SegmentWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 (a string for napari)
        super().__init__()
        self.viewer = viewer
        self.model = None
        self.model_path: Path | None = None
        self.worker = None
        self.model_choice = ComboBox(label="model", choices=[BUNDLED, OPEN], value=BUNDLED,
                                     tooltip="the bundled model, or a .pth/.safetensors file")
        self.model_card = Label(value="loading…")
        self.image_choice = ComboBox(label="image", choices=self._image_layers,
                                     tooltip="the Image layer to segment")
        self.axis = SpinBox(label="slicing axis", min=-1, max=3, value=-1,
                            tooltip="-1: the axis the viewer is slicing")
        self.recipe_choice = ComboBox(label="recipe", choices=[CHECKPOINT_RECIPE, *RECIPES],
                                      value=CHECKPOINT_RECIPE,
                                      tooltip="preprocessing; files from the authors' code "
                                      "carry none and get a guess")
        self.window = ComboBox(label="CT window", choices=[NO_WINDOW, *CT_WINDOWS],
                               value=NO_WINDOW)
        self.device = ComboBox(label="device", choices=_devices(), value="auto")
        self.batch = SpinBox(label="batch size", min=0, max=256, value=0,
                             tooltip="0: from free memory")
        self.threshold = FloatSpinBox(label="threshold", min=0.01, max=0.99, step=0.05,
                                      value=0.5)
        self.probabilities = CheckBox(text="also output probabilities", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        self.extend([self.model_choice, self.model_card, self.image_choice, self.axis,
                     self.recipe_choice, self.window, self.device, self.batch, self.threshold,
                     self.probabilities, self.run_button, self.cancel_button, self.progress,
                     self.status])
        self.model_choice.changed.connect(self._on_model_choice)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self.load_model(default_checkpoint())

    # -- model -----------------------------------------------------------------------------

    def _on_model_choice(self, value):
        if value == OPEN:
            path, _ = QFileDialog.getOpenFileName(
                self.native, "Open a VM-UNet checkpoint", "",
                "Checkpoints (*.pth *.pt *.safetensors)")
            if path:
                self.load_model(Path(path))
            else:
                self.model_choice.value = BUNDLED
        elif value == BUNDLED:
            self.load_model(default_checkpoint())

    def load_model(self, path: Path) -> None:
        """Load in a worker; the current model stays until the new one has loaded."""
        from ..checkpoint import load_checkpoint

        self.model_card.value = f"loading {Path(path).name}…"
        self.run_button.enabled = False
        worker = create_worker(load_checkpoint, path, _ignore_errors=True)
        worker.returned.connect(lambda model: self._model_loaded(model, Path(path)))
        worker.errored.connect(self._model_failed)
        worker.start()
        self.loader = worker

    def _model_loaded(self, model, path: Path) -> None:
        self.model, self.model_path = model, path
        if str(path) not in self.model_choice.choices and path != default_checkpoint():
            with self.model_choice.changed.blocked():
                self.model_choice.choices = [BUNDLED, str(path), OPEN]
                self.model_choice.value = str(path)
        from ..recipes import recipe_for

        recipe, note = recipe_for(model)
        cfg = model.config
        classes = ", ".join(model.class_names or [f"{cfg.num_classes} classes"])
        try:
            scan = model.scan_backend_for(self._device())
        except (RuntimeError, ValueError) as exc:  # a forced backend that cannot run here
            scan = f"unavailable ({exc})"
        self.model_card.value = (
            f"{path.name}: {classes}; recipe {recipe.name}{' (guessed)' if note else ''}; "
            f"{model.num_parameters() / 1e6:.1f} M parameters; scan {scan}"
        )
        self.run_button.enabled = True

    def _model_failed(self, exc: Exception) -> None:
        show_error(f"VM-UNet: {exc}")
        self.model_card.value = f"could not load: {exc}"
        self.run_button.enabled = self.model is not None
        if self.model_path is None:
            return
        # Show the model still in use again, without loading it a second time.
        with self.model_choice.changed.blocked():
            self.model_choice.value = BUNDLED if self.model_path == default_checkpoint() \
                else str(self.model_path)

    def _device(self) -> str:
        from ..engine.device import resolve_device

        return str(resolve_device(self.device.value))

    # -- layers ----------------------------------------------------------------------------

    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, _event=None):
        self.image_choice.reset_choices()

    # -- segmenting ------------------------------------------------------------------------

    def start(self) -> None:
        from ..engine import Segmenter
        from ..recipes import recipe_for

        if self.model is None or not self.image_choice.value:
            show_info("VM-UNet: choose a model and an image layer first")
            return
        layer = self.viewer.layers[self.image_choice.value]
        recipe = (recipe_for(self.model)[0] if self.recipe_choice.value == CHECKPOINT_RECIPE
                  else RECIPES[self.recipe_choice.value])
        if self.window.value != NO_WINDOW:
            recipe = recipe.with_window(*CT_WINDOWS[self.window.value])
        try:
            segmenter = Segmenter(self.model, recipe, device=self.device.value,
                                  batch_size=self.batch.value or None,
                                  threshold=self.threshold.value)
        except ValueError as exc:
            show_error(f"VM-UNet: {exc}")
            return
        data = np.asarray(layer.data)
        rgb = bool(getattr(layer, "rgb", False))
        spatial = data.ndim - (1 if rgb else 0)
        axis = None
        if spatial == 3:
            axis = self.axis.value if self.axis.value >= 0 else self._viewer_slicing_axis(layer)
        self._output = None
        self._source, self._axis = layer, axis
        self.progress.visible, self.progress.value = True, 0
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "segmenting…"
        self.worker = create_worker(segmenter.run, data, axis=axis, rgb=rgb, _ignore_errors=True,
                                    probabilities=self.probabilities.value,
                                    spacing=layer_spacing_mm(layer))
        self.worker.yielded.connect(self._on_event)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def _viewer_slicing_axis(self, layer) -> int:
        """The data axis napari is stepping through (the first not displayed)."""
        displayed = set(self.viewer.dims.displayed)
        offset = self.viewer.dims.ndim - layer.ndim
        for world_axis in self.viewer.dims.not_displayed:
            if world_axis not in displayed and world_axis - offset >= 0:
                return world_axis - offset
        return 0

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling…"

    def _on_event(self, event) -> None:
        from ..engine import Notice, SegmentationDone, SegmentationStarted, SlicesDone

        if isinstance(event, SegmentationStarted):
            self.progress.max = max(1, event.slices)
            shape = self._spatial_shape()
            self._output = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint8), name=f"{self._source.name} labels",
                scale=self._source.scale[-len(shape):],
                translate=self._source.translate[-len(shape):],
                units=self._source.units[-len(shape):],
                metadata={GEOMETRY_KEY: self._source.metadata.get(GEOMETRY_KEY)}
                if isinstance(self._source.metadata.get(GEOMETRY_KEY), Geometry) else {},
            )
            self.status.value = (f"{event.slices} slices on {event.device}, batch "
                                 f"{event.batch_size}, scan {event.scan_backend}")
        elif isinstance(event, SlicesDone):
            self._write_chunk(event)
            self.progress.value = event.stop
        elif isinstance(event, Notice):
            show_info(f"VM-UNet: {event.message}")
        elif isinstance(event, SegmentationDone):
            # The finished result can differ from the streamed slices: recipes may clean up
            # the whole volume at the end (keep the largest region).
            self._output.data[...] = event.labels
            self._output.refresh()
            self.status.value = f"done in {event.seconds:.1f} s"
            if event.probabilities is not None:
                self.viewer.add_image(event.probabilities,
                                      name=f"{self._source.name} probabilities",
                                      scale=self._source.scale[-self._output.ndim:])

    def _spatial_shape(self) -> tuple[int, ...]:
        data = self._source.data
        return tuple(data.shape[:-1]) if getattr(self._source, "rgb", False) else data.shape

    def _write_chunk(self, event) -> None:
        """Copy finished slices into the layer (GUI thread) and redraw."""
        out = self._output.data
        if self._axis is None:
            out[...] = event.labels[0]
        else:
            np.moveaxis(out, self._axis, 0)[event.start:event.stop] = event.labels
        self._output.refresh()

    def _on_error(self, exc: Exception) -> None:
        show_error(f"VM-UNet: {exc}")
        self.status.value = f"failed: {exc}"

    def _on_finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.progress.visible = False
        if self.status.value == "cancelling…":
            self.status.value = "cancelled: finished slices are kept, the rest is empty"
        self.worker = None
