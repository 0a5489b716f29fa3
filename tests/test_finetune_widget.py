"""The Fine-tune widget in a real napari window (Xvfb), on the bundled CT sample: corrections
found from paint events, training with live Dice, Stop keeps the best, Use for Segment, Save
as (never over the parent), Revert."""

import numpy as np
import pytest

from napari_vmunet.bundled import default_checkpoint, load_sample
from napari_vmunet.checkpoint import file_sha256, load_checkpoint

from .conftest import open_with_segment_widget

CORRECTED = [4, 7, 10]  # slices of the CT crop that hold the tumour


@pytest.fixture
def session(make_napari_viewer, qtbot):
    """The CT sample segmented by the Segment widget, and a Fine-tune widget beside it."""
    viewer = make_napari_viewer()
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


def test_fine_tune_use_save_and_revert(session, qtbot, tmp_path):
    viewer, segment, tune = session
    base_model = segment.model
    paint_reference(viewer, CORRECTED)
    qtbot.waitUntil(lambda: len(tune.slice_list.choices) == 3, timeout=5000)
    tune.steps.value = 12
    tune.start()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=180000)
    assert tune.plot.dice and len(tune.plot.loss) == 12  # validation Dice reported, live
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
    assert reloaded.provenance["fine_tuned_on_slices"] == CORRECTED
    assert reloaded.provenance["labels"] == "ct-lung labels"
    assert reloaded.provenance["parent_sha256"] == before
    qtbot.waitUntil(lambda: "lung-tumour.safetensors" in segment.model_card.value, timeout=5000)

    tune.revert()
    assert segment.model is base_model and not tune.use_button.enabled


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
