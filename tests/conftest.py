import os

import pytest

from .display import INSTALL_LINE, probe_display

TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)


@pytest.fixture
def tiny_config():
    """A VM-UNet with the published structure but small widths: fast enough for every test."""
    from napari_vmunet.model import VMUNetConfig

    return VMUNetConfig(num_classes=1, **TINY)


@pytest.fixture
def tiny_model(tiny_config):
    import torch

    from napari_vmunet.model import VMUNet

    torch.manual_seed(0)
    model = VMUNet(tiny_config).eval()
    perturb(model)
    return model


def perturb(model, scale=0.1, seed=0):
    """Move LayerNorm weights/biases, biases and A_logs off their initial constants, so that a
    swapped or ignored parameter changes the output (as in a trained model)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("A_logs"):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


DATA = __import__("pathlib").Path(__file__).parent / "data"


# Tests that open a real napari viewer or Qt widgets: they need a display (tests/display.py).
GUI_FIXTURES = {"make_napari_viewer", "qtbot"}
_GUI_RUN = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where no CUDA GPU is visible (CI, laptops); GUI tests
    skip, saying what to install, where Qt cannot open a display (it would abort the run)."""
    import torch

    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(no_gpu)

    gui = [item for item in items if item.get_closest_marker("gui")
           or GUI_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if not gui:
        return
    problem, running = probe_display()
    config.stash[_GUI_RUN] = {"ids": {item.nodeid for item in gui}, "problem": problem,
                              "running": running}
    if problem is None:
        return
    if os.environ.get("NAPARI_VMUNET_REQUIRE_GUI_TESTS"):  # CI: skipping them is a failure
        raise pytest.UsageError(f"the GUI tests cannot run: {problem}. {INSTALL_LINE}")
    no_display = pytest.mark.skip(reason=f"GUI test, no display: {problem}")
    for item in gui:
        item.add_marker(no_display)


def pytest_terminal_summary(terminalreporter, config):
    """One line on the GUI tests: how many ran and on what, or why none did and the fix."""
    gui = config.stash.get(_GUI_RUN, None)
    if gui is None:
        return
    outcomes = {kind: sum(report.nodeid in gui["ids"]
                          for report in terminalreporter.stats.get(kind, []))
                for kind in ("passed", "failed", "error", "skipped")}
    if gui["problem"] is None:
        failed = outcomes["failed"] + outcomes["error"]
        line = (f"GUI tests: {outcomes['passed']} passed, {failed} failed, "
                f"{outcomes['skipped']} skipped, in real napari viewers ({gui['running']})")
        terminalreporter.write_line(line)
    else:
        terminalreporter.write_line(
            f"GUI tests: {len(gui['ids'])} skipped: {gui['problem']}. To run them on "
            f"Debian/Ubuntu: {INSTALL_LINE} (pytest-xvfb then starts a virtual display "
            "by itself)", yellow=True, bold=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny VM-UNet saved in our format with the MRI recipe (random but fixed weights)."""
    import torch

    from napari_vmunet.checkpoint import save_checkpoint
    from napari_vmunet.model import VMUNet, VMUNetConfig
    from napari_vmunet.recipes import RECIPES

    torch.manual_seed(0)
    model = perturb(VMUNet(VMUNetConfig(num_classes=1, **TINY)))
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return save_checkpoint(model, path, recipe=RECIPES["mri"], class_names=["brain"])


@pytest.fixture(autouse=True)
def _private_widget_settings(tmp_path_factory):
    """The widgets remember recent checkpoints in QSettings: never in the user's own."""
    try:
        from qtpy.QtCore import QSettings
    except Exception:  # no Qt binding: no widget tests either
        return
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope,
                      str(tmp_path_factory.mktemp("settings")))


def open_with_segment_widget(viewer, qtbot, sample: str):
    """Open a bundled sample and dock the Segment widget on it, model loaded, on the CPU."""
    viewer.open_sample("napari-vmunet", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vmunet", "Segment")
    qtbot.waitUntil(lambda: widget.model is not None, timeout=60000)
    widget.image_choice.value = sample
    widget.device.value = "cpu"
    return widget
