"""napari-vmunet: VM-UNet segmentation for napari, from the command line and from Python.

    import napari_vmunet as vm
    model = vm.load_checkpoint("model.safetensors")
    labels = vm.segment(model, vm.read_image("head.nii.gz").data).labels

Importing this package stays cheap (napari imports every plugin's manifest at start-up): torch
and the model are only imported when one of the names below is first used.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-vmunet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_LAZY = {
    # segmenting and fine-tuning
    "Segmenter": "napari_vmunet.engine.inference",
    "segment": "napari_vmunet.engine.inference",
    "FineTuner": "napari_vmunet.engine.training.finetuner",
    "TrainingSettings": "napari_vmunet.engine.training.settings",
    # images, labels and preprocessing
    "read_image": "napari_vmunet.io",
    "write_labels": "napari_vmunet.io",
    "Recipe": "napari_vmunet.recipes",
    "get_recipe": "napari_vmunet.recipes",
    # models and checkpoints
    "load_checkpoint": "napari_vmunet.checkpoint",
    "save_checkpoint": "napari_vmunet.checkpoint",
    "init_from_vmamba": "napari_vmunet.checkpoint",
    "CheckpointError": "napari_vmunet.checkpoint",
    "VMUNet": "napari_vmunet.model.vmunet",
    "VMUNetConfig": "napari_vmunet.model.config",
    "PRESETS": "napari_vmunet.model.config",
    "infer_config": "napari_vmunet.model.config",
    "build_model": "napari_vmunet.model",
    "ModelInfo": "napari_vmunet.model.info",
    # the operator at the heart of the model
    "selective_scan": "napari_vmunet.ops.scan",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_vmunet' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
