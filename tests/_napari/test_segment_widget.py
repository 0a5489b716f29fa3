"""The Segment widget in a real napari window (Xvfb): loads through the manifest, segments the
sample head with the bundled model, cancels, survives a bad checkpoint, keeps the model the
user chose through every change of the layer list, and fits a laptop's screen."""

import numpy as np
import pytest
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import QFileDialog, QScrollArea
from scipy import ndimage

from napari_vmunet._napari._segment_widget import RECENT_KEY, settings
from napari_vmunet.bundled import load_sample

from ..conftest import open_with_segment_widget


@pytest.fixture
def widget_and_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    return open_with_segment_widget(viewer, qtbot, "t1-head"), viewer


def test_segment_the_sample_head(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    assert "t1_brain.safetensors: brain; recipe t1-brain" in widget.model_card.value
    widget.axis.value = 2
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    labels = viewer.layers["t1-head labels"]
    image, reference = load_sample("t1-head")
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.uint8
    assert np.allclose(labels.scale, viewer.layers["t1-head"].scale)
    brain, truth = labels.data > 0, reference.data > 0
    # resampled to the model's 1 mm from the layer's 1.5 mm, then cleaned up to one region
    assert 2 * (brain & truth).sum() / (brain.sum() + truth.sum()) > 0.93
    assert ndimage.label(brain)[1] == 1
    assert widget.status.value.startswith("done in")
    widget.start()  # a second run never touches the first result (the user's corrections)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert [layer.name for layer in viewer.layers].count("t1-head labels") == 1
    assert "t1-head labels [1]" in [layer.name for layer in viewer.layers]


def test_cancel_stops_and_keeps_a_consistent_layer(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    widget.axis.value = 0
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value >= 2, timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5000)
    assert widget.status.value.startswith("cancelled")
    labels = viewer.layers["t1-head labels"].data
    assert labels.shape == (116, 150, 155)
    assert not labels[-1].any()  # the last slices were never segmented


def test_the_status_says_while_the_gpu_kernels_are_prepared(widget_and_viewer):
    """The first batch of a new size on a GPU waits for Triton to compile and tune its kernels
    (86 s the first time on a machine): the status says so until that batch is done."""
    from napari_vmunet.engine import SegmentationStarted, SlicesDone
    from napari_vmunet.recipes import get_recipe

    widget, viewer = widget_and_viewer
    widget._source, widget._axis, widget._last_redraw = viewer.layers["t1-head"], 0, 0.0
    running = "116 slices on cuda:0, batch 8, scan triton"
    widget._on_event(SegmentationStarted(116, 8, "cuda:0", "triton", get_recipe("t1-brain")))
    assert widget.status.value.startswith(running)
    assert "preparing the GPU kernels for this image size" in widget.status.value
    first = np.ones((8, 150, 155), dtype=np.uint8)
    widget._on_event(SlicesDone(0, 8, 116, first))
    assert widget.status.value == running
    assert viewer.layers["t1-head labels"].data[:8].all()
    widget._on_event(SegmentationStarted(116, 8, "cpu", "cpu", get_recipe("t1-brain")))
    assert widget.status.value == "116 slices on cpu, batch 8, scan cpu"


def test_a_bad_checkpoint_shows_an_error_and_changes_nothing(widget_and_viewer, qtbot, tmp_path):
    widget, _ = widget_and_viewer
    model = widget.model
    bad = tmp_path / "broken.pth"
    bad.write_text("not a checkpoint")
    widget.load_model(bad)
    qtbot.waitUntil(lambda: widget.model_card.value.startswith("could not load"), timeout=30000)
    assert "broken.pth is not a checkpoint" in widget.model_card.value
    assert widget.model is model and widget.run_button.enabled


def test_the_chosen_model_stays_chosen_through_every_change_of_the_layer_list(
        widget_and_viewer, qtbot, monkeypatch, tiny_checkpoint, tmp_path):
    """napari rebuilds every choice of a docked widget at each change of the layer list: the
    checkpoint the user opened must stay the one Segment and Fine-tune use."""
    widget, viewer = widget_and_viewer
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *_args, **_kw: (str(tiny_checkpoint), ""))
    widget.model_choice.value = "Open checkpoint…"  # as the user picks it
    qtbot.waitUntil(lambda: widget.model_path == tiny_checkpoint, timeout=30000)
    chosen, loader, head = widget.model, widget.loader, viewer.layers["t1-head"]

    def still_chosen():
        qtbot.wait(50)  # a load, had one been started, would have begun by now
        assert widget.loader is loader and widget.model is chosen
        assert widget.model_choice.value == str(tiny_checkpoint)
        assert "tiny.safetensors" in widget.model_card.value

    viewer.add_image(np.zeros((116, 150, 155), np.float32), name="other")
    still_chosen()
    viewer.layers.move(viewer.layers.index("other"), 0)
    still_chosen()
    head.name = "renamed head"  # the chosen image, renamed, stays chosen
    still_chosen()
    assert widget.image_choice.value is head
    viewer.layers.remove("other")
    still_chosen()
    # another tiny.safetensors among the recent files (opened in another window, say): the
    # entry in use is now shown with its folder, and stays chosen
    twin = tmp_path / "elsewhere" / tiny_checkpoint.name
    twin.parent.mkdir()
    twin.write_bytes(tiny_checkpoint.read_bytes())
    settings().setValue(RECENT_KEY, [str(twin), str(tiny_checkpoint)])
    viewer.layers.move(len(viewer.layers) - 1, 0)
    still_chosen()
    assert widget.model_choice.current_choice == f"tiny.safetensors ({tiny_checkpoint.parent})"
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="paint")
    viewer.layers["paint"].name = "painting"
    viewer.layers.select_all()
    viewer.layers.remove("painting")
    still_chosen()

    widget.axis.value = 0
    for _ in range(2):  # each run adds its own Labels layer
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
        still_chosen()
    assert widget.status.value.startswith("done in")
    assert {"renamed head labels", "renamed head labels [1]"} <= {
        layer.name for layer in viewer.layers}

    _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
    still_chosen()
    tune.image_choice.value, tune.labels_choice.value = head, "renamed head labels"
    tune.axis.value, tune.device.value, tune.steps.value = 0, "cpu", 2
    labels = viewer.layers["renamed head labels"]
    square = (np.full(400, 60), *np.nonzero(np.ones((20, 20))))
    labels.data_setitem(square, 1 - labels.data[square])  # a correction, whatever was there
    qtbot.waitUntil(lambda: tune.slice_list.choices == (60,), timeout=5000)
    tune.start()
    qtbot.waitUntil(lambda: tune.worker is None, timeout=60000)
    assert tune.base.model is chosen and tune.base.path == tiny_checkpoint
    still_chosen()


