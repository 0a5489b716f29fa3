"""Fixed-shape GPU inference replayed as CUDA graphs.

An eager VM-UNet forward launches hundreds of small kernels from Python; for one 256² slice the
GPU waits on the host most of the time (PERF_BASELINE.md: 256² and 512² take the same time).
A CUDA graph records those launches once and replays them with one call.

:class:`GraphedForward` wraps a forward function. A shape seen for the first time runs eagerly
(that call is also the warm-up: Triton autotunes, cuBLAS/cuDNN pick their kernels); when the
same shape comes again it is captured and from then on replayed. Volumes (many batches of one
shape) and repeated clicks benefit; a one-off image pays nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class GraphedForward:
    """``fn(x) -> tensor`` on CUDA, replayed from CUDA graphs per input shape and dtype.

    ``bf16``: run under bfloat16 autocast (without autocast's weight cache, which a graph must
    not keep). Up to ``max_graphs`` shapes are kept, least recently used dropped first. The
    weights are read where they are at replay time: in-place updates are seen, but moving the
    model to another device needs a new ``GraphedForward``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, bf16: bool = False,
                 max_graphs: int = 4):
        self.fn = fn
        self.bf16 = bf16
        self.max_graphs = max_graphs
        self._seen: set = set()
        self._graphs: OrderedDict = OrderedDict()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=False):
            return self.fn(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            return self._run(x)
        key = (tuple(x.shape), x.dtype, x.device, torch.is_grad_enabled())
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen or torch.is_grad_enabled():
                self._seen.add(key)
                return self._run(x)
            entry = self._capture(x)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        # the next replay overwrites static_out: hand out a copy
        return static_out.clone()

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        # Kernels not yet run with these shapes are warmed up outside the capture, on a side
        # stream as CUDA graphs require.
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            self._run(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._run(static_in)
        return graph, static_in, static_out
