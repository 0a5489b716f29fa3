import pytest

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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where no CUDA GPU is visible (CI, laptops)."""
    import torch

    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


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
