"""One selective-scan function, several backends.

``selective_scan`` has the semantics of mamba's ``selective_scan_fn`` as VM-UNet calls it. Which
backend computes it is chosen per device, fastest first, and can be forced with the ``backend``
argument or the ``NAPARI_VMUNET_SCAN`` environment variable:

- ``reference``: the plain recurrence; any device and dtype; the ground truth for tests.
- ``cpu``: a compiled CPU kernel (numba), forward and backward.
- ``triton``: Triton kernels for NVIDIA GPUs, forward and backward (triton ships with CUDA
  builds of torch; nothing is compiled at install time), and fused SS2D kernels; first on CUDA.
- ``mamba``: mamba-ssm's CUDA kernel, when the optional package imports.

``selective_scan_2d`` is VM-UNet's four-direction scan of an image: composed from the backend's
``selective_scan`` (:mod:`.composed`), or one fused kernel where the backend has one
(:mod:`.ss2d`). ``NAPARI_VMUNET_SCAN=reference`` also turns off the norm's, the convolution's and
the products' kernels (:mod:`napari_vmunet.ops.gate`): the whole model in plain PyTorch.

Backends are imported only when first used, and new ones (a GPU kernel) join through
:func:`register_backend` without touching the model.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass

import torch

from ..gate import SCAN_ENV_VAR as ENV_VAR
from .composed import selective_scan_2d_composed


@dataclass(frozen=True)
class ScanBackend:
    name: str
    module: str  # imported on first use: selective_scan(), optionally unavailable_reason()
    devices: tuple[str, ...]  # torch device types it runs on
    description: str


_REGISTRY: dict[str, ScanBackend] = {}
# Automatic choice per device type, best first. Names not registered are skipped, so a backend
# can be listed before it exists.
_PREFERENCE: dict[str, list[str]] = {
    # Ours first: with the fused SS2D kernels the model infers and trains faster than the
    # authors' code on mamba-ssm's kernel (benchmarks/RESULTS.md, "GPU"), compiling nothing.
    "cuda": ["triton", "mamba", "reference"],
    "cpu": ["cpu", "reference"],
}


@functools.cache
def _load(name: str):
    """Import a backend; returns (module, None) or (None, reason it cannot be used)."""
    try:
        module = importlib.import_module(_REGISTRY[name].module)
    except Exception as exc:  # a missing or broken optional package
        return None, f"cannot be imported ({type(exc).__name__}: {exc})"
    check = getattr(module, "unavailable_reason", None)
    reason = check() if check is not None else None
    return (None, reason) if reason else (module, None)


def register_backend(backend: ScanBackend, prefer_on: tuple[str, ...] = ()) -> None:
    """Add a backend; ``prefer_on`` puts it first in the automatic choice for those device types."""
    _REGISTRY[backend.name] = backend
    for device_type in prefer_on:
        order = _PREFERENCE.setdefault(device_type, ["reference"])
        if backend.name in order:
            order.remove(backend.name)
        order.insert(0, backend.name)
    _load.cache_clear()


register_backend(ScanBackend(
    "reference", f"{__name__}.reference", ("cpu", "cuda", "mps", "xpu"),
    "plain recurrence in PyTorch (slow; the ground truth)",
))
register_backend(ScanBackend("cpu", f"{__name__}.cpu", ("cpu",), "compiled CPU kernel (numba)"))
register_backend(ScanBackend("mamba", f"{__name__}.mamba", ("cuda",), "mamba-ssm's CUDA kernel"))
register_backend(ScanBackend("triton", f"{__name__}.triton_backend", ("cuda",),
                             "Triton kernels (no compiler needed)"))


def backend_names() -> list[str]:
    return list(_REGISTRY)


def unavailable_reason(name: str, device: torch.device | str = "cpu") -> str | None:
    """None if backend ``name`` can run on ``device``, otherwise a sentence saying why not."""
    device_type = torch.device(device).type
    if name not in _REGISTRY:
        return f"unknown scan backend {name!r}; choose one of {', '.join(_REGISTRY)}"
    if device_type not in _REGISTRY[name].devices:
        return f"runs on {'/'.join(_REGISTRY[name].devices)} only, not {device_type}"
    return _load(name)[1]


def resolve_backend(device: torch.device | str, requested: str | None = None) -> str:
    """The backend to use on ``device``: ``requested``, else ``$NAPARI_VMUNET_SCAN``, else the best
    available. A backend that was asked for but cannot run raises instead of being replaced."""
    source = "requested"
    if requested is None and os.environ.get(ENV_VAR):
        requested, source = os.environ[ENV_VAR].strip(), f"set by {ENV_VAR}"
    if requested is not None:
        reason = unavailable_reason(requested, device)
        if reason:
            raise RuntimeError(f"scan backend {requested!r} ({source}) cannot be used: {reason}")
        return requested
    device_type = torch.device(device).type
    for name in _PREFERENCE.get(device_type, ["reference"]):
        if name in _REGISTRY and unavailable_reason(name, device) is None:
            return name
    return "reference"


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *,
                   backend: str | None = None) -> torch.Tensor:
    """mamba's ``selective_scan_fn`` (without ``z`` and the last state), on the chosen backend.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, N, L) or grouped
    (batch, G, N, L); D, delta_bias: (channels,) or None. Returns (batch, channels, L) in u's
    dtype. Every backend computes what :func:`.reference.selective_scan` defines.
    """
    name = resolve_backend(u.device, backend)
    module = _load(name)[0]
    return module.selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def selective_scan_2d(
    x: torch.Tensor,
    proj: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """SS2D's scan: the four directions of ``x`` (B, H, W, D) scanned and summed, (B, H, W, D)
    float32. Shapes of the parameters in :mod:`.composed`.

    A backend's fused kernel (forward and backward) is used where it has one; elsewhere the
    composed form runs on the backend's 1D scan.
    """
    name = resolve_backend(x.device, backend)
    module = _load(name)[0]
    fused = getattr(module, "selective_scan_2d", None)
    if fused is not None:
        return fused(x, proj, dt_weight, dt_bias, A, D)
    return selective_scan_2d_composed(x, proj, dt_weight, dt_bias, A, D,
                                      scan=module.selective_scan)


def backend_report(device: torch.device | str) -> list[tuple[str, str, str | None]]:
    """(name, description, reason it is unavailable or None) for every backend, on ``device``."""
    return [(b.name, b.description, unavailable_reason(b.name, device)) for b in _REGISTRY.values()]
