"""The Segment dock widget: pick a model and an image layer, click Segment, watch slices arrive.

Long work (loading a model, segmenting) runs in napari workers; the widget only touches layers
from the workers' signals, which napari delivers on the GUI thread. Every run writes a new
Labels layer, so the corrections painted on an earlier result are never overwritten; the
prediction is also kept on the layer, for the Fine-tune widget to see what was corrected.
The model is shared with the Fine-tune widget through the viewer's session; the checkpoints
opened recently are remembered between napari sessions (QSettings).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QFileDialog

from ..bundled import default_checkpoint
from ..io import Geometry
from ._controls import KeptChoice, LayerChoice, button_row, device_control, recipe_controls
from ._fit import ScrollingDock, WrappedText
from ._layers import GEOMETRY_KEY, PREDICTION_KEY, layer_spacing_mm, viewer_slicing_axis
from ._session import CurrentModel, session_for
from ._workers import Workers

BUNDLED = "bundled: T1 brain extraction"
OPEN = "Open checkpoint…"
_MODEL_TIP = "the bundled model, a recent file, or a .pth/.safetensors file"
RECENT_KEY = "segment/recent_checkpoints"
LAST_KEY = "segment/last_checkpoint"
MAX_RECENT = 5
_REDRAW_INTERVAL_S = 0.3


def _load_and_warm_up(path: Path):
    """Worker: the checkpoint, and the kernels its first Segment needs (engine/warmup.py)."""
    from ..checkpoint import load_checkpoint
    from ..engine.warmup import warm_up

    model = load_checkpoint(path)
    warm_up()
    return model


def settings() -> QSettings:
    """Where the widgets remember things between sessions (an INI file in the user's config
    folder; tests point QSettings elsewhere)."""
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "napari-vmunet", "widgets")


def recent_checkpoints() -> list[str]:
    value = settings().value(RECENT_KEY, []) or []
    recent = [value] if isinstance(value, str) else list(value)
    return [p for p in recent if Path(p).is_file()]


def _entry_texts(paths: list[str]) -> list[str]:
    """What the model choice shows for each file: its name, with its folder where two files
    share a name (the whole path is in the choice's tooltip)."""
    names = [Path(p).name for p in paths]
    return [name if names.count(name) == 1 else f"{name} ({Path(p).parent})"
            for name, p in zip(names, paths, strict=True)]


class SegmentWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 (a string for napari)
        super().__init__()
        self.viewer = viewer
        self.model = None
        self.model_path: Path | None = None
        self.worker = None
        self.workers = Workers(self.native)
        self.session = session_for(viewer)
        # The entry of the model in use: kept in the choices whatever napari's reset_choices
        # (at every change of the layer list) rebuilds them from.
        self._entry = BUNDLED
        self.model_choice = KeptChoice(label="model", choices=self._model_entries,
                                       tooltip=_MODEL_TIP)
        self.model_card = WrappedText("loading…")
        self.image_choice = LayerChoice(viewer, Image, label="image",
                                        tooltip="the Image layer to segment")
        self.axis = SpinBox(label="slicing axis", min=-1, max=3, value=-1,
                            tooltip="-1: the axis the viewer is slicing")
        self.recipe_choice, self.window = recipe_controls()
        self.device = device_control()
        self.batch = SpinBox(label="batch size", min=0, max=256, value=0,
                             tooltip="0: from free memory")
        self.threshold = FloatSpinBox(label="threshold", min=0.01, max=0.99, step=0.05,
                                      value=0.5)
        self.probabilities = CheckBox(text="also output probabilities", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = WrappedText()
        self._status_after_first_batch: str | None = None  # while the GPU kernels are prepared
        self.set_controls([self.model_choice, self.model_card, self.image_choice, self.axis,
                           self.recipe_choice, self.window, self.device, self.batch,
                           self.threshold, self.probabilities,
                           button_row(self.run_button, self.cancel_button), self.progress,
                           self.status])
        self.model_choice.changed.connect(self._on_model_choice)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.session.changed.connect(self._show_model)
        self.native.destroyed.connect(lambda _obj=None: self._disconnect())
        if self.session.current is not None:  # a second Segment widget on the same viewer
            self._show_model(self.session.current)
        else:
            self.load_model(self._last_checkpoint())

    def _disconnect(self) -> None:
        """The dock widget is gone: stop listening to the session."""
        self.session.changed.disconnect(self._show_model)

    # -- model -----------------------------------------------------------------------------

    def _model_entries(self, _widget=None) -> list[tuple[str, str]]:
        """The model choices: the bundled model, the files opened recently (and the one in
        use, if it is not among them), and Open checkpoint…"""
        recent = [p for p in recent_checkpoints() if p != str(default_checkpoint())]
        if self._entry not in (BUNDLED, OPEN, *recent):
            recent.insert(0, self._entry)
        return [(BUNDLED, BUNDLED), *zip(_entry_texts(recent), recent, strict=True),
                (OPEN, OPEN)]

    def _set_model_entry(self, entry: str) -> None:
        self._entry = entry
        with self.model_choice.changed.blocked():
            self.model_choice.reset_choices()
            self.model_choice.value = entry
        self.model_choice.tooltip = entry if entry not in (BUNDLED, OPEN) else _MODEL_TIP

    def _last_checkpoint(self) -> Path:
        last = settings().value(LAST_KEY, "")
        return Path(last) if last and Path(last).is_file() else default_checkpoint()

    def _on_model_choice(self, value):
        if value == OPEN:
            path, _ = QFileDialog.getOpenFileName(
                self.native, "Open a VM-UNet checkpoint", "",
                "Checkpoints (*.pth *.pt *.safetensors)")
            if path:
                self.load_model(Path(path))
            else:
                self._show_choice()
        elif value == BUNDLED:
            self.load_model(default_checkpoint())
        elif value:
            self.load_model(Path(value))

    def load_model(self, path: Path) -> None:
        """Load in a worker; the current model stays until the new one has loaded."""
        self.model_card.value = f"loading {Path(path).name}…"
        self.run_button.enabled = False
        self.loader = self.workers.start(
            _load_and_warm_up, path, on_error=self._model_failed,
            on_returned=lambda model: self._model_loaded(model, Path(path)))

    def _model_loaded(self, model, path: Path) -> None:
        self._remember(path)
        self.session.set(model, path, path.name)  # -> _show_model, here and in Fine-tune

    def _remember(self, path: Path) -> None:
        store = settings()
        bundled = path == default_checkpoint()
        store.setValue(LAST_KEY, "" if bundled else str(path))
        if not bundled:
            recent = [str(path), *(p for p in recent_checkpoints() if p != str(path))]
            store.setValue(RECENT_KEY, recent[:MAX_RECENT])

    def _show_model(self, current: CurrentModel) -> None:
        from ..recipes import recipe_for

        model = current.model
        self.model, self.model_path = model, current.path
        self._show_choice()
        recipe, note = recipe_for(model)
        cfg = model.config
        classes = ", ".join(model.info.class_names or [f"{cfg.num_classes} classes"])
        try:
            scan = model.scan_backend_for(self._device())
        except (RuntimeError, ValueError) as exc:  # a forced backend that cannot run here
            scan = f"unavailable ({exc})"
        self.model_card.value = (
            f"{current.title}: {classes}; recipe {recipe.name}{' (guessed)' if note else ''}; "
            f"{model.num_parameters() / 1e6:.1f} M parameters; scan {scan}"
        )
        self.run_button.enabled = True

    def _show_choice(self) -> None:
        """Point the model choice at the model in use. Unsaved fine-tuned weights have no
        entry: the choice stays where it was and the model card says what is in use."""
        if self.model_path is None:
            return
        self._set_model_entry(BUNDLED if self.model_path == default_checkpoint()
                              else str(self.model_path))

    def _model_failed(self, exc: Exception) -> None:
        show_error(f"VM-UNet: {exc}")
        self.model_card.value = f"could not load: {exc}"
        self.run_button.enabled = self.model is not None
        if self.model is not None:
            self._show_choice()  # the model still in use, without loading it a second time

    def _device(self) -> str:
        from ..engine.device import resolve_device

        return str(resolve_device(self.device.value))

    # -- segmenting ------------------------------------------------------------------------

    def start(self) -> None:
        from ..engine import Segmenter
        from ..recipes import chosen_recipe

        layer = self.image_choice.value
        if self.model is None or layer is None:
            show_info("VM-UNet: choose a model and an image layer first")
            return
        try:
            recipe = chosen_recipe(self.model, self.recipe_choice.value, self.window.value)
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
            axis = self.axis.value if self.axis.value >= 0 else viewer_slicing_axis(self.viewer,
                                                                                    layer)
        self._output, self._last_redraw = None, 0.0
        self._cleans_up = segmenter.recipe.keep_largest
        self._source, self._axis = layer, axis
        self.progress.visible, self.progress.value = True, 0
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "segmenting…"
        self.worker = self.workers.start(segmenter.run, data, axis=axis, rgb=rgb,
                                   probabilities=self.probabilities.value,
                                   spacing=layer_spacing_mm(layer), on_event=self._on_event,
                                   on_error=self._on_error, on_finished=self._on_finished)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self._status_after_first_batch = None
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
            running = (f"{event.slices} slices on {event.device}, batch {event.batch_size}, "
                       f"scan {event.scan_backend}")
            # On a GPU a new image size compiles and tunes the Triton kernels before its first
            # batch (the first time on a machine: RESULTS.md, "fifteenth session"): say so
            # rather than leave the bar at 0 without a word.
            on_gpu = event.device.startswith("cuda")
            self._status_after_first_batch = running if on_gpu else None
            self.status.value = running + (" — preparing the GPU kernels for this image size "
                                           "(the first time on this machine)"
                                           if on_gpu else "")
        elif isinstance(event, SlicesDone):
            self._write_chunk(event)
            self.progress.value = event.stop
            if self._status_after_first_batch is not None:
                self.status.value, self._status_after_first_batch = (
                    self._status_after_first_batch, None)
        elif isinstance(event, Notice):
            show_info(f"VM-UNet: {event.message}")
        elif isinstance(event, SegmentationDone):
            if self._cleans_up:
                # The recipe cleaned the whole volume up after the last slice (largest region
                # kept): the streamed slices are not the result any more.
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
        """Copy finished slices into the layer (GUI thread); redraw at most every
        _REDRAW_INTERVAL_S, since a redraw costs the GUI thread far more than the copy."""
        out = self._output.data
        if self._axis is None:
            out[...] = event.labels[0]
        else:
            np.moveaxis(out, self._axis, 0)[event.start:event.stop] = event.labels
        now = time.perf_counter()
        if now - self._last_redraw >= _REDRAW_INTERVAL_S or event.stop == event.total:
            self._output.refresh()
            self._last_redraw = now

    def _on_error(self, exc: Exception) -> None:
        show_error(f"VM-UNet: {exc}")
        self.status.value = f"failed: {exc}"

    def _on_finished(self) -> None:
        if self._output is not None:
            self._output.refresh()  # the slices written since the last redraw (Cancel)
            # What the model said, finished or cancelled: corrections are what differs from it.
            self._output.metadata[PREDICTION_KEY] = np.array(self._output.data, copy=True)
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.progress.visible = False
        if self.status.value == "cancelling…":
            self.status.value = "cancelled: finished slices are kept, the rest is empty"
        self.worker = None
