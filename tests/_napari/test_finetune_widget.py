"""The Fine-tune widget in a real napari window (Xvfb), on the bundled CT sample: corrections
found from paint events (kept through changes of the layer list), training with live Dice,
Stop keeps the best, Use for Segment, Save as (never over the parent), Revert, and closing the
window asks before a fine-tuned model is lost."""

import numpy as np
import pytest
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_vmunet.bundled import default_checkpoint, load_sample
from napari_vmunet.checkpoint import file_sha256, load_checkpoint

from ..conftest import open_with_segment_widget

CORRECTED = [4, 7, 10]  # slices of the CT crop that hold the tumour


@pytest.fixture
def session(make_napari_viewer, qtbot):
    """The CT sample segmented by the Segment widget, and a Fine-tune widget beside it."""
    return segmented_ct(make_napari_viewer(), qtbot)


@pytest.fixture
def shown_session(make_napari_viewer, qtbot):
    """The same in a window on the screen, as a user has it."""
    return segmented_ct(make_napari_viewer(show=True), qtbot)


def segmented_ct(viewer, qtbot):
    segment = open_with_segment_widget(viewer, qtbot, "ct-lung")
    segment.axis.value = 0
    segment.start()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120000)
    _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
    tune.image_choice.value = "ct-lung"
    tune.labels_choice.value = "ct-lung labels"
    tune.axis.value = 0
    tune.device.value = "cpu"
    return viewer, segment, tune


def paint_reference(viewer, slices):
    """Correct slices the way a brush does: through the layer's data_setitem (undoable, and
    it emits the layer's paint event)."""
    _, tumour = load_sample("ct-lung")
    layer = viewer.layers["ct-lung labels"]
    for k in slices:
        wrong = np.nonzero(layer.data[k] != tumour.data[k])
        index = (np.full(wrong[0].shape, k), *wrong)
        layer.data_setitem(index, tumour.data[k][wrong].astype(layer.data.dtype))


def test_corrected_slices_follow_the_painting(session, qtbot):
    viewer, _, tune = session
    assert tune.corrected_slices() == []  # the fresh prediction: nothing corrected
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: tune.slice_list.choices == tuple(CORRECTED), timeout=5000)
    viewer.layers["ct-lung labels"].undo()  # the last correction taken back
    qtbot.waitUntil(lambda: tune.slice_list.choices == tuple(CORRECTED[:2]), timeout=5000)
    viewer.dims.set_current_step(0, 12)  # a slice the model got right, added by hand
    tune.add_current_slice()
    assert tune.corrected_slices() == [*CORRECTED[:2], 12]
    tune.slice_list.value = [CORRECTED[0]]
    tune.remove_selected()
    assert tune.corrected_slices() == [CORRECTED[1], 12]
    tune.slice_list.value = [12]
    viewer.dims.set_current_step(0, 0)
    tune.go_to_selected()
    assert viewer.dims.current_step[0] == 12

    # napari rebuilds the widget's choices at every change of the layer list: nothing is lost
    labels = viewer.layers["ct-lung labels"]
    viewer.add_labels(np.zeros((15, 8, 8), np.uint8), name="scratch")
    viewer.layers.move(viewer.layers.index("scratch"), 0)
    labels.name = "ct-lung corrected"
    viewer.layers.remove("scratch")
    assert tune.labels_choice.value is labels
    assert tune.corrected_slices() == [CORRECTED[1], 12]
    assert tune.slice_list.choices == (CORRECTED[1], 12) and tune.slice_list.value == [12]


