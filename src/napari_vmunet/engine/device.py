"""Choosing the torch device from what the user typed ("auto", "cpu", "cuda:1", "mps")."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks the first CUDA GPU, else Apple's GPU, else the CPU. Anything else must exist
    here; otherwise a ValueError lists what does."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps" if "mps" in available_devices() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is usable (torch is "
                             f"{build}); see `napari-vmunet info`")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist; available: "
                             f"{', '.join(available_devices())}")
        return torch.device("cuda", index)
    if device.type == "mps" and "mps" not in available_devices():
        raise ValueError("device 'mps' asked for, but this torch sees no Apple GPU")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
