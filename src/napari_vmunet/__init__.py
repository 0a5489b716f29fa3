"""napari-vmunet: VM-UNet segmentation for napari, from the command line and from Python.

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
    "load_checkpoint": "napari_vmunet.checkpoint",
    "save_checkpoint": "napari_vmunet.checkpoint",
    "init_from_vmamba": "napari_vmunet.checkpoint",
    "CheckpointError": "napari_vmunet.checkpoint",
    "VMUNet": "napari_vmunet.model",
    "VMUNetConfig": "napari_vmunet.model.config",
    "PRESETS": "napari_vmunet.model.config",
    "infer_config": "napari_vmunet.model.config",
    "build_model": "napari_vmunet.model",
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
