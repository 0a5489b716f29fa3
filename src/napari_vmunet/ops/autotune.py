"""``triton.autotune`` for this package's kernels, its choices kept on disk between sessions.

Triton tunes a kernel the first time it sees a new shape: it compiles and times every launch
configuration. The compiled kernels stay in Triton's on-disk cache, but by default the choice
among them does not, so every new napari session (or CLI run) tuned again before its first
segmentation, most of that segmentation's time (benchmarks/RESULTS.md, 2026-11-27 fifteenth
session). Triton 3.3 and newer can keep the choice next to the compiled kernels
(``cache_results``); its cache key
holds the Triton release, the GPU architecture, the kernel's source and the shape, so a choice
is reused only where it was made. Older releases tune every session, as before.
"""

from __future__ import annotations

import inspect


def autotune(**kwargs):
    """``triton.autotune(**kwargs)``, keeping its results on disk where the release can (only
    called where triton imports)."""
    import triton

    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(**kwargs)
