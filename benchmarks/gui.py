"""Responsiveness of the napari widgets, in a real napari window (Xvfb on a headless machine):

    xvfb-run -a python benchmarks/gui.py [--device cpu] [--repeats 3]

- GUI stalls: a 10 ms QTimer runs on the GUI thread while the widgets work; the longest gap
  between its ticks (minus 10 ms) is the longest the window was frozen. Measured while the
  Segment widget segments the bundled T1 head and while the Fine-tune widget trains on three
  corrected slices of the CT sample.
- Worker vs direct (micro-sam#740 saw torch much slower in napari's threads): the Segment
  widget's run (its SegmentationDone.seconds) against the same Segmenter call on the main
  thread without Qt work, and the Fine-tune widget's step rate against a FineTuner run
  directly; medians of ``--repeats``.
- Cancel / Stop: time from clicking Cancel (Stop) to the worker having finished.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import numpy as np


class Heartbeat:
    """Ticks every 10 ms on the GUI thread and remembers the longest gap."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.last = None

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last - 0.010)
        self.last = now

    def start(self):
        self.gaps, self.last = [], None
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        gaps = np.array(self.gaps or [0.0]) * 1000
        return {"max_ms": float(gaps.max()), "p99_ms": float(np.percentile(gaps, 99)),
                "ticks": len(self.gaps)}


def wait(app, condition, timeout=600.0):
    end = time.perf_counter() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not finish in time")


def stall_summary(stalls: list[dict]) -> str:
    return (f"GUI max stall {max(s['max_ms'] for s in stalls):.0f} ms, p99 "
            f"{max(s['p99_ms'] for s in stalls):.0f} ms")


def run_in_widget(app, widget, beat, keep) -> tuple[list, dict]:
    """Start the widget's run as a user's click does; the events of its worker that ``keep``
    picks, and the GUI stalls while it ran."""
    kept = []
    widget.start()
    beat.start()
    widget.worker.yielded.connect(lambda e: kept.append(e) if keep(e) else None)
    wait(app, lambda: widget.worker is None)
    return kept, beat.stop()


def stop_latency(app, widget, stop, after_progress: int, repeats: int) -> str:
    """Seconds from ``stop()`` (Cancel/Stop) to the widget's worker having finished, once its
    progress bar has reached ``after_progress``."""
    latencies = []
    for _ in range(repeats):
        widget.start()
        wait(app, lambda: widget.progress.value >= after_progress)
        start = time.perf_counter()
        stop()
        wait(app, lambda: widget.worker is None)
        latencies.append(time.perf_counter() - start)
    return f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s"


def main(argv=None) -> int:
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_vmunet.bundled import load_sample
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.events import SegmentationDone, TrainingStep
    from napari_vmunet.engine.training.finetuner import FineTuner
    from napari_vmunet.engine.training.settings import FINE_TUNING_NETWORK

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps per run")
    args = parser.parse_args(argv)
    print(f"napari {napari.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}, "
          f"device {args.device}")

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-vmunet", "t1-head")
    _, segment = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    wait(app, lambda: segment.model is not None)  # loaded, kernels warmed up (a user clicks later)
    segment.image_choice.value = "t1-head"
    segment.device.value = args.device
    segment.axis.value = 2
    beat = Heartbeat()

    # -- segmenting: worker vs direct, GUI stalls ------------------------------------------
    head, _ = load_sample("t1-head")
    worker_s, direct_s, stalls = [], [], []
    for _ in range(args.repeats):
        done, stall = run_in_widget(app, segment, beat,
                                    lambda e: isinstance(e, SegmentationDone))
        stalls.append(stall)
        worker_s.append(done[0].seconds)
        start = time.perf_counter()
        Segmenter(segment.model, device=args.device).segment(
            head.data, axis=2, spacing=head.geometry.spacing_mm())
        direct_s.append(time.perf_counter() - start)
    seg_worker, seg_direct = statistics.median(worker_s), statistics.median(direct_s)
    print(f"segment t1-head {head.data.shape}: in the widget's worker {seg_worker:.2f} s, "
          f"direct {seg_direct:.2f} s (median of {args.repeats}; worker/direct "
          f"{seg_worker / seg_direct:.2f}); {stall_summary(stalls)}")

    # -- cancel latency --------------------------------------------------------------------
    print("Cancel -> finished: " + stop_latency(app, segment, segment.cancel, 2, args.repeats))

    # -- fine-tuning: worker vs direct, GUI stalls, Stop -------------------------------------
    viewer.layers.clear()
    viewer.open_sample("napari-vmunet", "ct-lung")
    ct, tumour = load_sample("ct-lung")
    labels = viewer.add_labels(np.zeros(ct.data.shape, np.uint8), name="corrected",
                               scale=viewer.layers["ct-lung"].scale)
    corrected = [4, 7, 10]
    for k in corrected:
        labels.data[k] = tumour.data[k]
    _, tune = viewer.window.add_plugin_dock_widget("napari-vmunet", "Fine-tune")
    tune.image_choice.value = "ct-lung"
    tune.labels_choice.value = "corrected"
    tune.axis.value = 0
    tune.device.value = args.device
    tune.learn.value = "network"  # the slow learner: steps long enough to time and to stop
    tune.steps.value = args.steps
    tune.refresh_slices()
    wait(app, lambda: not tune._warmer.is_running)  # as while a user paints corrections
    rates_worker, rates_direct, stalls = [], [], []
    for _ in range(args.repeats):
        steps, stall = run_in_widget(app, tune, beat, lambda e: isinstance(e, TrainingStep))
        stalls.append(stall)
        rates_worker.append(steps[-1].images_per_second)
        settings = replace(FINE_TUNING_NETWORK, steps=args.steps, batch_size=tune.batch.value,
                           learning_rate=tune.learning_rate.value,
                           validate_every=max(1, min(FINE_TUNING_NETWORK.validate_every,
                                                     args.steps // 10)))
        tuner = FineTuner(type(tune.tuned)(tune.tuned.config), ct.data,
                          tumour.data.astype(np.int64), corrected, 0,
                          tune.tuner.recipe, settings, args.device,
                          spacing=ct.geometry.spacing_mm())
        last = [e for e in tuner.run() if isinstance(e, TrainingStep)][-1]
        rates_direct.append(last.images_per_second)
    worker_rate, direct_rate = statistics.median(rates_worker), statistics.median(rates_direct)
    print(f"fine-tune ct-lung, {args.steps} steps: in the widget's worker {worker_rate:.1f} "
          f"slices/s, direct {direct_rate:.1f} slices/s (worker/direct "
          f"{worker_rate / direct_rate:.2f}); {stall_summary(stalls)}")

    tune.steps.value = 100_000
    print("Stop -> finished (best weights restored): "
          + stop_latency(app, tune, tune.stop, 3, args.repeats))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
