"""How many slices a batch holds: a first guess from free memory, halved when the GPU runs out.

The Segmenter and the Trainer both go on after an out-of-memory error with half the batch, and
stop with a clear message only when a single slice does not fit.
"""

from __future__ import annotations

import torch


def auto_batch_size(model, device: torch.device, size: tuple[int, int]) -> int:
    """Slices of ``size`` a segmentation batch holds on ``device``."""
    pixels = size[0] * size[1]
    if device.type == "cuda":
        # Activations per input pixel at the published widths in fp32, with a margin (from a
        # 256² batch of 32's peak memory); scaled with the model's width, and half the free
        # memory kept spare.
        free, _ = torch.cuda.mem_get_info(device)
        per_slice = pixels * 1400 * model.config.dims[0] / 96
        return int(max(1, min(64, free * 0.5 // per_slice)))
    # On a CPU batching gains little; small batches keep results streaming and cancel prompt.
    return int(max(1, min(16, 65536 // pixels)))


def halved_batch(batch: int, device: torch.device, what: str) -> tuple[int, str]:
    """After ``torch.OutOfMemoryError`` with ``batch`` slices: the batch to go on with and the
    notice that says so. ``what`` names a batch of one ("one 512x512 slice") for the
    ``MemoryError`` raised when even that does not fit."""
    if batch <= 1:
        raise MemoryError(f"{what} does not fit in {device}'s free memory; close other programs "
                          "using the GPU, or run on the CPU (--device cpu)") from None
    torch.cuda.empty_cache()
    batch //= 2
    return batch, (f"out of GPU memory: continuing with batches of {batch} "
                   f"slice{'s' if batch > 1 else ''}")
