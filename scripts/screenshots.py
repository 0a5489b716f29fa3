"""Screenshots for the docs, from a real napari window (run under Xvfb on a headless machine):

    xvfb-run -a python scripts/screenshots.py --out docs/images

1. segment-widget.png: the Segment widget after segmenting the bundled T1 head.
2. finetune-1-segment.png: the CT sample segmented by the bundled (brain) model: wrong.
3. finetune-2-trained.png: three slices corrected, the Fine-tune widget after training, with
   its loss/Dice plot.
4. finetune-3-resegment.png: the CT segmented again with the fine-tuned model.
Prints the Dice of each CT result against the sample's reference tumour label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CORRECTED = [4, 7, 10]


def main(argv=None) -> int:
    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_vmunet.bundled import load_sample
    from napari_vmunet.metrics import dice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])

    def wait(condition):
        while not condition():
            app.processEvents()
            time.sleep(0.01)  # a busy loop would take a core from the model

    def shoot(viewer, name):
        for _ in range(20):
            app.processEvents()
        viewer.screenshot(str(args.out / name), canvas_only=False)
        print(f"wrote {args.out / name}")

    def open_and_segment(sample, reference, size, axis, world_point):
        """A window with ``sample`` (its reference hidden), segmented by the Segment widget
        with the bundled model on the CPU, showing ``world_point`` along axis 0."""
        viewer = napari.Viewer(show=True)
        viewer.window.resize(*size)
        viewer.open_sample("napari-vmunet", sample)
        viewer.layers[f"{sample} {reference}"].visible = False
        _, segment = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
        wait(lambda: segment.model is not None)
        segment.image_choice.value = sample
        segment.device.value = "cpu"
        segment.axis.value = axis
        viewer.dims.set_point(0, world_point)
        segment.start()
        wait(lambda: segment.worker is None)
        return viewer, segment

    # 1. the T1 head
    viewer, _ = open_and_segment("t1-head", "brain (reference)", (1400, 900), -1, 70 * 1.5)
    viewer.layers["t1-head labels"].opacity = 0.5
    shoot(viewer, "segment-widget.png")
    viewer.close()

    # 2-4. segment -> correct -> fine-tune -> segment again, on the CT sample
    _, tumour = load_sample("ct-lung")
    viewer, segment = open_and_segment("ct-lung", "tumour (reference)", (1500, 1000), 0, 7 * 5.0)
    first = viewer.layers["ct-lung labels"]
    print(f"bundled brain model on the CT: Dice {dice(first.data > 0, tumour.data > 0):.3f}")
    shoot(viewer, "finetune-1-segment.png")

    for k in CORRECTED:  # the corrections, as brush strokes would make them (undoable)
        wrong = np.nonzero(first.data[k] != tumour.data[k])
        first.data_setitem((np.full(wrong[0].shape, k), *wrong),
                           tumour.data[k][wrong].astype(first.data.dtype))
    _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
    tune.image_choice.value = "ct-lung"
    tune.labels_choice.value = "ct-lung labels"
    tune.axis.value = 0
    tune.device.value = "cpu"
    tune.steps.value = args.steps
    wait(lambda: len(tune.slice_list.choices) == len(CORRECTED))
    tune.start()
    wait(lambda: tune.worker is None)
    print(tune.status.value)
    # the plot and the result's buttons, scrolled into the Fine-tune dock's view
    tune.native.findChild(QScrollArea).ensureWidgetVisible(tune.revert_button.native)
    shoot(viewer, "finetune-2-trained.png")

    tune.use_for_segment()
    segment.start()
    wait(lambda: segment.worker is None)
    second = viewer.layers["ct-lung labels [1]"]
    others = [k for k in range(tumour.data.shape[0]) if k not in CORRECTED]
    print(f"fine-tuned model on the CT: Dice {dice(second.data > 0, tumour.data > 0):.3f} "
          f"(on the {len(others)} slices not corrected: "
          f"{dice(second.data[others] > 0, tumour.data[others] > 0):.3f})")
    first.visible = False
    viewer.dims.set_point(0, 6 * 5.0)
    shoot(viewer, "finetune-3-resegment.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