def test_fine_tune_use_save_and_revert(session, qtbot, tmp_path):
    viewer, segment, tune = session
    base_model = segment.model
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: len(tune.slice_list.choices) == 3, timeout=5000)
    tune.steps.value = 12
    tune.start()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=180000)
    # every step and validation reported, live (it may stop early: the Dice on the corrected
    # slices no longer rising)
    assert tune.plot.dice and len(tune.plot.loss) == tune.tuner.trainer.step
    largest_loss = max(loss for _, loss in tune.plot.loss)
    assert tune.plot.axis_ends() == {"step": ("0", "12"), "loss": ("0", f"{largest_loss:.3g}"),
                                     "Dice": ("0", "1")}
    assert tune.plot.legend() == (f"loss {tune.plot.loss[-1][1]:.3g}",
                                  f"Dice {tune.plot.dice[-1][1]:.3f}")
    assert tune.status.value.startswith("best validation Dice"), tune.status.value
    assert tune.use_button.enabled and tune.save_button.enabled
    assert segment.model is base_model  # nothing changes until the user says so

    tune.use_for_segment()
    assert segment.model is tune.tuned and "fine-tuned" in segment.model_card.value
    segment.start()  # and it segments with it
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120000)
    assert "ct-lung labels [1]" in viewer.layers

    parent = default_checkpoint()
    before = file_sha256(parent)
    tune.save_as(parent)  # refused: the model it started from
    assert file_sha256(parent) == before
    target = tmp_path / "lung-tumour"
    tune.save_as(target)
    saved = tmp_path / "lung-tumour.safetensors"
    qtbot.waitUntil(saved.exists, timeout=30000)
    reloaded = load_checkpoint(saved)
    assert reloaded.info.provenance["fine_tuned_on_slices"] == CORRECTED
    assert reloaded.info.provenance["labels"] == "ct-lung labels"
    assert reloaded.info.provenance["parent_sha256"] == before
    qtbot.waitUntil(lambda: "lung-tumour.safetensors" in segment.model_card.value, timeout=5000)
    viewer.add_points(name="a layer change")  # the saved model stays the Segment widget's
    qtbot.wait(50)
    assert segment.model is tune.tuned and segment.model_choice.value == str(saved)

    tune.revert()
    assert segment.model is base_model and not tune.use_button.enabled


def test_apply_fills_the_uncorrected_slices_in_one_undo_and_the_loop_goes_on(session, qtbot):
    viewer, segment, tune = session
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.corrections import applied_labels

    layer = viewer.layers["ct-lung labels"]
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: len(tune.slice_list.choices) == 3, timeout=5000)
    tune.steps.value = 4
    tune.start()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=180000)
    corrected = np.array(layer.data[CORRECTED], copy=True)
    before = np.array(layer.data, copy=True)

    # first beside it, with every region the model finds: the layer is left as it is
    tune.apply_to_new_layer.value, tune.only_connected.value = True, False
    tune.apply()
    qtbot.waitUntil(lambda: "ct-lung labels (fine-tuned)" in viewer.layers, timeout=120000)
    beside = viewer.layers["ct-lung labels (fine-tuned)"].data
    assert (layer.data == before).all() and (beside[CORRECTED] == corrected).all()
    ct, _ = load_sample("ct-lung")
    predicted = Segmenter(tune.tuned, tune.tuner.recipe, device="cpu").segment(
        ct.data, axis=0, spacing=ct.geometry.spacing_mm(), prior=tune.tuner.shape_prior()).labels
    others = [k for k in range(before.shape[0]) if k not in CORRECTED]
    assert (beside[others] == predicted[others]).all()  # the fine-tuned model's

    tune.apply_to_new_layer.value, tune.only_connected.value = False, True  # the defaults
    tune.apply()
    qtbot.waitUntil(lambda: tune.status.value.startswith("applied"), timeout=120000)
    expected, removed = applied_labels(predicted, before, CORRECTED, axis=0)
    assert (layer.data[CORRECTED] == corrected).all()  # the user's, untouched
    assert (layer.data == expected).all()  # the model's, where it reaches the corrections
    assert ("left out" in tune.status.value) == (removed > 0)
    assert segment.model is tune.tuned  # the next round starts from this model
    assert tune.corrected_slices() == CORRECTED  # and still trains on the corrections
    suggested = list(tune.next_list.choices)  # where to correct next: uncorrected slices
    assert len(suggested) == 5 and not set(suggested) & set(CORRECTED)
    tune.next_list.value = [suggested[0]]
    tune.go_to_slice(suggested[0])
    assert viewer.dims.current_step[0] == suggested[0]
    layer.undo()  # one step takes the whole apply back
    assert (layer.data == before).all()


def test_stop_keeps_the_best_weights(session, qtbot):
    viewer, _, tune = session
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: len(tune.slice_list.choices) == 3, timeout=5000)
    tune.steps.value = 5000
    tune.start()
    qtbot.waitUntil(lambda: len(tune.plot.dice) >= 1, timeout=180000)
    tune.stop()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=30000)
    trainer = tune.tuner.trainer
    assert trainer.step < 5000 and tune.status.value.endswith("kept")
    best = trainer.best_state
    for name, value in tune.tuned.state_dict().items():
        assert np.array_equal(value.cpu().numpy(), best[name].cpu().numpy()), name


