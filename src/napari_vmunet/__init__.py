"""napari-vmunet: VM-UNet segmentation for napari, from the command line and from Python.

    import napari_vmunet as vm
    model = vm.load_checkpoint("model.safetensors")
    labels = vm.segment(model, vm.read_image("head.nii.gz").data).labels

Importing this package stays cheap (napari imports every plugin's manifest at start-up): torch
and the model are only imported when one of the names below is first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import lazy_loader

try:
    __version__ = version("napari-vmunet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_NAMES = {  # submodule: the names it lends the package
    "engine.inference": ["Segmenter", "segment"],
    "engine.training.finetuner": ["FineTuner"],
    "engine.training.settings": ["TrainingSettings"],
    "io": ["read_image", "write_labels"],
    "recipes": ["Recipe", "get_recipe"],
    "checkpoint": ["load_checkpoint", "save_checkpoint", "init_from_vmamba", "CheckpointError"],
    "model.vmunet": ["VMUNet"],
    "model.config": ["VMUNetConfig", "PRESETS", "infer_config"],
    "model": ["build_model"],
    "model.info": ["ModelInfo"],
    "ops.scan": ["selective_scan"],
}

__getattr__, __dir__, _lazy_all = lazy_loader.attach(__name__, submod_attrs=_NAMES)
__all__ = ["__version__", *_lazy_all]
