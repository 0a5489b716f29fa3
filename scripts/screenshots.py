"""Screenshots for the docs, from a real napari window (run under Xvfb on a headless machine):

    xvfb-run -a python scripts/screenshots.py --out docs/images
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-vmunet", "t1-head")
    viewer.layers["t1-head brain (reference)"].visible = False
    _, widget = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    app = QApplication.instance()
    while widget.model is None:
        app.processEvents()
    widget.image_choice.value = "t1-head"
    widget.device.value = "cpu"
    viewer.dims.set_point(0, 70 * 1.5)
    widget.start()
    while widget.worker is not None:
        app.processEvents()
    viewer.layers["t1-head labels"].opacity = 0.5
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(args.out / "segment-widget.png"), canvas_only=False)
    print(f"wrote {args.out / 'segment-widget.png'}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
