"""The Fine-tune dock widget: train the current model on the slices the user corrected.

The corrected slices are found by comparing the labels layer with the prediction the Segment
widget stored on it (every slice that differs), after each paint stroke; on a layer painted
from scratch, every slice holding a label counts. The list can be edited (add the current
slice, e.g. one the model got right; remove one) and each entry is a "go to slice" away.

Training runs in a napari worker on copies (the model is deep-copied, the labels snapshotted),
so the Segment widget keeps working with the original model and the user may go on painting.
Stop keeps the best weights so far. The result is only used once the user says so: "Use for
Segment" hands it to the Segment widget, "Save as…" writes a new file (never the parent),
"Revert" goes back to the model fine-tuning started from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QMessageBox

from ..engine.training.settings import FINE_TUNING, fine_tuning
from ._controls import LayerChoice, button_row, device_control, recipe_controls
from ._fit import ScrollingDock, WrappedText
from ._layers import PREDICTION_KEY, layer_spacing_mm, viewer_slicing_axis
from ._plot import TrainingPlot
from ._session import CurrentModel, session_for
from ._workers import Workers

# Paint strokes arrive many times a second; the slice list is recomputed once they pause.
_REFRESH_DELAY_MS = 250
_EDIT_EVENTS = ("paint", "set_data", "data")
_SUGGESTIONS = 5  # slices offered as the ones to correct next


@dataclass
class TunerReady:
    """The fine-tune worker's first event: the model it starts from and the FineTuner, made in
    the worker (loading the bundled model takes a moment)."""

    base: CurrentModel
    tuner: object  # a FineTuner


class FineTuneWidget(ScrollingDock):
    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 (a string for napari)
        super().__init__()
        self.viewer = viewer
        self.session = session_for(viewer)
        self.workers = Workers(self.native, may_close=self._may_close)
        self.worker = None
        self.tuner = None
        self.base: CurrentModel | None = None  # what the last run started from
        self.tuned = None  # its result, until reverted
        self.saved_to: Path | None = None  # where the result was last saved, if it was
        self.result = None  # the last TrainingDone
        self._labels_layer = None
        self._slices: list[int] = []  # the corrected slices, as last found
        self._added: set[int] = set()
        self._suggested: list[int] = []  # the slices to correct next, least sure first
        self._removed: set[int] = set()

        self.model_card = WrappedText()
        self.image_choice = LayerChoice(viewer, Image, label="image")
        self.labels_choice = LayerChoice(viewer, Labels, label="labels",
                                         tooltip="the corrected labels layer")
        self.axis = SpinBox(label="slicing axis", min=-1, max=3, value=-1,
                            tooltip="-1: the axis the viewer is slicing")
        # The choices are a callable, so that napari's reset_choices keeps them.
        self.slice_list = Select(label="corrected", choices=self._slice_entries,
                                 tooltip="slices that differ from the prediction; "
                                 "double-click or 'Go to slice' to look")
        self.goto_button = PushButton(text="Go to", tooltip="show the selected slice")
        self.add_button = PushButton(text="Add current",
                                     tooltip="count the slice on screen as corrected")
        self.remove_button = PushButton(text="Remove",
                                        tooltip="do not train on the selected slices")
        self.next_list = Select(label="correct next", choices=self._suggestion_entries,
                                tooltip="after Apply: the uncorrected slices the fine-tuned "
                                "model is least sure of; double-click to look")
        self.recipe_choice, self.window = recipe_controls()
        self.learn = ComboBox(
            label="what learns", value=FINE_TUNING.learn,
            # short: the dock is narrow, and the tooltip says the rest
            choices=[("classifier (fast)", "classifier"), ("network (slow)", "network")],
            tooltip="a pixel classifier on the model's features and your corrected slices' "
            "shapes: seconds, also on a CPU, and from three slices better on four of the five "
            "volumes we measured and as good on the fifth; or the network itself (minutes on "
            "a CPU; batch size and decoder only apply to it). Steps and learning rate change "
            "to the choice's defaults")
        self.steps = SpinBox(label="steps", min=1, max=100_000, value=FINE_TUNING.steps)
        self.learning_rate = FloatSpinBox(label="learning rate", min=1e-5, max=1e-2, step=1e-5,
                                          value=FINE_TUNING.learning_rate)
        self.batch = SpinBox(label="batch size", min=1, max=256, value=FINE_TUNING.batch_size)
        self.decoder_only = CheckBox(text="decoder only", value=FINE_TUNING.decoder_only,
                                     tooltip="train the decoder; keep the encoder as it is")
        self.device = device_control()
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False,
                                      tooltip="stop now and keep the best weights so far")
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = WrappedText()
        self.use_button = PushButton(text="Use for Segment", enabled=False)
        self.save_button = PushButton(text="Save as…", enabled=False)
        self.revert_button = PushButton(text="Revert", enabled=False,
                                        tooltip="back to the model fine-tuning started from")
        self.apply_button = PushButton(
            text="Apply to uncorrected slices", enabled=False,
            tooltip="segment the slices you did not correct with the fine-tuned model, into "
            "the labels layer (one undo step); your corrected slices stay as you painted them")
        self.apply_to_new_layer = CheckBox(text="as a new layer",
                                           tooltip="leave the labels layer as it is")
        self.only_connected = CheckBox(
            text="only where connected", value=True,
            tooltip="leave out regions that touch none of your corrected slices' labels: a "
            "model tuned on a few slices also finds look-alikes elsewhere in the volume")
        self.plot = TrainingPlot()
        self._results = button_row(self.save_button, self.revert_button)
        self.set_controls([
            self.model_card, self.image_choice, self.labels_choice, self.axis,
            self.slice_list, button_row(self.goto_button, self.add_button, self.remove_button),
            self.next_list,
            self.recipe_choice, self.window, self.learn, self.steps, self.learning_rate,
            self.batch,
            self.decoder_only, self.device, button_row(self.start_button, self.stop_button),
            self.progress, self.status],
            below=[self.plot, self.apply_button.native,
                   self.apply_to_new_layer.native, self.only_connected.native,
                   self.use_button.native, self._results.native])

        self._refresh_timer = QTimer(self.native)  # dies with the widget
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(_REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh_slices)
        self.labels_choice.changed.connect(self._follow_labels_layer)
        self.learn.changed.connect(self._show_learner_settings)
        self._show_learner_settings()
        self.axis.changed.connect(self.refresh_slices)
        self.goto_button.clicked.connect(self.go_to_selected)
        self.slice_list.native.itemDoubleClicked.connect(lambda _item: self.go_to_selected())
        self.next_list.native.itemDoubleClicked.connect(
            lambda _item: self.go_to_slice(self.next_list.value[0] if self.next_list.value
                                           else None))
        self.add_button.clicked.connect(self.add_current_slice)
        self.remove_button.clicked.connect(self.remove_selected)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.use_button.clicked.connect(self.use_for_segment)
        self.apply_button.clicked.connect(self.apply)
        self.save_button.clicked.connect(self._ask_where_to_save)
        self.revert_button.clicked.connect(self.revert)
        self.session.changed.connect(self._show_base)
        self._show_base(self.session.current)
        self._follow_labels_layer(self.labels_choice.value)
        self.native.destroyed.connect(self._disconnect)
        self._warm_up()

    def _show_learner_settings(self, _value=None) -> None:
        """Steps and learning rate show the defaults of what learns; the network's own
        settings are greyed out while the classifier learns."""
        defaults = fine_tuning(self.learn.value)
        self.steps.value, self.learning_rate.value = defaults.steps, defaults.learning_rate
        network = self.learn.value == "network"
        for control in (self.batch, self.decoder_only):
            control.enabled = network

    def _warm_up(self) -> None:
        """Load torch's optimizer machinery and the CPU kernels now, while the user is still
        painting, so that Start does not freeze the window for a moment (benchmarks/gui.py)."""
        from ..engine.warmup import warm_up

        self._warmer = self.workers.start(warm_up, training=True)

    def _disconnect(self, _obj=None) -> None:
        """The dock widget is gone: stop listening to the labels layer and the session."""
        self._watch_labels_layer(False)
        self._labels_layer = None
        self.session.changed.disconnect(self._show_base)

    # -- layers and corrected slices -------------------------------------------------------

    def _follow_labels_layer(self, layer) -> None:
        """Listen to the paint strokes of the chosen labels layer (and only that one)."""
        self._watch_labels_layer(False)
        self._labels_layer = layer
        self._added.clear()
        self._removed.clear()
        self._watch_labels_layer(True)
        self.refresh_slices()

    def _watch_labels_layer(self, on: bool) -> None:
        # paint: a brush/fill stroke; set_data: undo/redo (and redraws); data: a new array.
        if self._labels_layer is not None:
            for emitter in _EDIT_EVENTS:
                event = getattr(self._labels_layer.events, emitter)
                (event.connect if on else event.disconnect)(self._schedule_refresh)

    def _schedule_refresh(self, _event=None) -> None:
        self._refresh_timer.start()

    def slicing_axis(self) -> int | None:
        layer = self._labels_layer
        if layer is None or layer.ndim == 2:
            return None
        return self.axis.value if self.axis.value >= 0 else viewer_slicing_axis(self.viewer,
                                                                                layer)

    def corrected_slices(self) -> list[int]:
        """Slices that differ from the stored prediction (or hold labels when there is none),
        plus those added by hand, minus those removed."""
        layer = self._labels_layer
        if layer is None:
            return []
        data = np.asarray(layer.data)
        if data.ndim == 2:
            return [0] if data.any() else []
        axis = self.slicing_axis()
        moved = np.moveaxis(data, axis, 0)
        prediction = layer.metadata.get(PREDICTION_KEY)
        if isinstance(prediction, np.ndarray) and prediction.shape == data.shape:
            changed = (moved != np.moveaxis(prediction, axis, 0)).any(axis=(1, 2))
        else:
            changed = moved.any(axis=(1, 2))
        found = {int(i) for i in np.flatnonzero(changed)}
        n = moved.shape[0]
        return sorted(((found | self._added) - self._removed) & set(range(n)))

    def _slice_entries(self, _widget=None) -> list[tuple[str, int]]:
        return [(f"slice {s}", s) for s in self._slices]

    def _suggestion_entries(self, _widget=None) -> list[tuple[str, int]]:
        return [(f"slice {s}", s) for s in self._suggested]

    def refresh_slices(self, _event=None) -> None:
        self._slices = slices = self.corrected_slices()
        selected = [s for s in self.slice_list.value if s in slices]
        self.slice_list.reset_choices()
        self.slice_list.value = selected
        if self._labels_layer is None:
            self.status.value = "choose the labels layer you corrected"
        elif not self.worker:
            self.status.value = (f"{len(slices)} corrected slice(s)" if slices else
                                 "paint corrections on a few slices (3 or more is best)")

    def _current_slice(self) -> int | None:
        axis = self.slicing_axis()
        if axis is None:
            return None
        offset = self.viewer.dims.ndim - self._labels_layer.ndim
        world = self.viewer.dims.current_step[axis + offset]
        return int(np.clip(world, 0, self._labels_layer.data.shape[axis] - 1))

    def add_current_slice(self) -> None:
        current = self._current_slice()
        if current is not None:
            self._removed.discard(current)
            self._added.add(current)
            self.refresh_slices()

    def remove_selected(self) -> None:
        for s in self.slice_list.value:
            self._added.discard(s)
            self._removed.add(s)
        self.refresh_slices()

    def go_to_selected(self) -> None:
        self.go_to_slice(self.slice_list.value[0] if self.slice_list.value else None)

    def go_to_slice(self, index: int | None) -> None:
        axis = self.slicing_axis()
        if axis is None or index is None:
            return
        offset = self.viewer.dims.ndim - self._labels_layer.ndim
        self.viewer.dims.set_current_step(axis + offset, index)

    # -- the model -------------------------------------------------------------------------

    def _show_base(self, current: CurrentModel | None) -> None:
        self.model_card.value = (f"starts from: {current.title}" if current is not None else
                                 "starts from: the bundled model")

    def _base(self) -> CurrentModel:
        """The Segment widget's current model, or the bundled one when none is open."""
        if self.session.current is not None:
            return self.session.current
        from ..bundled import default_checkpoint
        from ..checkpoint import load_checkpoint

        path = default_checkpoint()
        return CurrentModel(load_checkpoint(path), path, path.name)

    # -- training --------------------------------------------------------------------------

    def start(self) -> None:
        image_layer = self.image_choice.value
        if image_layer is None or self._labels_layer is None:
            show_info("VM-UNet: choose the image and its corrected labels layer first")
            return
        slices = self.corrected_slices()
        if not slices:
            show_info("VM-UNet: no corrected slices yet: paint on a few slices of the labels "
                      "layer, or add the current slice")
            return
        defaults = fine_tuning(self.learn.value)
        try:
            settings = replace(
                defaults, steps=self.steps.value, learning_rate=self.learning_rate.value,
                batch_size=self.batch.value, decoder_only=self.decoder_only.value,
                # about ten validations, for a short run too
                validate_every=max(1, min(defaults.validate_every, self.steps.value // 10)))
        except ValueError as exc:
            show_error(f"VM-UNet: {exc}")
            return
        image = np.asarray(image_layer.data)
        labels = np.array(self._labels_layer.data, copy=True)  # painting may go on meanwhile
        axis = self.slicing_axis()
        spacing = layer_spacing_mm(image_layer)
        recipe_name, window, device = (self.recipe_choice.value, self.window.value,
                                       self.device.value)
        names = (image_layer.name, self._labels_layer.name)

        def work():
            from ..engine.training.finetuner import FineTuner
            from ..recipes import chosen_recipe

            base = self._base()
            # A copy: the Segment widget keeps using the original until "Use for Segment".
            model = copy.deepcopy(base.model)
            recipe = chosen_recipe(model, recipe_name, window)
            tuner = FineTuner(model, image, labels.astype(np.int64, copy=False), slices,
                              axis, recipe, settings, device, spacing=spacing)
            yield TunerReady(base, tuner)
            yield from tuner.run()

        self.tuner, self.result, self._names = None, None, names
        self.plot.reset(settings.steps)
        self.progress.max, self.progress.value, self.progress.visible = settings.steps, 0, True
        self.start_button.enabled, self.stop_button.enabled = False, True
        for button in self._result_buttons:
            button.enabled = False
        self.status.value = f"preparing {len(slices)} slice(s)…"
        self.worker = self.workers.start(work, on_event=self._on_event, on_error=self._on_error,
                                   on_finished=self._on_finished)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "stopping… (the best weights so far are kept)"

    def _on_event(self, event) -> None:
        from ..engine.events import (
            Notice,
            TrainingDone,
            TrainingStarted,
            TrainingStep,
            ValidationResult,
        )

        if isinstance(event, TunerReady):
            self.base, self.tuner = event.base, event.tuner
        elif isinstance(event, TrainingStarted):
            self.status.value = (f"{event.train_slices} training / {event.validation_slices} "
                                 f"validation slices on {event.device}")
        elif isinstance(event, TrainingStep):
            self.plot.add_loss(event.step, event.loss)
            self.progress.value = event.step
            best = self.tuner.trainer.best_dice if self.tuner and self.tuner.trainer else None
            self.status.value = (
                f"step {event.step}/{self.steps.value} · loss {event.loss:.3f}"
                + (f" · best Dice {best:.3f}" if best and best > 0 else "")
                + f" · {event.eta_seconds:.0f} s left")
        elif isinstance(event, ValidationResult):
            self.plot.add_dice(event.step, event.mean_dice)
        elif isinstance(event, Notice):
            show_info(f"VM-UNet: {event.message}")
        elif isinstance(event, TrainingDone):
            self.result = event

    def _on_error(self, exc: Exception) -> None:
        show_error(f"VM-UNet: {exc}")
        self.status.value = f"failed: {exc}"
        self.tuner = None

    def _on_finished(self) -> None:
        self.worker = None
        self.start_button.enabled, self.stop_button.enabled = True, False
        self.progress.visible = False
        tuner = self.tuner
        if tuner is None or tuner.trainer is None or tuner.trainer.step == 0:
            if not self.status.value.startswith("failed"):
                self.status.value = "stopped before the first step: nothing to keep"
            return
        tuner.restore_best()
        trainer = tuner.trainer
        if trainer.best_step == 0:
            # No validation yet (Stop came first): the best weights known are the ones it
            # started from, so there is no fine-tuned model to use or save.
            self.status.value = (f"stopped at step {trainer.step}, before the first "
                                 "validation: the model is as it started")
            return
        self.tuned, self.saved_to = tuner.model, None
        how = self.result.stop_reason if self.result is not None else "stopped"
        self.status.value = (f"best validation Dice {trainer.best_dice:.3f} at step "
                             f"{trainer.best_step} of {trainer.step} ({how}); kept")
        for button in self._result_buttons:
            button.enabled = True

    # -- the result ------------------------------------------------------------------------

    @property
    def _result_buttons(self):
        return (self.use_button, self.save_button, self.revert_button, self.apply_button)

    def _tuned_title(self) -> str:
        return f"{self.base.title} fine-tuned on {self._names[1]} (unsaved)"

    def use_for_segment(self) -> None:
        if self.tuned is not None:
            self.session.set(self.tuned, None, self._tuned_title())
            show_info("VM-UNet: the Segment widget now uses the fine-tuned model")

    def apply(self) -> None:
        """Segment the image with the fine-tuned model (in a worker); the result goes to the
        labels layer with the corrected slices kept (:meth:`_applied`)."""
        from ..engine import Segmenter
        from ..engine.events import SegmentationDone, SlicesDone

        image_layer, layer = self.image_choice.value, self._labels_layer
        if self.tuned is None or self.tuner is None or image_layer is None or layer is None:
            show_info("VM-UNet: fine-tune first, then apply the result")
            return
        try:
            segmenter = Segmenter(self.tuned, self.tuner.recipe, device=self.device.value)
        except ValueError as exc:
            show_error(f"VM-UNet: {exc}")
            return
        target, axis = layer, self.slicing_axis()
        if axis != self.tuner.axis:
            show_error(f"VM-UNet: the model was fine-tuned on slices along axis "
                       f"{self.tuner.axis}; set the slicing axis back to apply it")
            return
        done = []

        def on_event(event):
            if isinstance(event, SlicesDone):
                self.progress.max, self.progress.value = event.total, event.stop
            elif isinstance(event, SegmentationDone):
                done.append(event)

        def on_finished():
            self.progress.visible = False
            for button in self._result_buttons:
                button.enabled = self.tuned is not None
            if done:
                self._applied(done[0].labels, target, axis, done[0].uncertainty)

        for button in self._result_buttons:
            button.enabled = False
        self.progress.value, self.progress.visible = 0, True
        self.status.value = "applying the fine-tuned model to the uncorrected slices…"
        self.workers.start(
            segmenter.run, np.asarray(image_layer.data), axis=axis, uncertainty=True,
            prior=self.tuner.shape_prior(),
            rgb=bool(getattr(image_layer, "rgb", False)),
            spacing=layer_spacing_mm(image_layer), on_event=on_event, on_finished=on_finished,
            on_error=lambda exc: show_error(f"VM-UNet: could not apply: {exc}"))

    def _applied(self, predicted: np.ndarray, layer, axis: int | None,
                 uncertainty: np.ndarray | None = None) -> None:
        """On the GUI thread: the slices the user did not correct become the fine-tuned
        model's, in one undoable edit of the labels layer (or a new layer); the corrected
        slices, as they are now, stay untouched. The model becomes the one in use, so that
        correcting more and fine-tuning again goes on from it."""
        from ..engine.corrections import (
            applied_labels,
            keep_corrections,
            slices_to_correct,
            structure_slices,
        )

        if layer is not self._labels_layer:
            show_error("VM-UNet: the labels layer was changed while applying; nothing was "
                       "written (Apply again)")
            return
        current = np.asarray(layer.data)
        if current.shape != predicted.shape:
            show_error(f"VM-UNet: the labels layer has shape {current.shape} but the image "
                       f"{predicted.shape}; nothing was changed")
            return
        corrected = self.corrected_slices()
        merged, removed = applied_labels(predicted, current, corrected, axis,
                                         only_connected=self.only_connected.value)
        # what later corrections differ from: what Apply wrote, and on the corrected slices
        # the model's own (there the user's labels stay corrections)
        written = keep_corrections(merged, predicted, corrected, axis)
        if self.apply_to_new_layer.value:
            self.viewer.add_labels(
                merged.astype(current.dtype), name=f"{layer.name} (fine-tuned)",
                scale=layer.scale, translate=layer.translate,
                metadata={**layer.metadata, PREDICTION_KEY: written})
        else:
            changed = np.nonzero(merged != current)
            layer.data_setitem(changed, merged[changed])  # one step of the layer's undo
            self._added |= set(corrected)  # the slices corrected so far stay in the training set
            layer.metadata[PREDICTION_KEY] = written
            self.refresh_slices()
        self.session.set(self.tuned, self.saved_to,
                         self.saved_to.name if self.saved_to else self._tuned_title())
        if uncertainty is not None and axis is not None:
            self._suggested = slices_to_correct(uncertainty, _SUGGESTIONS, corrected,
                                                structure_slices(merged, axis))
            self.next_list.reset_choices()
        n = 1 if axis is None else current.shape[axis]
        left_out = (f"; {removed} voxel(s) in regions reaching none of your corrections left "
                    "out" if removed else "")
        self.status.value = (f"applied: {n - len(corrected)} slice(s) from the fine-tuned model, "
                             f"{len(corrected)} corrected slice(s) kept{left_out}; correct more "
                             "and Start again to go on from this model")

    def revert(self) -> None:
        if self.tuned is None:
            return
        current = self.session.current
        if current is not None and current.model is self.tuned:
            self.session.set(self.base.model, self.base.path, self.base.title)
        self.tuned = None
        for button in self._result_buttons:
            button.enabled = False
        self.status.value = f"reverted: back to {self.base.title}"

    @property
    def unsaved(self) -> bool:
        """A fine-tuned model is kept here that has not been saved since it was made."""
        return self.tuned is not None and self.saved_to is None

    def _ask_where_to_save(self) -> None:
        path = self._ask_save_path()
        if path is not None:
            self.save_as(path)

    def _ask_save_path(self) -> Path | None:
        start = str(Path.home() / f"{Path(self.base.title).stem}-fine-tuned.safetensors")
        path, _ = QFileDialog.getSaveFileName(self.native, "Save the fine-tuned model", start,
                                              "VM-UNet checkpoints (*.safetensors)")
        return Path(path) if path else None

    def _may_close(self, by_user: bool) -> bool:
        """Asked before the window closes (by Workers): a model being fine-tuned, or one not
        saved, would be lost with it, so the user chooses to save it, discard it, or keep the
        window open. A script's close, or a window nobody sees, is not asked; nor is
        viewer.close(), which empties the layer list before it closes the window (too late to
        keep it open)."""
        training = self.worker is not None
        if not (training or self.unsaved) or not (by_user and self.native.isVisible()
                                                  and len(self.viewer.layers)):
            return True
        question = ("Fine-tuning is still running; closing the window stops it and discards "
                    "the model. Save the best weights so far?" if training else
                    "The fine-tuned model is not saved; closing the window discards it. "
                    "Save it?")
        answer = QMessageBox.question(
            self.native, "VM-UNet: unsaved fine-tuned model", question,
            QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Save)
        if answer == QMessageBox.Discard:
            return True
        if answer != QMessageBox.Save:
            return False
        self.workers.stop_all()  # training stops as on Stop: the best weights are kept
        path = self._ask_save_path() if self.unsaved else None
        if path is None:
            return not self.unsaved
        self.save_as(path)
        self.workers.stop_all()  # the save finishes before the window goes
        return not self.unsaved  # a failed save (its error shown) keeps the window open

    def save_as(self, path: Path) -> None:
        """Write the fine-tuned model to ``path`` (a new .safetensors file, atomically; the
        dialog has already asked before replacing another file). Never over the parent."""
        from ..checkpoint import check_save_path, save_checkpoint

        if self.tuned is None or self.tuner is None:
            return
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            check_save_path(path, overwrite=True, parent=self.base.path)
        except (ValueError, FileExistsError) as exc:
            show_error(f"VM-UNet: {exc}")
            return
        provenance = {"image": self._names[0], "labels": self._names[1],
                      **self.tuner.provenance(),
                      "stop_reason": self.result.stop_reason if self.result else "stopped"}
        model, recipe = self.tuned, self.tuner.recipe

        def save():
            return save_checkpoint(model, path, recipe=recipe, provenance=provenance,
                                   overwrite=True)

        self._saver = self.workers.start(
            save, on_returned=self._saved,
            on_error=lambda exc: show_error(f"VM-UNet: could not save: {exc}"))

    def _saved(self, path: Path) -> None:
        self.saved_to = path
        self.status.value = f"saved {path}"
        current = self.session.current
        if current is not None and current.model is self.tuned:
            self.session.set(self.tuned, path, path.name)
        show_info(f"VM-UNet: saved {path}")
