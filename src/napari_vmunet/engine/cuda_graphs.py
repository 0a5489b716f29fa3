"""Fixed-shape GPU work replayed as CUDA graphs: inference, and the training step.

An eager VM-UNet forward launches hundreds of small kernels from Python; for one small slice
the GPU waits on the host most of the time, and in a training step it waits between the long
scan kernels too. A CUDA graph records those launches once and replays them with one call.

:class:`GraphedForward` wraps a forward function. A shape seen for the first time runs eagerly
(that call is also the warm-up: Triton autotunes, cuBLAS/cuDNN pick their kernels); when the
same shape comes again it is captured and from then on replayed. Volumes (many batches of one
shape) and repeated clicks benefit; a one-off image pays nothing.

:class:`GraphedStep` does the same for a whole training step (forward, backward and the
optimizer's update), whose batches all have one shape.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

# Captures run in worker threads (segmenting, fine-tuning), and in napari both can run at once:
# a capture must not forbid the CUDA calls of another thread, as the default "global" mode does.
_THREAD_LOCAL = "thread_local"


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
        with torch.cuda.graph(graph, capture_error_mode=_THREAD_LOCAL):
            static_out = self._run(static_in)
        return graph, static_in, static_out


class GraphedStep:
    """A training step ``step(x, y) -> loss`` on CUDA, replayed from a CUDA graph.

    ``step`` must do the whole update on the GPU without waiting on the host: no ``.item()``, no
    branch on a tensor's value, an optimizer that may be captured (its learning rate a tensor it
    reads at run time). For each batch shape the first ``warmup`` calls run eagerly on a side
    stream, as CUDA graphs require; they are real steps, and they let Triton autotune, cuBLAS
    pick its kernels and the optimizer create its state. The next call is captured, and it and
    every later call replay the graph. One shape is kept: a new one (a smaller batch after the
    GPU ran out of memory) replaces it. The returned loss lives in the graph's memory; read it
    before the next call.

    If a step cannot be captured for another reason than memory, the error is reported as a
    warning and every later call runs eagerly (:attr:`eager_because` says why).
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 warmup: int = 2):
        self.step = step
        self.warmup = warmup
        self.eager_because: str | None = None
        self._key = None
        self._eager_calls = 0
        self._graph = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or self.eager_because is not None:
            return self.step(x, y)
        key = (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, x.device)
        if key != self._key:
            self.release()
            self._key, self._eager_calls = key, 0
        if self._graph is None:
            if self._eager_calls < self.warmup:
                self._eager_calls += 1
                return self._on_side_stream(x, y)
            try:
                self._capture(x, y)
            except torch.OutOfMemoryError:
                self.release()
                raise
            except RuntimeError as error:
                self.release()
                self.eager_because = str(error).splitlines()[0]
                warnings.warn(f"the training step could not be captured as a CUDA graph and runs "
                              f"eagerly: {self.eager_because}", RuntimeWarning, stacklevel=2)
                return self.step(x, y)
        graph, static_x, static_y, loss = self._graph
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return loss

    def release(self) -> None:
        """Drop the graph and the memory it holds (called on a new shape; call it when done)."""
        self._graph = None
        self._key = None

    def _on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        main = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            loss = self.step(x, y)
        main.wait_stream(side)
        return loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        static_x, static_y = x.clone(), y.clone()
        # The graph keeps its own memory: hand back what the eager steps left cached first, or
        # a GPU with room for one step would need room for two.
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode=_THREAD_LOCAL):
            loss = self.step(static_x, static_y)
        # the capture recorded the step without running it: the caller replays it
        self._graph = (graph, static_x, static_y, loss)