def test_recent_checkpoints_are_remembered(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    qtbot.waitUntil(lambda: segment.model is not None, timeout=60000)
    segment.load_model(tiny_checkpoint)
    qtbot.waitUntil(lambda: segment.model_path == tiny_checkpoint, timeout=30000)
    # a new napari window later: the last model comes back, and is in the choice list
    again = make_napari_viewer()
    _, later = again.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    qtbot.waitUntil(lambda: later.model is not None, timeout=60000)
    assert later.model_path == tiny_checkpoint
    assert str(tiny_checkpoint) in later.model_choice.choices


def fine_tune(viewer, tune, qtbot, steps):
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: len(tune.slice_list.choices) == 3, timeout=5000)
    tune.steps.value = steps
    tune.start()


def close_as_a_user(window, qtbot):
    """Close the window from the running event loop, as File ▸ Close Window does. Closed, it
    only hides (napari would delete it), so that make_napari_viewer can still tear it down."""
    window.setAttribute(Qt.WA_DeleteOnClose, False)
    QTimer.singleShot(0, window.close)
    qtbot.wait(300)


def answer(monkeypatch, reply, save_to=None):
    """The user's reply to the close question (and the file chosen in the save dialog)."""
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda _parent, _title, text, *_args: asked.append(text) or reply)
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *_args, **_kw: (str(save_to) if save_to else "", ""))
    return asked


def test_closing_the_window_while_fine_tuning_asks_and_can_save(shown_session, qtbot, tmp_path,
                                                                monkeypatch):
    viewer, _, tune = shown_session
    window = tune.native.window()
    fine_tune(viewer, tune, qtbot, steps=5000)
    qtbot.waitUntil(lambda: len(tune.plot.dice) >= 1, timeout=180000)  # weights worth keeping

    asked = answer(monkeypatch, QMessageBox.Cancel)
    close_as_a_user(window, qtbot)
    assert window.isVisible() and tune.worker is not None  # still open, still training
    assert "Fine-tuning is still running" in asked[0]

    saved = tmp_path / "before-closing.safetensors"
    answer(monkeypatch, QMessageBox.Save, save_to=saved)
    close_as_a_user(window, qtbot)
    assert not window.isVisible()
    assert tune.worker is None and not tune.workers.busy  # stopped, and waited for
    trainer = tune.tuner.trainer
    assert trainer.step < 5000 and tune.saved_to == saved
    assert load_checkpoint(saved).info.provenance["steps"] == trainer.step


def test_closing_the_window_asks_before_discarding_a_fine_tuned_model(
        shown_session, qtbot, monkeypatch):
    viewer, _, tune = shown_session
    window = tune.native.window()
    fine_tune(viewer, tune, qtbot, steps=3)
    qtbot.waitUntil(lambda: tune.worker is None, timeout=120000)
    assert tune.unsaved

    asked = answer(monkeypatch, QMessageBox.Save)  # ... then Cancel in the save dialog
    close_as_a_user(window, qtbot)
    assert window.isVisible() and tune.unsaved and "is not saved" in asked[0]

    answer(monkeypatch, QMessageBox.Discard)
    close_as_a_user(window, qtbot)
    assert not window.isVisible()


def test_stop_before_the_first_validation_keeps_nothing_it_cannot_vouch_for(session, qtbot):
    viewer, _, tune = session
    assert not tune.batch.enabled and not tune.decoder_only.enabled  # the classifier's
    assert (tune.steps.value, tune.learning_rate.value) == (300, 3e-3)
    tune.learn.value = "network"  # slow enough steps to stop before step 20
    assert tune.batch.enabled and tune.decoder_only.enabled
    assert (tune.steps.value, tune.learning_rate.value) == (200, 3e-4)  # the network's
    fine_tune(viewer, tune, qtbot, steps=5000)
    qtbot.waitUntil(lambda: len(tune.plot.loss) >= 1, timeout=120000)
    tune.stop()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=30000)
    assert not tune.plot.dice and "before the first validation" in tune.status.value
    assert tune.tuned is None and not tune.unsaved and not tune.use_button.enabled
