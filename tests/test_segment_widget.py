"""The Segment widget in a real napari window (Xvfb): loads through the manifest, segments the
sample head with the bundled model, cancels, and survives a bad checkpoint."""

import numpy as np
import pytest
from scipy import ndimage

from napari_vmunet.bundled import load_sample

from .conftest import open_with_segment_widget


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
    assert "preparing the GPU kernels for this size" in widget.status.value
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
