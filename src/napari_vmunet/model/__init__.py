"""The VM-UNet network (:mod:`.vmunet`), its configuration (:mod:`.config`, no torch) and what
its checkpoint said about it (:mod:`.info`, no torch).

The network's names load torch when first used, so that reading a config or the presets (the
command line's help, the widgets) stays cheap.
"""

from __future__ import annotations

import lazy_loader

from .config import PRESETS, VMUNetConfig, infer_config

__getattr__, _, _ = lazy_loader.attach(__name__, submod_attrs={"vmunet": ["VMUNet"]})
__all__ = ["PRESETS", "VMUNet", "VMUNetConfig", "build_model", "infer_config"]


def build_model(config: VMUNetConfig | str = "isic"):
    """A freshly initialised VM-UNet from a config or a preset name (:data:`PRESETS`)."""
    from .vmunet import VMUNet

    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    return VMUNet(config)

