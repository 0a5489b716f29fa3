"""mamba-ssm's CUDA selective-scan kernel, used when the optional ``mamba-ssm`` package imports.

VM-UNet calls exactly this function; the wrapper only checks the device so that a CPU tensor gets
a clear message instead of a CUDA error.
"""

from __future__ import annotations


def unavailable_reason() -> str | None:
    """None when mamba-ssm's kernel can be used, else why not."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as exc:  # an install problem can surface as any exception
        return f"mamba-ssm is not importable ({type(exc).__name__}: {exc})"
    return None


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    if u.device.type != "cuda":
        raise ValueError(f"the 'mamba' scan backend needs CUDA tensors, got {u.device}")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u, delta, A, B, C, D, z=None, delta_bias=delta_bias, delta_softplus=delta_softplus
    )
