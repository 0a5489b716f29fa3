"""The VM-UNet network and its configuration."""

from .config import PRESETS, VMUNetConfig, infer_config
from .vmunet import VMUNet

__all__ = ["PRESETS", "VMUNet", "VMUNetConfig", "build_model", "infer_config"]


def build_model(config: VMUNetConfig | str = "isic") -> VMUNet:
    """A freshly initialised VM-UNet from a config or a preset name ('isic', 'synapse')."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    return VMUNet(config)
