"""Screenshots for the docs, from a real napari window (run under Xvfb on a headless machine):

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py --out docs/images

1. segment-widget.png: the Segment widget after segmenting the bundled T1 head.
2. finetune-1-segment.png: the CT sample segmented by the bundled (brain) model: wrong.
3. finetune-2-corrected.png: three slices corrected; the Fine-tune widget lists them.
4. finetune-3-trained.png: the Fine-tune widget after training, with its loss/Dice plot.
5. finetune-4-applied.png: Apply to uncorrected slices; the slices to correct next.
6. t1-applied.png: the same loop on the T1 head: in each third of the brain's slices, the one
   the model got most wrong corrected; fine-tuned, applied.
Prints the Dice of each result against the sample's reference label, on the slices that were
not corrected. Fine-tuning uses the widget's defaults (``--steps`` changes the step count).
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
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default: the widget's)")
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

    def open_and_segment(sample, reference, size, world_point):
        """A window with ``sample`` (its reference hidden), segmented by the Segment widget
        with the bundled model on the CPU along axis 0, showing ``world_point`` on it."""
        viewer = napari.Viewer(show=True)
        viewer.window.resize(*size)
        viewer.open_sample("napari-vmunet", sample)
        viewer.layers[f"{sample} {reference}"].visible = False
        _, segment = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
        wait(lambda: segment.model is not None)
        segment.image_choice.value = sample
        segment.device.value = "cpu"
        segment.axis.value = 0
        viewer.dims.set_point(0, world_point)
        segment.start()
        wait(lambda: segment.worker is None)
        return viewer

    def correct(layer, truth, slices):
        """The corrections, as brush strokes would make them (undoable)."""
        for k in slices:
            wrong = np.nonzero(layer.data[k] != truth[k])
            layer.data_setitem((np.full(wrong[0].shape, k), *wrong),
                               truth[k][wrong].astype(layer.data.dtype))

    def fine_tune(viewer, sample, labels, slices):
        _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
        tune.image_choice.value = sample
        tune.labels_choice.value = labels
        tune.axis.value = 0
        tune.device.value = "cpu"
        if args.steps:
            tune.steps.value = args.steps
        wait(lambda: len(tune.slice_list.choices) == len(slices))
        return tune

    def train_and_apply(tune, viewer, shot_trained=None):
        tune.start()
        wait(lambda: tune.worker is None)
        print(tune.status.value)
        scroll = tune.native.findChild(QScrollArea)
        if shot_trained:  # the plot and the result's buttons, scrolled into the dock's view
            scroll.ensureWidgetVisible(tune.apply_button.native)
            shoot(viewer, shot_trained)
        tune.apply()
        wait(lambda: tune.status.value.startswith("applied"))
        print(tune.status.value)
        scroll.ensureWidgetVisible(tune.next_list.native)

    def on_others(labels, truth, slices):
        others = [k for k in range(truth.shape[0]) if k not in slices]
        return dice(labels[others] > 0, truth[others] > 0)

    # 1. the T1 head
    viewer = open_and_segment("t1-head", "brain (reference)", (1400, 900), 70 * 1.5)
    viewer.layers["t1-head labels"].opacity = 0.5
    shoot(viewer, "segment-widget.png")

    # 6. the loop on the T1 head: in each third of the brain's slices, the one with the most
    # wrong voxels corrected (spread, as docs/finetune.md advises)
    _, brain = load_sample("t1-head")
    layer = viewer.layers["t1-head labels"]
    wrong = ((layer.data > 0) != (brain.data > 0)).reshape(brain.data.shape[0], -1).sum(1)
    holding = np.flatnonzero(brain.data.reshape(brain.data.shape[0], -1).any(1))
    worst = [int(third[np.argmax(wrong[third])]) for third in np.array_split(holding, 3)]
    before = on_others(layer.data, brain.data, worst)
    correct(layer, brain.data, worst)
    tune = fine_tune(viewer, "t1-head", "t1-head labels", worst)
    train_and_apply(tune, viewer)
    print(f"T1 head, slices {worst} corrected: Dice on the other slices {before:.3f} -> "
          f"{on_others(layer.data, brain.data, worst):.3f}")
    shoot(viewer, "t1-applied.png")
    viewer.close()

    # 2-5. segment -> correct -> fine-tune -> apply, on the CT sample
    _, tumour = load_sample("ct-lung")
    viewer = open_and_segment("ct-lung", "tumour (reference)", (1500, 1000), 7 * 5.0)
    layer = viewer.layers["ct-lung labels"]
    before = on_others(layer.data, tumour.data, CORRECTED)
    print(f"bundled brain model on the CT: Dice on the uncorrected slices {before:.3f}")
    shoot(viewer, "finetune-1-segment.png")
    correct(layer, tumour.data, CORRECTED)
    tune = fine_tune(viewer, "ct-lung", "ct-lung labels", CORRECTED)
    shoot(viewer, "finetune-2-corrected.png")
    train_and_apply(tune, viewer, shot_trained="finetune-3-trained.png")
    print(f"CT, slices {CORRECTED} corrected: Dice on the other slices {before:.3f} -> "
          f"{on_others(layer.data, tumour.data, CORRECTED):.3f}")
    viewer.dims.set_point(0, 6 * 5.0)
    shoot(viewer, "finetune-4-applied.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
