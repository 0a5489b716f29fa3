"""Close napari viewers from a script while the plugin's workers run, then let Python exit.

Run by tests/test_closing.py in a child process: before the widgets stopped their workers on
close, the fine-tuning case aborted Python at exit (SIGABRT, exit 134). Prints one line per case.
"""

import sys
import time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_vmunet.bundled import load_sample


def wait(condition, timeout_s=300):
    start = time.monotonic()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout_s:
            sys.exit(f"timed out after {timeout_s} s")


def segment_widget(viewer, sample):
    viewer.open_sample("napari-vmunet", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    wait(lambda: widget.model is not None)
    widget.image_choice.value, widget.device.value, widget.axis.value = sample, "cpu", 0
    return widget


def close(viewer, widget, case):
    start = time.monotonic()
    viewer.close()
    print(f"{case}: closed in {time.monotonic() - start:.1f} s, "
          f"workers running: {widget.workers.busy}", flush=True)


viewer = napari.Viewer()
segment = segment_widget(viewer, "t1-head")
segment.start()
wait(lambda: segment.progress.value >= 2)
close(viewer, segment, "segmenting")

viewer = napari.Viewer()
segment = segment_widget(viewer, "ct-lung")
segment.start()
wait(lambda: segment.worker is None)
_, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
tune.labels_choice.value, tune.axis.value, tune.device.value = "ct-lung labels", 0, "cpu"
labels, (_, tumour) = viewer.layers["ct-lung labels"], load_sample("ct-lung")
for k in (4, 7, 10):
    wrong = np.nonzero(labels.data[k] != tumour.data[k])
    labels.data_setitem((np.full(wrong[0].shape, k), *wrong), tumour.data[k][wrong])
tune.refresh_slices()
tune.steps.value = 5000
tune.start()
wait(lambda: tune.progress.value >= 2)
close(viewer, tune, "fine-tuning")