def test_long_texts_wrap_and_both_docks_fit_a_laptop_screen(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = open_with_segment_widget(viewer, qtbot, "ct-lung")
    _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
    window = widget.native.window()
    window.resize(1280, 800)  # the Xvfb screen's size (pyproject.toml)
    bad = tmp_path / ("a_colleagues_broken_checkpoint_" * 6 + ".pth")  # one long word
    bad.write_text("not a checkpoint")
    widget.load_model(bad)
    qtbot.waitUntil(lambda: widget.model_card.value.startswith("could not load"), timeout=30000)
    viewer.add_image(np.zeros((8, 8)), name="an image whose name is long " * 4)
    qtbot.wait(300)  # layouts settle, the docks share their area

    assert window.width() <= 1280 and window.height() <= 800, window.size()
    assert window.centralWidget().width() >= window.width() / 2  # napari's canvas
    card = widget.model_card
    assert bad.name in card.value and card.native.toolTip() == card.value  # the whole text
    assert card.native.width() <= widget.native.width()  # wrapped, not widening the dock
    for dock_widget in (widget, tune):  # stacked, each gets a fair share of the height
        assert dock_widget.native.height() >= 0.35 * window.centralWidget().height()
    bottom, scroll = tune.revert_button.native, tune.native.findChild(QScrollArea)
    scroll.ensureWidgetVisible(bottom)  # the last button, reachable by scrolling its dock
    qtbot.wait(50)
    top = bottom.mapTo(scroll.viewport(), QPoint(0, 0)).y()
    assert 0 <= top and top + bottom.height() <= scroll.viewport().height()
